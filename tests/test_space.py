"""The define-by-run space on a real Optuna study: simplex weights, fixed and searched knobs."""

import pickle

import numpy as np
import optuna

from search.config import Range, Simplex, SpaceConfig
from search.space import DefineByRun, weights_from_uniforms

DOMAINS = ["random", "repeated", "periodic", "mirrored"]


def sample(space: SpaceConfig, n: int) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    suggest = DefineByRun(space)
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial))
        study.tell(trial, 0.0)
    return out


def test_simplex_weights_are_uniform_over_the_simplex():
    draws = sample(SpaceConfig(weights=Simplex(simplex=DOMAINS)), 4000)
    w = np.array([[d["weights"][k] for k in DOMAINS] for d in draws])
    assert np.allclose(w.sum(axis=1), 1.0) and (w >= 0).all()
    # Flat Dirichlet over K=4: each marginal is Beta(1, 3), P(w < x) = 1 - (1 - x)^3.
    for x in (0.1, 0.25, 0.5):
        expected = 1 - (1 - x) ** 3
        assert np.all(np.abs((w < x).mean(axis=0) - expected) < 0.03), (x, (w < x).mean(axis=0))


def test_fixed_and_searched_knobs():
    space = SpaceConfig(
        weights={"random": 0.5, "mirrored": 0.5},
        num_instructions=Range(low=10, high=1000, log=True),
        budget=5000,
        learning_rate=0.002,
    )
    draws = sample(space, 200)
    assert all(d["weights"] == {"random": 0.5, "mirrored": 0.5} for d in draws)
    assert all(d["budget"] == 5000 and d["learning_rate"] == 0.002 for d in draws)
    n = np.array([d["num_instructions"] for d in draws])
    assert n.min() >= 10 and n.max() <= 1000 and all(isinstance(x, int) for x in n.tolist())
    # log scale: about half the draws below the geometric midpoint, 100
    assert 0.35 < (n < 100).mean() < 0.65


def test_degenerate_draws_and_pickling():
    assert weights_from_uniforms({"a": 1.0, "b": 1.0}) == {"a": 0.5, "b": 0.5}
    w = weights_from_uniforms({"a": 0.0, "b": 0.5})
    assert abs(sum(w.values()) - 1) < 1e-12 and w["a"] > w["b"]
    f = DefineByRun(SpaceConfig())
    assert pickle.loads(pickle.dumps(f)) == f  # Tune pickles the searcher for --resume
