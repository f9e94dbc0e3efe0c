"""Early-stopped trials are PRUNED in the stored Optuna study, with every epoch's value."""

import json

import optuna
import pytest
import ray

from search.cli import main
from tests.conftest import write_config


@pytest.mark.slow
def test_early_stopped_trials_are_pruned_with_their_intermediate_values(tmp_path):
    # Trials must differ for ASHA to stop any: on no-op rows (the output copies the input) a
    # 2-layer, 64-dim model learns within a few epochs at a good learning rate and not at a low
    # one (measured: 0.0, 0.1, 0.78 at 3e-3; 0.0 throughout at 3e-4).
    path = write_config(tmp_path, {
        "corpus": {"string_rewrite": {"noop_fraction": 1.0}},
        "model": {"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4}},
        "training": {"epochs": 4},
        "search": {"num_samples": 6, "grace_period": 2, "reduction_factor": 3,
                   "space": {"budget": 3000, "learning_rate": {"low": 0.0001, "high": 0.01, "log": True}}},
    })
    try:
        assert main(["run", str(path)]) == 0
    finally:
        ray.shutdown()
    exp = tmp_path / "results" / "t"
    summary = json.loads((exp / "summary.json").read_text())
    by_id = {t["trial_id"]: t for t in summary["trials"]}
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal")))
    study = optuna.load_study(study_name="t", storage=storage)
    assert len(study.trials) == 6
    expected = {"EARLY_STOPPED": "PRUNED", "COMPLETED": "COMPLETE"}
    for ot in study.trials:
        tune = by_id[ot.user_attrs["tune_trial_id"]]
        assert ot.state.name == expected[tune["status"]], (ot.state, tune)
        # Every reported epoch reached Optuna as an intermediate value, at its step.
        rows = [json.loads(line) for line in next(exp.glob(f"trial_{tune['trial_id']}/result.json")).read_text().splitlines() if line.strip()]
        assert ot.intermediate_values == {r["training_iteration"]: r["unseen_accuracy"] for r in rows}
        if ot.state.name == "COMPLETE":
            assert ot.value == tune["unseen_accuracy"]
    assert summary["counts"].get("EARLY_STOPPED", 0) >= 1, summary["counts"]
