"""The surrogate: a regression over all trials' results, its cross-validated rank correlation and
its proposal, on curves whose true optimum is known."""

import math
import random
import statistics

import pytest

from search.config import SpaceConfig
from search.surrogate import Curve, analyse, cv_rank_correlation, local_candidates, sample_space

SPACE = SpaceConfig.model_validate({
    "weights": {"simplex": ["a", "b", "c"]},
    "num_instructions": {"low": 8, "high": 2000, "log": True},
    "budget": 5000,
    "learning_rate": {"low": 0.001, "high": 0.01, "log": True},
})
EPOCHS = 4


def truth(c: dict) -> float:
    """Best at ~600 instructions, lr 3e-3, balanced weights; rises with the epoch."""
    n = -((math.log(c["num_instructions"]) - math.log(600)) ** 2) / 4
    lr = -((math.log(c["learning_rate"]) - math.log(3e-3)) ** 2) / 2
    balance = -sum((w - 1 / 3) ** 2 for w in c["weights"].values())
    return 0.9 * math.exp(n + lr + balance)


def curves(n: int, seed: int, noise: float = 0.01, stop_early: bool = True) -> list[Curve]:
    rng = random.Random(seed)
    out = []
    for i, c in enumerate(sample_space(SPACE, n, seed)):
        last = EPOCHS if not stop_early or rng.random() < 0.4 else rng.choice([1, 2])
        pts = [(e, truth(c) * (e / EPOCHS) ** 0.5 + rng.gauss(0, noise)) for e in range(1, last + 1)]
        out.append(Curve(f"t{i}", c, pts))
    return out


def test_sample_space_stays_inside_the_space():
    for c in sample_space(SPACE, 200, seed=1):
        assert abs(sum(c["weights"].values()) - 1) < 1e-9 and min(c["weights"].values()) >= 0
        assert 8 <= c["num_instructions"] <= 2000 and isinstance(c["num_instructions"], int)
        assert 0.001 <= c["learning_rate"] <= 0.01 and c["budget"] == 5000


def test_rank_correlation_is_high_on_a_learnable_landscape_and_drops_on_shuffled_values():
    data = curves(24, seed=0)
    rho = cv_rank_correlation(data, SPACE)
    assert rho > 0.7
    # The same configs with the curves dealt out at random: nothing to learn.
    shuffled = [c.points for c in data]
    random.Random(3).shuffle(shuffled)
    rho_shuffled = cv_rank_correlation([Curve(c.trial_id, c.config, p) for c, p in zip(data, shuffled)], SPACE)
    assert rho_shuffled < rho - 0.3


def test_proposal_is_near_the_true_optimum_although_most_trials_stopped_early():
    data = curves(30, seed=2)
    out = analyse(data, SPACE, EPOCHS, seed=0)
    prop = out["proposal"]["config"]
    observed_best = max(truth(c.config) for c in data)
    # Better than (or as good as) every config tried, judged by the true function.
    assert truth(prop) >= observed_best - 0.05
    assert 150 <= prop["num_instructions"] <= 2000
    assert out["trials"] == 30 and out["results"] == sum(len(c.points) for c in data)
    assert len(out["proposals"]) == 5
    preds = [p["predicted_unseen_accuracy"] for p in out["proposals"]]
    assert preds == sorted(preds, reverse=True) and all(0.0 <= p <= 1.0 for p in preds)


def test_too_few_trials_is_said_not_guessed():
    out = analyse(curves(3, seed=0), SPACE, EPOCHS)
    assert "error" in out and "at least" in out["error"]


def test_results_that_never_differ_are_not_fit():
    # A search that learned nothing (exact match 0 everywhere): a fit would rank nothing, yet
    # propose a config for --start-from to try.
    flat = [Curve(c.trial_id, c.config, [(e, 0.0) for e, _ in c.points]) for c in curves(8, seed=0)]
    out = analyse(flat, SPACE, EPOCHS)
    assert "proposals" not in out and out["error"].startswith("not fit: every trial reported unseen_accuracy 0.000")
    # One trial that differs at one epoch is enough to fit.
    flat[3].points[-1] = (flat[3].points[-1][0], 0.05)
    assert len(analyse(flat, SPACE, EPOCHS)["proposals"]) == 5


