"""The define-by-run space on a real Optuna study: simplex weights, fixed and searched knobs."""

import pickle

import numpy as np
import optuna

from search.config import Range, Simplex, SpaceConfig, WeightChoices
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


def test_min_weight_keeps_every_domain_above_it_and_stays_uniform_above():
    draws = sample(SpaceConfig(weights=Simplex(simplex=DOMAINS, min_weight=0.1)), 3000)
    w = np.array([[d["weights"][k] for k in DOMAINS] for d in draws])
    assert np.allclose(w.sum(axis=1), 1.0) and (w >= 0.1 - 1e-12).all()
    # Above the floor the draw is a flat Dirichlet over what is left (1 - 4 x 0.1 = 0.6).
    excess = (w - 0.1) / 0.6
    assert np.all(np.abs(excess.mean(axis=0) - 0.25) < 0.02)


def test_dropout_leaves_domains_out_but_never_all():
    draws = sample(SpaceConfig(weights=Simplex(simplex=DOMAINS, dropout=True, min_weight=0.05),
                               num_instructions=20), 2000)
    w = np.array([[d["weights"][k] for k in DOMAINS] for d in draws])
    assert np.allclose(w.sum(axis=1), 1.0)
    dropped = w == 0
    assert not dropped.all(axis=1).any()  # at least one domain in every mixture
    # Each domain is left out with probability 1/2, less the 1/16 x 1/4 chance that all four were
    # dropped and this one was kept again: 0.484.
    assert np.all(np.abs(dropped.mean(axis=0) - 0.484) < 0.04), dropped.mean(axis=0)
    assert ((w == 0) | (w >= 0.05 - 1e-12)).all()  # kept domains respect the floor


def test_simplex_option_errors(tmp_path):
    import pytest

    from search.config import ConfigError, load_config
    from tests.conftest import write_config

    with pytest.raises(ConfigError, match="min_weight 0.3 x 4 domains exceeds 1"):
        load_config(write_config(tmp_path, {"search": {"space": {"weights": {"simplex": DOMAINS, "min_weight": 0.3}}}}))
    # With drop-out a trial may keep one domain (30 rules in SMALL): 100 instructions cannot fit.
    with pytest.raises(ConfigError, match="hold 30"):
        load_config(write_config(tmp_path, {"search": {"space": {"weights": {"simplex": DOMAINS, "dropout": True}}}}))


def test_choices_are_categorical_for_tpe():
    from search.config import Choices, WeightChoices

    mixtures = [{"random": 1.0}, {"random": 0.5, "mirrored": 0.5}]
    space = SpaceConfig(weights=WeightChoices(choices=mixtures), num_instructions=Choices(choices=[10, 40]),
                        budget=Choices(choices=[400, 800]), learning_rate=0.003)
    draws = sample(space, 200)
    assert {tuple(sorted(d["weights"].items())) for d in draws} == {tuple(sorted(m.items())) for m in mixtures}
    assert {d["num_instructions"] for d in draws} == {10, 40} and {d["budget"] for d in draws} == {400, 800}
    assert all(isinstance(d["num_instructions"], int) for d in draws)


def test_a_grid_takes_no_ranges(tmp_path):
    import pytest

    from search.config import ConfigError, load_config
    from tests.conftest import write_config

    with pytest.raises(ConfigError, match=r"not ranges: \['num_instructions', 'learning_rate'\]"):
        load_config(write_config(tmp_path, {"search": {"algorithm": "grid",
                                                       "space": {"weights": {"random": 1.0}}}}))


def test_every_knob_can_be_searched():
    space = SpaceConfig.model_validate({
        "weights": {"random": 1.0}, "num_instructions": None,
        "examples_per_instruction": {"choices": [1, 5, 25]}, "budget": {"low": 1000, "high": 4000},
        "skew": {"low": 0.0, "high": 2.0}, "learning_rate": 0.003,
        "weight_decay": {"low": 1e-4, "high": 0.1, "log": True}, "warmup_fraction": {"choices": [0.1, 0.3]},
    })
    draws = sample(space, 100)
    assert all("num_instructions" not in d for d in draws)
    assert {d["examples_per_instruction"] for d in draws} == {1, 5, 25}
    assert all(isinstance(d["budget"], int) and 1000 <= d["budget"] <= 4000 for d in draws)
    assert all(0 <= d["skew"] <= 2 and 1e-4 <= d["weight_decay"] <= 0.1 for d in draws)
    assert {d["warmup_fraction"] for d in draws} == {0.1, 0.3}


def test_known_configs_map_back_to_the_optuna_parameters_that_suggest_them():
    from search.space import adaptations, to_params

    rng = np.random.default_rng(0)
    for space in (SpaceConfig(weights=Simplex(simplex=DOMAINS)),
                  SpaceConfig(weights=Simplex(simplex=DOMAINS, min_weight=0.05, dropout=True))):
        for _ in range(30):
            w = rng.dirichlet(np.ones(4))
            if space.weights.dropout:
                w[rng.random(4) < 0.3] = 0
                w = w / w.sum() if w.sum() else np.eye(4)[0]
                kept = w > 0
                w = np.where(kept, 0.05 + (1 - 0.05 * kept.sum()) * w, 0.0)
            config = {"weights": dict(zip(DOMAINS, w.tolist())), "num_instructions": int(rng.integers(8, 2000)),
                      "learning_rate": float(rng.uniform(1e-3, 6e-3)), "budget": 20000}
            study = optuna.create_study()
            study.enqueue_trial(to_params(config, space))
            got = DefineByRun(space)(study.ask())
            assert got["num_instructions"] == config["num_instructions"]
            assert abs(got["learning_rate"] - config["learning_rate"]) < 1e-12
            for d in DOMAINS:
                assert abs(got["weights"][d] - config["weights"][d]) < 1e-9, (config, got)
            assert adaptations(config, space) == []  # a point of the space: nothing to say
    # Outside the space: the nearest point inside it, and each change said.
    space = SpaceConfig(weights=Simplex(simplex=DOMAINS[:2]), num_instructions=Range(low=8, high=100))
    config = {"weights": {d: 0.25 for d in DOMAINS}, "num_instructions": 5000, "learning_rate": 0.5,
              "budget": 600, "weight_decay": 0.1}
    params = to_params(config, space)
    assert params["num_instructions"] == 100 and params["learning_rate"] == 6e-3
    assert adaptations(config, space) == [
        "weights on mirrored, periodic dropped (not in this space)",
        "num_instructions 5000 clipped into [8, 100]",
        "learning_rate 0.5 clipped into [0.001, 0.006]",
        "budget 600 replaced by this space's fixed 20000",
        "weight_decay dropped (not in this space)",
    ]
    listed = SpaceConfig(weights=WeightChoices(choices=[{"random": 1.0}, {"random": 0.5, "repeated": 0.5}]))
    assert adaptations({"weights": {"random": 0.5, "repeated": 0.5}}, listed) == []
    assert adaptations({"weights": {"random": 0.6, "repeated": 0.4}}, listed) == [
        "weights snapped to the nearest listed mixture"]
    assert adaptations({"weights": {"random": 0.6, "repeated": 0.4}}, SpaceConfig(weights={"random": 1.0})) == [
        "weights on repeated dropped (not in this space)", "weights replaced by this space's fixed weights"]
