"""Each config error is caught before Ray starts, naming file, line and key."""

import shlex

import pytest
import ray
import yaml

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


def test_a_missing_key_is_placed_at_its_parent_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  epochs: 3\ncorpus:\n  source: files\n  files:\n    paths: [a.jsonl]\n")
    assert f"{path}, line 5, key corpus.files.unseen: Field required" in error_of(path)


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


@pytest.mark.parametrize(
    "space, expected",
    [({"learning_rate": {"low": 0.1, "high": 0.01}}, ["learning_rate: low (0.1) must be below high (0.01)"]),
     ({"skew": {"choices": [0.1, "x"]}}, ["skew.choices.1: Input should be a valid number"]),
     ({"learning_rate": [0.1, 0.2]}, ["learning_rate: Input should be a valid number (a knob is a number, {low"]),
     ({"weights": {"simplex": ["random"], "min_weight": 2}}, ["weights.min_weight: Input should be less than 1"]),
     ({"weights": 3}, ["weights: Input should be a valid dictionary (weights are {domain: weight"])],
)
def test_a_searched_value_is_judged_by_the_form_it_takes(tmp_path, space, expected):
    # One line per real mistake: not also "not a number" and "choices missing" for a bad range.
    lines = error_of(write_config(tmp_path, {"search": {"space": space}})).splitlines()[1:]
    assert len(lines) == len(expected), lines
    for line, words in zip(lines, expected):
        assert f"key search.space.{words}" in line, line


def test_weights_default_to_the_simplex_over_the_corpus_domains(tmp_path):
    path = write_config(tmp_path, {"corpus": {"string_rewrite": {"domains": ["random", "mirrored"]}},
                                   "search": {"space": {"num_instructions": {"low": 4, "high": 50}}}})
    assert load_config(path).search.space.weight_domains() == ["random", "mirrored"]
    # The same spelt out; with a floor too high for them, the error names the weights key.
    path = write_config(tmp_path, {"search": {"space": {"weights": {"simplex": "all", "min_weight": 0.3}}}})
    with pytest.raises(ConfigError, match=r"key search.space.weights: min_weight 0.3 x 4 domains exceeds 1"):
        load_config(path)


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


def test_a_key_given_twice_is_refused_not_silently_overwritten(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: x\nsearch:\n  num_samples: 4\n  seed: 1\n  num_samples: 8\n")
    assert error_of(twice) == f"{twice}, line 5, key search.num_samples: given twice (first on line 3); keep one"
    # The same name at different places is not a repeat.
    fine = write_config(tmp_path, {"training": {"weight_decay": 0.1}, "search": {"space": {"weight_decay": 0.2}}})
    assert load_config(fine).search.space.weight_decay == 0.2


def test_cli_reports_errors_without_traceback_and_before_ray(tmp_path, capsys):
    path = write_config(tmp_path, {"search": {"space": {"bogus": 1}}})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and "search.space.bogus" in err and "Traceback" not in err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists() and not (tmp_path / "pools").exists()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", ".hidden"])
def test_an_experiment_name_is_a_folder_of_its_own(tmp_path, capsys, name):
    # ".." would put the experiment in storage_path's parent, "." in storage_path itself.
    path = write_config(tmp_path)
    assert main(["run", str(path), "--name", name]) == 2
    err = capsys.readouterr().err
    # The flag's value is shown as a shell would take it: '' for the empty one.
    assert f"command line --name {shlex.quote(name)}, key name: {name!r} is not a folder name" in err, err
    assert not ray.is_initialized() and not (tmp_path / "results").exists()
    # The same in the file is blamed on its line.
    path = write_config(tmp_path, {"name": name})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("name:"))
    assert f"{path}, line {line}, key name: {name!r} is not a folder name" in error_of(path)
    assert load_config(write_config(tmp_path, {"name": "run-2.b_3"})).name == "run-2.b_3"


