"""The search-efficiency benchmark is a measuring instrument: it must count compute exactly and
refuse input that would corrupt its table. The surrogate-quality one must cut curves as ASHA does."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest

from search.pool import PoolError

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark(name: str = "search_efficiency"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


se = _load_benchmark()
sq = _load_benchmark("surrogate_quality")
pt = _load_benchmark("prepare_throughput")
GOOD_FINAL, BAD_FINAL = 0.9, 0.1


def test_build_table_refuses_to_continue_a_table_of_other_epochs(tmp_path):
    out = tmp_path / "table.json"
    out.write_text(json.dumps({"meta": {"epochs": 2, "axes": se.AXES}, "rows": [{"curve": [0.1, 0.2]}]}))
    before = out.read_text()
    with pytest.raises(SystemExit, match="other epochs or axes"):
        se.build_table(tmp_path / "pool", workers=1, gpu=False, out=out, epochs=se.EPOCHS)
    assert out.read_text() == before


def test_build_table_refuses_to_continue_a_table_without_loss_curves(tmp_path):
    # Rows of a table built before the loss was recorded cannot sit beside rows that have it.
    out = tmp_path / "table.json"
    row = {"weights": se.AXES["weights"][0], "num_instructions": 8, "learning_rate": 0.0015, "curve": [0.1] * se.EPOCHS}
    out.write_text(json.dumps({"meta": {"epochs": se.EPOCHS, "axes": se.AXES}, "rows": [row]}))
    before = out.read_text()
    with pytest.raises(SystemExit, match="without unseen_loss"):
        se.build_table(tmp_path / "pool", workers=1, gpu=False, out=out)
    assert out.read_text() == before


def test_build_table_checks_the_pool_before_training(tmp_path):
    out = tmp_path / "table.json"
    with pytest.raises(PoolError, match="not a prepared pool"):
        se.build_table(tmp_path / "missing", workers=1, gpu=False, out=out)
    assert not out.exists()


@pytest.fixture
def small_table(monkeypatch):
    """Four configurations (two mixtures x two instruction counts); one ends good, late."""
    axes = {"weights": se.AXES["weights"][:2], "num_instructions": [40, 600], "learning_rate": [0.0015]}
    monkeypatch.setattr(se, "AXES", axes)
    good = (1, 600, 0.0015)
    curves = {}
    for w, n, lr in itertools.product(range(2), axes["num_instructions"], axes["learning_rate"]):
        rising = (w, n, lr) == good
        accuracy = [BAD_FINAL * e / se.EPOCHS for e in range(1, se.EPOCHS)] + [GOOD_FINAL if rising else BAD_FINAL]
        curves[(w, n, lr)] = {"unseen_accuracy": accuracy, "unseen_loss": [1 - a for a in accuracy]}
    return curves


def test_replay_counts_each_epoch_once(ray_cluster, small_table, tmp_path):
    # Tune repeats a trial's last result when it ends; the count must not.
    r = se.replay("grid", 0, small_table, GOOD_FINAL - se.TOLERANCE, tmp_path)
    assert r["found"] and r["trials"] == 4
    assert r["epochs"] == 4 * se.EPOCHS
    assert se.EPOCHS <= r["epochs_to_hit"] <= 4 * se.EPOCHS


def test_oracle_stops_every_short_trial_at_its_epoch(ray_cluster, small_table, tmp_path):
    # No curve reaches this threshold: the oracle stops every trial at epoch 2, none is found.
    r = se.replay("random_oracle", 0, small_table, 2.0, tmp_path, oracle_epoch=2)
    n = se.TRIALS_PER_TABLE_POINT * len(small_table)
    assert r["trials"] == n and not r["found"] and math.isinf(r["epochs_to_hit"])
    assert r["epochs"] == 2 * n


def test_mixsearch_replay_trains_no_configuration_twice(ray_cluster, small_table, tmp_path):
    r = se.replay("mixsearch", 0, small_table, GOOD_FINAL - se.TOLERANCE, tmp_path)
    assert r["found"]
    assert r["epochs_to_hit"] <= 4 * se.EPOCHS  # each of the 4 configurations at most once


def test_default_size_counts_the_best_of_trials_run_to_the_end(ray_cluster, small_table, tmp_path):
    # The good configuration's loss is the worst until its last epoch: ASHA ranking by the loss
    # stops it at epoch 2 when it comes after another, ranking by accuracy (all tied) does not.
    good = next(k for k, c in small_table.items() if se.final(c) == GOOD_FINAL)
    small_table[good]["unseen_loss"] = [2.0] * (se.EPOCHS - 1) + [0.0]
    # One at a time, so that seed 0's TPE, which tries it second, finds the rung's first result there.
    by_accuracy = se.default_size(0, small_table, tmp_path, "unseen_accuracy", max_concurrent=1)
    assert by_accuracy == {"best": GOOD_FINAL, "epochs": 12 * se.EPOCHS}  # ties go on: nothing stopped
    by_loss = se.default_size(0, small_table, tmp_path, "unseen_loss", max_concurrent=1)
    assert by_loss["best"] == BAD_FINAL and by_loss["epochs"] < 12 * se.EPOCHS


def test_rank_correlations_count_a_lower_loss_as_better():
    # Three configurations: at epoch 1 accuracy ranks them backwards and the loss right.
    finals = [0.2, 0.5, 0.9]
    curves = {i: {"unseen_accuracy": [0.1 - 0.01 * i] + [f] * (se.EPOCHS - 1),
                  "unseen_loss": [1.0 - 0.1 * i] + [1 - f] * (se.EPOCHS - 1)} for i, f in enumerate(finals)}
    r = se.rank_correlations(curves)
    assert r["unseen_accuracy"][0] == pytest.approx(-1) and r["unseen_loss"][0] == pytest.approx(1)
    assert r["unseen_accuracy"][-1] == pytest.approx(1) and r["unseen_loss"][-1] == pytest.approx(1)


def test_surrogate_quality_cuts_curves_where_asha_stops_them():
    # Rungs at epochs 2 and 6 (grace 2, reduction 3, 8 epochs). The first trial at a rung always
    # goes on; later ones only from the top third of that rung's results so far.
    first = [0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9]
    low_at_2 = [0.1, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    high_at_2_low_at_6 = [0.1, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    high = [0.1, 0.7, 0.8, 0.9, 0.9, 0.95, 0.95, 0.95]
    cut = sq.asha_cut([first, low_at_2, high_at_2_low_at_6, high], grace=2, rf=3)
    assert [len(c) for c in cut] == [8, 2, 6, 8]
    assert cut[2] == high_at_2_low_at_6[:6]


def test_surrogate_quality_on_the_table_reports_both_correlations():
    out = sq.table(seeds=2)
    assert out["seeds"] == 2
    assert -1 <= out["reported_cv_rank_correlation"] <= 1 and -1 <= out["true_rank_correlation"] <= 1


def test_prepare_throughput_baseline_does_the_pipelines_work(ray_cluster, tmp_path):
    # The benchmark compares rates, so both sides must keep the same rows (the benchmark asserts
    # it too, but only after minutes). 3,000 rows: 30 tasks, 3 malformed lines, 30 duplicates.
    corpus = tmp_path / "corpus.jsonl"
    pt.write_corpus(corpus, 3000)
    cfg = pt.config(tmp_path, corpus)
    baseline, pipeline = pt.run_baseline(cfg), pt.run_pipeline(cfg)
    assert baseline == pipeline == {"rows": 3000 - 3 - 30, "tasks": 30}
