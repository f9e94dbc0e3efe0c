"""Shared fixtures: a small config, a real Ray cluster per module, a prepared pool."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
# Ray Data binds its log handler to sys.stderr when first imported. Imported inside a test that
# captures output (capsys), the handler would keep that test's stream and, once it is closed,
# a later test's Ray Data log would print a "Logging error" traceback into that test's output.
import ray.data  # noqa: F401
import yaml

from search.config import load_config

# Small enough for seconds per trial on 2 cores, big enough that every domain is non-trivial.
SMALL = {
    "name": "t",
    "corpus": {
        "string_rewrite": {
            "alphabet": "abcd",
            "input_length": 6,
            "pattern_length": [2, 4],
            "rules_per_domain": 30,
            "unseen_rules_per_domain": 5,
            "examples_per_rule": 8,
            "unseen_examples_per_rule": 4,
        }
    },
    "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "max_length": 32},
    "training": {"epochs": 2, "batch_size": 64, "eval_examples": 60},
    "search": {
        "num_samples": 3,
        "max_concurrent": 2,
        "grace_period": 1,
        "space": {
            "num_instructions": {"low": 4, "high": 100, "log": True},
            "budget": 400,
            "learning_rate": {"low": 0.003, "high": 0.01, "log": True},
        },
    },
    "ray": {"num_cpus": 2},
}


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_config(tmp: Path, extra: dict | None = None, filename: str = "config.yaml") -> Path:
    """A config file under tmp: SMALL, with storage under tmp, updated by extra."""
    data = merge(SMALL, {"storage_path": str(tmp / "results"), "corpus": {"pool_dir": str(tmp / "pools")}})
    data = merge(data, extra or {})
    path = tmp / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    """One real local Ray cluster for a test module (2 CPUs, like the target machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small_pool(ray_cluster, tmp_path_factory):
    """A prepared pool of the SMALL config: (config, pool directory)."""
    from search.pool import prepare

    cfg = load_config(write_config(tmp_path_factory.mktemp("pool")))
    return cfg, prepare(cfg)


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory):
    """A tiny GPT-2 and its tokenizer saved with save_pretrained: a 'pretrained' model on disk."""
    from trainables.model import build_model, save
    from trainables.tokenizer import char_tokenizer

    path = tmp_path_factory.mktemp("pretrained") / "tiny-gpt2"
    tok = char_tokenizer()
    save(build_model({"n_layer": 1, "n_embd": 32, "n_head": 2}, 32, tok), tok, path)
    return path