@pytest.mark.parametrize("extra, key, var", [
    ({"storage_path": "$SCRATCH/results"}, "storage_path", "$SCRATCH"),
    ({"corpus": {"pool_dir": "${SCRATCH}/pools"}}, "corpus.pool_dir", "${SCRATCH}"),
    ({"model": {"tiny": None, "pretrained": "$MODELS/gpt2"}}, "model.pretrained", "$MODELS"),
    ({"search": {"start_from": "$HOME/mixsearch_results/a"}}, "search.start_from", "$HOME"),
    ({"corpus": {"source": "files", "files": {"paths": ["/data/a.jsonl", "$DATA/*.jsonl"],
                                              "unseen": {"tasks_file": "$DATA/unseen.txt"}}}},
     "corpus.files.paths.1", "$DATA"),
])
def test_an_environment_variable_in_a_path_is_refused_not_taken_as_a_folder_name(tmp_path, extra, key, var):
    # "$SCRATCH/results" used to become a folder named "$SCRATCH" in the working directory.
    path = write_config(tmp_path, extra)
    msg = error_of(path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if var in text)
    assert f"{path}, line {line}, key {key}: {var}: environment variables are not expanded in paths" in msg, msg
    if key.startswith("corpus.files"):
        assert "key corpus.files.unseen.tasks_file: $DATA: environment variables" in msg, msg
    assert load_config(write_config(tmp_path, {"storage_path": "~/results"})).storage_path == "~/results"