@pytest.mark.parametrize("knob", ["examples_per_instruction", "skew"])
def test_other_knobs_become_features(knob):
    space = SpaceConfig.model_validate({
        "weights": {"a": 0.5, "b": 0.5},
        "num_instructions": None if knob == "examples_per_instruction" else 100,
        knob: {"low": 1, "high": 20, "log": True} if knob == "examples_per_instruction" else {"low": 0, "high": 2},
        "budget": 2000,
        "learning_rate": 0.003,
    })
    rng = random.Random(0)
    data = []
    for i, c in enumerate(sample_space(space, 12, seed=4)):
        y = 0.1 + 0.04 * c[knob]
        data.append(Curve(f"t{i}", c, [(1, y / 2 + rng.gauss(0, 0.005)), (2, y + rng.gauss(0, 0.005))]))
    out = analyse(data, space, 2)
    assert out["cv_rank_correlation"] > 0.8
    assert out["proposal"]["config"][knob] > 0.8 * max(c.config[knob] for c in data)


def test_local_candidates_stay_in_the_space_and_near_their_anchor():
    space = SpaceConfig.model_validate({**SPACE.model_dump(exclude_none=True),
                                        "weights": {"simplex": ["a", "b", "c"], "min_weight": 0.05, "dropout": True}})
    anchor = {"weights": {"a": 0.7, "b": 0.3, "c": 0.0}, "num_instructions": 600, "budget": 5000, "learning_rate": 0.003}
    near = local_candidates(space, [anchor], 300, seed=0)
    log_range = math.log(2000 / 8)
    for c in near:
        w = c["weights"]
        assert abs(sum(w.values()) - 1) < 1e-9 and w["c"] == 0.0  # a domain left out stays out
        assert min(w["a"], w["b"]) >= 0.05 - 1e-12                  # min_weight holds
        assert 8 <= c["num_instructions"] <= 2000 and isinstance(c["num_instructions"], int)
        assert 0.001 <= c["learning_rate"] <= 0.01 and c["budget"] == 5000
    steps = sorted(abs(math.log(c["num_instructions"] / 600)) for c in near)
    # A Gaussian step of 0.05 of the log range: the median move is about 0.034 of it.
    assert 0.015 * log_range < steps[len(steps) // 2] < 0.06 * log_range
    assert statistics.mean(abs(c["weights"]["a"] - 0.7) for c in near) < 0.06
    assert len({c["num_instructions"] for c in near}) > 20  # it does move


def test_proposal_does_not_extrapolate_the_early_epochs_of_stopped_trials():
    """The default search's failure, in small: early epochs rise with weight ``a`` whatever the
    instruction count, finals need many instructions, and only balanced trials ran to the end.
    A proposal from the whole space followed the early trend into a corner no trial reached."""
    def final(c):
        return 0.9 / (1 + math.exp(-(math.log(c["num_instructions"]) - math.log(150))))

    rng = random.Random(0)
    data = []
    for i, c in enumerate(sample_space(SPACE, 40, seed=5)):
        finished = max(c["weights"].values()) < 0.5 and c["num_instructions"] > 300
        early = [0.05 + 0.1 * c["weights"]["a"] * e + rng.gauss(0, 0.005) for e in (1, 2)]
        pts = [(1, early[0]), (2, early[1])]
        if finished:
            pts += [(e, final(c) * e / EPOCHS + rng.gauss(0, 0.005)) for e in (3, 4)]
        data.append(Curve(f"t{i}", c, pts))
    out = analyse(data, SPACE, EPOCHS, seed=0)
    assert out["finished_trials"] == sum(c.points[-1][0] == EPOCHS for c in data) >= 4
    best = max(final(c.config) for c in data if c.points[-1][0] == EPOCHS)
    for p in out["proposals"]:
        assert final(p["config"]) >= best - 0.05
        assert max(p["config"]["weights"].values()) < 0.6
