"""Materialization: weights, exact instruction counts, determinism, reading only what it needs."""

import shutil

import pytest

from search.mixture import Mixture, apportion, describe, materialize, plan
from search.pool import Manifest


def test_apportion_sums_and_respects_bounds():
    w = {"a": 0.7, "b": 0.2, "c": 0.1}
    out = apportion(100, w, {k: 0 for k in w}, {"a": 50, "b": 100, "c": 100})
    assert sum(out.values()) == 100 and out["a"] == 50
    assert out["b"] > out["c"]  # the overflow is shared in proportion
    out = apportion(10, {"a": 0.98, "b": 0.01, "c": 0.01}, {"a": 0, "b": 3, "c": 3}, {k: 10 for k in w})
    assert out == {"a": 4, "b": 3, "c": 3}
    with pytest.raises(ValueError):
        apportion(5, w, {k: 2 for k in w}, {k: 10 for k in w})


@pytest.mark.parametrize("n", [1, 7, 40, 119, 120])
def test_exact_distinct_instruction_count(small_pool, n):
    _, pool = small_pool
    m = Mixture({"random": 0.4, "repeated": 0.3, "periodic": 0.2, "mirrored": 0.1}, n, budget=600, seed=3)
    rows = materialize(pool, m)
    assert rows.num_rows == 600
    assert len(set(rows["instruction"].to_pylist())) == n


def test_weights_are_honoured_within_sampling_error(small_pool):
    _, pool = small_pool
    w = {"random": 0.5, "repeated": 0.25, "periodic": 0.15, "mirrored": 0.1}
    rows = materialize(pool, Mixture(w, 80, budget=2000, seed=1))
    got = {d: s["rows"] / 2000 for d, s in describe(rows).items()}
    for d in w:
        assert abs(got[d] - w[d]) < 0.01, (d, got)


def test_deterministic_and_seed_dependent(small_pool):
    _, pool = small_pool
    m = Mixture({"random": 0.5, "mirrored": 0.5, "repeated": 0.0, "periodic": 0.0}, 20, budget=300, seed=5)
    a, b = materialize(pool, m), materialize(pool, m)
    assert a.equals(b)
    c = materialize(pool, Mixture(m.weights, 20, budget=300, seed=6))
    assert set(a["instruction"].to_pylist()) != set(c["instruction"].to_pylist())
    assert set(a["domain"].to_pylist()) == {"random", "mirrored"}


def test_more_instructions_contain_fewer(small_pool):
    _, pool = small_pool
    w = {"random": 1.0}
    small = set(materialize(pool, Mixture(w, 5, 100, seed=2))["instruction"].to_pylist())
    large = set(materialize(pool, Mixture(w, 25, 100, seed=2))["instruction"].to_pylist())
    assert small < large


def test_reads_only_the_partitions_it_needs(small_pool, tmp_path):
    _, pool = small_pool
    copy = tmp_path / "pool"
    shutil.copytree(pool, copy)
    shutil.rmtree(copy / "train" / "domain=periodic")
    m = Mixture({"random": 0.5, "repeated": 0.5, "periodic": 0.0, "mirrored": 0.0}, 10, 100, seed=0)
    assert materialize(copy, m, Manifest.load(pool)).num_rows == 100


def test_cycles_examples_when_the_budget_exceeds_the_pool(small_pool):
    cfg, pool = small_pool
    epr = cfg.corpus.string_rewrite.examples_per_rule
    rows = materialize(pool, Mixture({"repeated": 1.0}, 2, budget=5 * epr, seed=0))
    assert rows.num_rows == 5 * epr and len(set(rows["instruction"].to_pylist())) == 2
    assert describe(rows)["repeated"]["instructions"] == 2


def test_overflow_beyond_a_domain_goes_to_the_others(small_pool):
    _, pool = small_pool
    p = plan(Mixture({"random": 0.9, "mirrored": 0.1}, 50, budget=500), Manifest.load(pool))
    assert p.instructions == {"random": 30, "mirrored": 20}
    assert sum(p.examples.values()) == 500


def test_invalid_mixtures_are_refused(small_pool):
    _, pool = small_pool
    with pytest.raises(ValueError, match="sum to 1"):
        Mixture({"random": 0.5}, 5, 100)
    with pytest.raises(ValueError, match="budget"):
        Mixture({"random": 1.0}, 50, 10)
    with pytest.raises(ValueError, match="hold 30"):
        materialize(pool, Mixture({"random": 1.0}, 31, 100))
    with pytest.raises(ValueError, match="not in the pool"):
        materialize(pool, Mixture({"code": 1.0}, 3, 100))


@pytest.mark.parametrize("total, k, skew", [(10, 10, 0.0), (1000, 7, 0.0), (1000, 50, 1.0), (5000, 300, 2.5), (31, 30, 1.5)])
def test_skewed_counts(total, k, skew):
    from search.mixture import skewed_counts

    c = skewed_counts(total, k, skew)
    assert len(c) == k and sum(c) == total and min(c) >= 1
    assert all(a >= b for a, b in zip(c, c[1:]))  # falls with rank
    if skew == 0:
        assert max(c) - min(c) <= 1
    elif total - k >= 10 * k:  # room to show the law: shares follow r^-skew
        assert abs((c[0] - 1) / (c[1] - 1) - 2 ** skew) < 0.1 * 2 ** skew


def test_skew_shapes_examples_per_instruction_and_keeps_the_counts(small_pool):
    _, pool = small_pool
    w = {"random": 0.25, "repeated": 0.25, "periodic": 0.25, "mirrored": 0.25}
    even = materialize(pool, Mixture(w, 40, budget=1200, seed=2))
    skewed = materialize(pool, Mixture(w, 40, budget=1200, seed=2, skew=1.5))
    for rows in (even, skewed):
        assert rows.num_rows == 1200 and len(set(rows["instruction"].to_pylist())) == 40

    def per_instruction(rows):
        from collections import Counter

        return sorted(Counter(rows["instruction"].to_pylist()).values(), reverse=True)

    assert max(per_instruction(even)) - min(per_instruction(even)) <= 1
    s = per_instruction(skewed)
    assert s[0] > 5 * s[-1]  # the most frequent instruction dominates the rarest
    with pytest.raises(ValueError, match="skew"):
        Mixture(w, 40, budget=1200, skew=-0.5)


def test_examples_per_instruction_sets_the_instruction_count(small_pool):
    from trainables.train import mixture_of

    m = mixture_of({"weights": {"random": 1.0}, "examples_per_instruction": 7, "budget": 100, "setup": {"seed": 0}})
    assert m.num_instructions == 14 and m.budget == 100