def test_an_empty_path_is_refused_not_taken_as_the_working_directory(tmp_path, monkeypatch, capsys):
    # pathlib reads "" as ".": `--storage-path "$RESULTS"` with RESULTS unset wrote the experiment
    # into the working directory, and `mixsearch report ""` read it.
    from analysis.results import experiment_folder

    monkeypatch.chdir(tmp_path)
    words = "an empty path: write one out ('.' for the working directory)"
    for extra, key in (({"storage_path": ""}, "storage_path"), ({"corpus": {"pool_dir": "  "}}, "corpus.pool_dir"),
                       ({"search": {"start_from": ""}}, "search.start_from")):
        path = write_config(tmp_path, extra)
        line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                    if text.strip().startswith(key.split(".")[-1] + ":"))
        assert f"{path}, line {line}, key {key}: {words}" in error_of(path)
    path = write_config(tmp_path)
    for flag, key in (("--storage-path", "storage_path"), ("--start-from", "search.start_from")):
        assert main(["run", str(path), flag, "", "--dry-run"]) == 2
        assert f"command line {flag} '', key {key}: {words}" in capsys.readouterr().err
    # The verbs' own paths are refused by the argument parser, before anything is read or written.
    for argv, name in ((["report", ""], "experiment"), (["report", str(tmp_path), "--out", ""], "--out"),
                       (["export", "", "m"], "experiment"), (["export", str(tmp_path), " "], "out"),
                       (["export", str(tmp_path), "m", "--model", ""], "--model"), (["run", ""], "config"),
                       (["prepare", ""], "config")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2 and f"argument {name}: {words}" in capsys.readouterr().err, argv
    with pytest.raises(ValueError, match="an empty path"):
        experiment_folder("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"] and not ray.is_initialized()
    assert load_config(write_config(tmp_path, {"storage_path": "."})).storage_path == "."


def test_a_value_from_the_command_line_is_blamed_on_its_flag_not_the_file(tmp_path, capsys):
    path = write_config(tmp_path, {"search": {"num_samples": 4}})
    assert main(["run", str(path), "--num-samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "command line --num-samples 0, key search.num_samples: Input should be greater than or equal to 1" in err
    assert str(path) not in err and not ray.is_initialized()


@pytest.mark.parametrize("given, seconds", [(5400, 5400), ("90m", 5400), ("1h30m", 5400), ("1.5h", 5400),
                                            ("2h", 7200), ("1d", 86400), ("45s", 45), ("45", 45)])
def test_a_time_limit_is_seconds_or_a_duration(tmp_path, given, seconds):
    assert load_config(write_config(tmp_path, {"search": {"time_limit": given}})).search.time_limit == seconds
    assert load_config(write_config(tmp_path), {"search.time_limit": str(given)}).search.time_limit == seconds


def test_a_time_limit_that_is_not_a_duration_names_its_key_or_flag(tmp_path, capsys):
    for bad, words in [("2 hours", "'2 hours' is not a duration: write seconds (5400) or one like 90m, 2h, 1h30m"),
                       (0, "0: a time limit must be above zero (null for none)"), (True, "True is not a duration")]:
        path = write_config(tmp_path, {"search": {"time_limit": bad}})
        line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "time_limit:" in text)
        assert f"{path}, line {line}, key search.time_limit: {words}" in error_of(path)
    assert main(["run", str(write_config(tmp_path)), "--time-limit", "1x", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "command line --time-limit 1x, key search.time_limit: '1x' is not a duration" in err
    assert not ray.is_initialized()


def unfinished_experiment(tmp_path, drop: str | None = None):
    """A config, and an unfinished experiment of it under tmp_path whose saved config lacks the
    search key ``drop``, as one saved by a mixsearch before that key; and that saved config."""
    path = write_config(tmp_path)
    exp = tmp_path / "results" / "t"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")
    saved = load_config(path).model_dump(mode="json")
    saved["search"].pop(drop, None)
    (exp / "config.yaml").write_text(yaml.safe_dump(saved))
    return path, exp, saved


def test_a_time_limit_for_an_experiment_started_before_time_limits_is_refused_not_ignored(tmp_path, capsys):
    # Tune restores an experiment with the stopper it started with; before time limits it had none.
    path, exp, saved = unfinished_experiment(tmp_path)
    resume = ["run", str(path), "--resume", "--time-limit", "1h", "--dry-run"]
    assert main(resume) == 0 and "time limit: 1 h;" in capsys.readouterr().out
    del saved["search"]["time_limit"]
    (exp / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(resume) == 2
    assert (f"error: command line --time-limit 1h, key search.time_limit: {exp} was started by a mixsearch without "
            "time limits, and Tune resumes it as it started: the limit would be ignored") in capsys.readouterr().err
    assert main(resume[:3] + ["--dry-run"]) == 0  # without a limit it resumes
    (exp / "config.yaml").unlink()  # older still: no config saved
    assert main(resume) == 2 and not ray.is_initialized()


def test_an_experiment_started_before_stop_by_resumes_as_it_ran(tmp_path, capsys):
    # Experiments saved before search.stop_by ranked by accuracy, and Tune restores their scheduler
    # so: a resume is not refused for the key, and says what it ranks by.
    path, exp, saved = unfinished_experiment(tmp_path, drop="stop_by")
    assert main(["run", str(path), "--resume", "--dry-run"]) == 0
    assert "ranking trials by unseen_accuracy" in capsys.readouterr().out
    saved["search"]["stop_by"] = "unseen_accuracy"  # one that saved it is held to it
    (exp / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["run", str(path), "--resume", "--dry-run"]) == 2
    assert "search.stop_by: 'unseen_accuracy' then, 'unseen_loss' now" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_stop_by_names_a_metric_asha_can_rank_by(tmp_path, capsys):
    path = write_config(tmp_path, {"search": {"stop_by": "unseen_rouge"}})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "stop_by:" in text)
    assert f"{path}, line {line}, key search.stop_by: Input should be 'unseen_loss' or 'unseen_accuracy'" in error_of(path)
    assert main(["run", str(write_config(tmp_path)), "--dry-run"]) == 0
    assert "ranking trials by unseen_loss" in capsys.readouterr().out


def test_num_samples_given_to_a_grid_is_refused_not_ignored(tmp_path, capsys):
    import yaml

    path = write_config(tmp_path, {"search": {"algorithm": "grid"}})
    data = yaml.safe_load(path.read_text())  # replace SMALL's ranges rather than merge into them
    data["search"]["space"].update(weights={"choices": [{"random": 1.0}, {"mirrored": 1.0}]},
                                   num_instructions={"choices": [4, 8, 16]}, learning_rate=0.003)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", str(path), "--num-samples", "5"]) == 2
    assert ("command line --num-samples 5, key search.num_samples: a grid runs each of its 6 combinations once"
            in capsys.readouterr().err)
    assert load_config(path).search.algorithm == "grid"  # the file's num_samples: documented as ignored


@pytest.mark.parametrize("verb", ["prepare", "run"])
def test_a_folder_that_cannot_be_written_is_one_line_before_ray(tmp_path, capsys, verb):
    (tmp_path / "afile").write_text("")
    path = write_config(tmp_path, {"corpus": {"pool_dir": str(tmp_path / "afile" / "pools")}})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "pool_dir" in text)
    assert main([verb, str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {path}, line {line}, key corpus.pool_dir: cannot write to "
                   f"{tmp_path / 'afile' / 'pools'} ({tmp_path / 'afile'} is a file, not a folder)\n")
    assert not ray.is_initialized() and not (tmp_path / "results").exists()


def test_a_storage_path_that_cannot_be_written_is_one_line_before_ray(tmp_path, capsys):
    (tmp_path / "afile").write_text("kept")
    path = write_config(tmp_path)
    assert main(["run", str(path), "--storage-path", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: command line --storage-path {tmp_path / 'afile'}, key storage_path: cannot write "
                   f"to {tmp_path / 'afile'} ({tmp_path / 'afile'} is a file, not a folder)\n")
    assert (tmp_path / "afile").read_text() == "kept" and not (tmp_path / "pools").exists()
    assert main(["run", str(write_config(tmp_path, {"storage_path": str(tmp_path / "afile" / "x")}))]) == 2
    assert "key storage_path: cannot write to" in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.mark.parametrize("verb", ["prepare", "run"])
@pytest.mark.parametrize("missing", ["paths", "tasks_file"])
def test_a_missing_corpus_file_is_one_line_before_ray(tmp_path, capsys, verb, missing):
    import yaml

    data = tmp_path / "c.jsonl"
    data.write_text('{"instruction": "i", "output": "o", "domain": "d"}\n')
    files = {"paths": [str(data)], "unseen": {"tasks_file": str(tmp_path / "unseen.txt")}}
    if missing == "paths":
        files = {"paths": [str(tmp_path / "missing.jsonl")], "unseen": {"fraction": 0.2}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"storage_path": str(tmp_path / "results"), "corpus": {
        "source": "files", "pool_dir": str(tmp_path / "pools"), "files": files}}))
    assert main([verb, str(path)]) == 2
    err = capsys.readouterr().err
    name = "missing.jsonl" if missing == "paths" else "unseen.txt"
    assert err.startswith("error: ") and f"{name}: no such file" in err and "Traceback" not in err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists() and not (tmp_path / "pools").exists()


@pytest.mark.parametrize("verb", ["prepare", "run"])
def test_a_hub_model_that_cannot_be_loaded_is_one_line_before_ray(tmp_path, capsys, monkeypatch, verb):
    # Offline and not cached: without the check every trial would fail, each after retrying the hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_config(tmp_path, {"model": {"tiny": None, "pretrained": "nobody/no-such-model"}})
    assert main([verb, str(path)]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "no-such-model" in text)
    assert err.startswith(f"error: {path}, line {line}, key model.pretrained: cannot load nobody/no-such-model")
    assert "HF_HUB_OFFLINE" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists() and not (tmp_path / "pools").exists()


def test_dry_run_checks_a_run_and_prints_its_plan_and_starts_nothing(tmp_path, capsys):
    grid = {"algorithm": "grid", "max_concurrent": 3, "space": {
        "weights": {"choices": [{"random": 0.5, "mirrored": 0.5}, {"repeated": 1.0}]},
        "num_instructions": {"choices": [10, 20, 30]}, "learning_rate": 0.003}}
    path = write_config(tmp_path, {"search": grid, "resources_per_trial": {"cpu": 2}})
    data = yaml.safe_load(path.read_text())
    data["search"]["space"]["num_instructions"] = grid["space"]["num_instructions"]  # not merged into the range
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", str(path), "--dry-run", "--name", "g"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"experiment: {tmp_path / 'results' / 'g'} (new)"
    assert out[1].startswith(f"pool: {tmp_path / 'pools'}/string_rewrite-") and "(not prepared" in out[1]
    assert out[2:] == [
        "search: grid: every combination once, 6 trials, 3 at a time",
        "training: at most 2 epochs a trial (12 in all); ASHA may stop a trial after 1, reduction factor 3, "
        "ranking trials by unseen_loss",
        "each trial: 2 CPU, 0 GPU, on a local Ray cluster",
        "space:",
        "  weights: one of 2: {random: 0.5, mirrored: 0.5}; {repeated: 1}",
        "  num_instructions: one of 10, 20, 30",
        "  budget: 400 (fixed)",
        "  skew: 0 (fixed)",
        "  learning_rate: 0.003 (fixed)",
    ]
    assert not ray.is_initialized() and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    # TPE over the simplex, two objectives, a diversity knob that follows from the budget.
    tpe = {"pareto": "budget", "seed": 7, "space": {
        "weights": {"simplex": ["random", "periodic"], "min_weight": 0.1, "dropout": True},
        "num_instructions": None, "examples_per_instruction": {"low": 14, "high": 40, "log": True}}}
    assert main(["run", str(write_config(tmp_path, {"search": tpe})), "--dry-run", "--num-samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "search: TPE, seed 7, 5 trials, 2 at a time; two objectives: unseen_accuracy up, the data budget down" in out
    assert "weights: uniform on the simplex over random, periodic, each kept domain at least 0.1, domains may drop out" in out
    assert "examples_per_instruction: log-uniform in [14, 40]\n  budget: 400 (fixed)" in out
    assert out.endswith("num_instructions: budget // examples_per_instruction\n")
    assert "time limit" not in out
    assert main(["run", str(path), "--dry-run", "--time-limit", "1h30m"]) == 0
    assert "\ntime limit: 1 h 30 min; trials running then end where they are\neach trial: " in capsys.readouterr().out
    # What a run refuses, a dry run refuses, the same way.
    (tmp_path / "results" / "t").mkdir(parents=True)
    (tmp_path / "results" / "t" / "tuner.pkl").write_bytes(b"")
    assert main(["run", str(path), "--dry-run"]) == main(["run", str(path)]) == 2
    first, second = capsys.readouterr().err.splitlines()
    assert first == second and "unfinished" in first and "--resume" in first


def test_a_storage_uri_that_cannot_be_reached_is_one_line_before_ray(tmp_path, capsys):
    extra = {"storage_path": "s4://bucket/results", "search": {"study_storage": f"sqlite:///{tmp_path}/study.db"}}
    assert main(["run", str(write_config(tmp_path, extra)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ", key storage_path: cannot reach s4://bucket/results: " in err
    assert "Unrecognized filesystem type" in err and "Traceback" not in err and not ray.is_initialized()
    assert main(["run", str(write_config(tmp_path)), "--start-from", "s4://bucket/results/a", "--dry-run"]) == 2
    assert "search.start_from: cannot reach s4://bucket/results/a: " in capsys.readouterr().err


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


def test_examples_per_instruction_replaces_num_instructions(tmp_path):
    # Given alone, it takes the place of the default num_instructions range.
    from search.config import SpaceConfig

    space = SpaceConfig.model_validate({"examples_per_instruction": {"low": 2, "high": 50, "log": True}})
    assert space.num_instructions is None and space.most_instructions() == 20000 // 2
    # Both given: which one the user meant is unclear, so say so.
    path = write_config(tmp_path, {"search": {"space": {"examples_per_instruction": 4}}})
    msg = error_of(path)
    assert "key search.space" in msg and "not both" in msg
    # The pool check covers what the budget affords: 400 // 2 = 200 instructions > 120 in the pool.
    path = write_config(tmp_path, {"search": {"space": {"num_instructions": None, "examples_per_instruction": {"low": 2, "high": 8}}}})
    msg = error_of(path)
    assert "key search.space.examples_per_instruction" in msg and "200 distinct instructions" in msg and "hold 120" in msg
    path = write_config(tmp_path, {"search": {"space": {"num_instructions": None, "examples_per_instruction": {"low": 4, "high": 8}}}})
    assert load_config(path).search.space.most_instructions() == 100


@pytest.mark.parametrize(
    "space, key",
    [({"skew": -1}, "skew"), ({"warmup_fraction": {"low": 0.1, "high": 1.5}}, "warmup_fraction"),
     ({"weight_decay": -0.1}, "weight_decay")],
)
def test_knob_bounds(tmp_path, space, key):
    msg = error_of(write_config(tmp_path, {"search": {"space": space}}))
    assert "key search.space" in msg and key in msg


def test_start_from_needs_tpe_and_an_experiment_with_proposals(tmp_path, capsys):
    from search.cli import main

    grid = {"algorithm": "grid", "start_from": str(tmp_path), "space": {"weights": {"random": 1.0}, "num_instructions": 10, "learning_rate": 0.003}}
    assert "seeds a TPE search" in error_of(write_config(tmp_path, {"search": grid}))
    # A previous experiment without a summary, or whose summary proposes nothing: refused before Ray.
    path = write_config(tmp_path, {"search": {"start_from": str(tmp_path / "nowhere")}})
    assert main(["run", str(path)]) == 2
    assert "start_from: cannot read" in capsys.readouterr().err
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "tuner.pkl").write_bytes(b"")  # an experiment not finished yet
    assert main(["run", str(path), "--start-from", str(tmp_path / "running")]) == 2
    assert "running has no summary.json yet (it is running, or was interrupted: finish it with --resume)" \
        in capsys.readouterr().err
    (tmp_path / "prev").mkdir()
    (tmp_path / "prev" / "summary.json").write_text('{"surrogate": {"error": "needs at least 4 trials"}}')
    assert main(["run", str(path), "--start-from", str(tmp_path / "prev")]) == 2
    assert "proposes nothing (needs at least 4 trials)" in capsys.readouterr().err
    # The storage path above experiments, a common slip: the error names the experiments in it.
    (tmp_path / "prev" / "tuner.pkl").write_bytes(b"")
    assert main(["run", str(path), "--start-from", str(tmp_path)]) == 2
    assert f"(it holds the experiments prev, running: pass one, e.g. {tmp_path}/prev)" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as mp:  # "~" in the file is the home folder, as in every path
        mp.setenv("HOME", str(tmp_path))
        assert main(["run", str(write_config(tmp_path, {"search": {"start_from": "~/prev"}}))]) == 2
    assert "start_from: ~/prev/summary.json proposes nothing" in capsys.readouterr().err  # found, and read
    assert not (tmp_path / "results").exists()


def test_a_reader_that_goes_away_is_not_a_traceback():
    import subprocess
    import sys

    # `mixsearch config | head -0`: the pipe is closed before the command writes.
    proc = subprocess.Popen([sys.executable, "-m", "search", "config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and "Traceback" not in err and "BrokenPipeError" not in err, err


def test_no_cluster_at_the_configured_address_is_one_line(tmp_path, capsys, monkeypatch):
    import os

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if os.path.exists("/tmp/ray/ray_current_cluster"):  # a `ray start` cluster: "auto" would join it
        pytest.skip("a Ray cluster started with `ray start` runs on this machine")
    assert main(["run", str(write_config(tmp_path, {"ray": {"address": "auto"}}))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ray.address 'auto': no Ray cluster to join") and "Traceback" not in err
    assert not ray.is_initialized()


def test_the_cli_logs_its_own_progress_and_only_warnings_of_other_libraries():
    import subprocess
    import sys

    # tensorboardX logs an INFO line per metric name with a space, every epoch of every trial.
    code = (
        "import logging; from search.cli import configure_logging; configure_logging(); "
        "logging.getLogger('tensorboardX.summary').info('tbx info'); "
        "logging.getLogger('tensorboardX.summary').warning('tbx warning'); "
        "logging.getLogger('search.pool').info('pool info')"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "pool info" in err and "tbx warning" in err and "tbx info" not in err, err


def test_version_names_mixsearch_and_the_libraries_it_runs_on(capsys):
    import sys
    import tomllib
    from pathlib import Path

    import optuna
    import transformers

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert out.startswith(f"mixsearch {project['version']} (Python {sys.version.split()[0]}; ")
    for name, module in (("ray", ray), ("optuna", optuna), ("transformers", transformers)):
        assert f"{name} {module.__version__}" in out
