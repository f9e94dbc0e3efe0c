"""Each config error is caught before Ray starts, naming file, line and key."""

import ray
import pytest

from search.cli import main
from search.config import ConfigError, load_config
from tests.conftest import write_config


def error_of(path) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return str(e.value)


def test_the_default_config_loads_and_is_consistent():
    cfg = load_config()
    assert cfg.search.space.weight_domains() == cfg.corpus.string_rewrite.domains


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = write_config(tmp_path, {"training": {"epohcs": 3}})
    msg = error_of(path)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "epohcs" in t)
    assert f"{path}, line {line}, key training.epohcs: unknown key" in msg


def test_wrong_type(tmp_path):
    msg = error_of(write_config(tmp_path, {"training": {"batch_size": "large"}}))
    assert "key training.batch_size" in msg and "integer" in msg


@pytest.mark.parametrize(
    "extra, key, words",
    [
        ({"corpus": {"string_rewrite": {"noop_fraction": 1.5}}}, "corpus.string_rewrite.noop_fraction", "less than or equal to 1"),
        ({"model": {"tiny": {"n_embd": 30, "n_head": 4}}}, "model.tiny", "divisible"),
        ({"search": {"space": {"learning_rate": {"low": 0.1, "high": 0.01}}}}, "search.space.learning_rate", "below high"),
        ({"search": {"space": {"weights": {"random": 0.5, "mirrored": 0.6}}}}, "search.space.weights", "sum to 1"),
        ({"corpus": {"string_rewrite": {"rules_per_domain": 5000}}}, "corpus.string_rewrite", "distinct rules"),
    ],
)
def test_impossible_values(tmp_path, extra, key, words):
    msg = error_of(write_config(tmp_path, extra))
    assert f"key {key}" in msg and words in msg


def test_more_instructions_than_the_pool_holds(tmp_path):
    # SMALL: 30 rules in each of 4 domains = 120 in the pool.
    path = write_config(tmp_path, {"search": {"space": {"num_instructions": {"low": 4, "high": 500}}}})
    msg = error_of(path)
    assert "key search.space.num_instructions.high" in msg and "hold 120" in msg


def test_fixed_weights_count_only_weighted_domains(tmp_path):
    path = write_config(tmp_path, {"search": {"space": {"weights": {"random": 1.0}, "num_instructions": 31}}})
    assert "hold 30" in error_of(path)


def test_weights_for_domains_the_pool_lacks(tmp_path):
    path = write_config(tmp_path, {
        "corpus": {"string_rewrite": {"domains": ["random", "repeated"]}},
        "search": {"space": {"weights": {"simplex": ["random", "mirrored"]}, "num_instructions": 10}},
    })
    msg = error_of(path)
    assert "key search.space.weights.simplex" in msg and "['mirrored'] are not in the pool" in msg


def test_budget_below_instructions(tmp_path):
    msg = error_of(write_config(tmp_path, {"search": {"space": {"budget": 50}}}))
    assert "key search.space.budget" in msg


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntraining:\n  epochs: [1, 2\n")
    assert f"{bad}, line" in error_of(bad) and "not valid YAML" in error_of(bad)
    assert "no such config file" in error_of(tmp_path / "nope.yaml")


def test_cli_reports_errors_without_traceback_and_before_ray(tmp_path, capsys):
    path = write_config(tmp_path, {"search": {"space": {"bogus": 1}}})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and "search.space.bogus" in err and "Traceback" not in err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists() and not (tmp_path / "pools").exists()


def test_cli_num_samples_override(tmp_path):
    from search.config import load_config as lc

    cfg = lc(write_config(tmp_path), {"search.num_samples": 7, "name": "other"})
    assert cfg.search.num_samples == 7 and cfg.name == "other"
    assert cfg.search.space.budget == 400  # untouched siblings keep the file's values


def test_every_recipe_loads():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        cfg = load_config(recipe)
        assert cfg.name
