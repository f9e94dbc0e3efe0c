"""Early-stopped trials are PRUNED in the stored Optuna study, with every epoch's value."""

import json
import warnings

import optuna
import pytest
import ray

from search.cli import main
from tests.conftest import write_config


# Trials must differ for ASHA to stop any: on no-op rows (the output copies the input) a
# 2-layer, 64-dim model learns within a few epochs at a good learning rate and not at a low
# one (measured: 0.0, 0.1, 0.78 at 3e-3; 0.0 throughout at 3e-4).
LEARNS_OR_NOT = {
    "corpus": {"string_rewrite": {"noop_fraction": 1.0}},
    "model": {"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4}},
    "training": {"epochs": 4},
    "search": {"num_samples": 6, "grace_period": 2, "reduction_factor": 3,
               "space": {"budget": 3000, "learning_rate": {"low": 0.0001, "high": 0.01, "log": True}}},
}


def run(tmp_path, extra=None):
    from tests.conftest import merge

    try:
        assert main(["run", str(write_config(tmp_path, merge(LEARNS_OR_NOT, extra or {})))]) == 0
    finally:
        ray.shutdown()
    exp = tmp_path / "results" / "t"
    summary = json.loads((exp / "summary.json").read_text())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal")))
    return exp, summary, optuna.load_study(study_name="t", storage=storage)


@pytest.mark.slow
def test_early_stopped_trials_are_pruned_with_their_intermediate_values(tmp_path):
    exp, summary, study = run(tmp_path)
    by_id = {t["trial_id"]: t for t in summary["trials"]}
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


@pytest.mark.slow
def test_pareto_front_of_accuracy_against_budget(tmp_path, monkeypatch):
    # One trial's loss turns NaN after its first epoch: it fails alone, off the front.
    monkeypatch.setenv("MIXSEARCH_FAULTS", "nan")
    monkeypatch.setenv("MIXSEARCH_FAULT_DIR", str(tmp_path))
    exp, summary, study = run(tmp_path, {"search": {"pareto": "budget", "space": {"budget": {"choices": [1000, 3000]}}}})
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    by_id = {t["trial_id"]: t for t in summary["trials"]}
    assert summary["num_trials"] == 6 and summary["counts"]["STOPPED"] == 1, summary["counts"]
    expected = {"EARLY_STOPPED": "PRUNED", "COMPLETED": "COMPLETE", "STOPPED": "FAIL"}
    for ot in study.trials:
        tune = by_id[ot.user_attrs["tune_trial_id"]]
        assert ot.state.name == expected[tune["status"]], (ot.state, tune)
        if ot.state.name == "COMPLETE":
            assert ot.values == [tune["unseen_accuracy"], tune["config"]["budget"]]
    # The front: completed trials that no completed trial beats on both accuracy and budget.
    done = [t for t in summary["trials"] if t["status"] == "COMPLETED"]
    front = summary["pareto"]["front"]
    assert summary["pareto"]["against"] == "budget" and front
    def covers(o, t, strictly):
        better = (o["unseen_accuracy"] > t["unseen_accuracy"]) or (o["config"]["budget"] < t["config"]["budget"])
        return (o["unseen_accuracy"] >= t["unseen_accuracy"] and o["config"]["budget"] <= t["config"]["budget"]
                and (better or not strictly))

    ids = {p["trial_id"] for p in front}
    for t in done:
        if t["trial_id"] in ids:
            assert not any(covers(o, t, strictly=True) for o in done), t
        else:
            assert any(covers(o, t, strictly=False) for o in done if o["trial_id"] in ids), t
    assert [p["budget"] for p in front] == sorted(p["budget"] for p in front)
    assert [p["unseen_accuracy"] for p in front] == sorted(p["unseen_accuracy"] for p in front)


@pytest.mark.parametrize("stop_by", ["unseen_loss", "unseen_accuracy"])
def test_asha_ranks_trials_by_the_metric_search_stop_by_names(stop_by):
    # At epoch 2 exact match is near zero for every trial; the loss already tells them apart.
    # Trial b has the lower accuracy but the lower (better) loss: ASHA keeps it only by loss.
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from search.config import Config
    from search.driver import asha_scheduler

    scheduler = asha_scheduler(Config.model_validate({"search": {"stop_by": stop_by, "grace_period": 2}}))
    a, b = Trial("t", config={}, stub=True), Trial("t", config={}, stub=True)
    for trial in (a, b):
        scheduler.on_trial_add(None, trial)
    first = {"training_iteration": 2, "unseen_accuracy": 0.07, "unseen_loss": 1.0}
    assert scheduler.on_trial_result(None, a, first) == TrialScheduler.CONTINUE  # the rung's first
    second = {"training_iteration": 2, "unseen_accuracy": 0.05, "unseen_loss": 0.7}
    expected = TrialScheduler.CONTINUE if stop_by == "unseen_loss" else TrialScheduler.STOP
    assert scheduler.on_trial_result(None, b, second) == expected


def test_a_tie_for_best_goes_to_a_trial_run_to_the_end_then_to_the_cheaper():
    # The first id of a tie used to be the best: in a Pareto search where no trial learned, a
    # dearer trial than the front's only point.
    from search.driver import TrialSummary, best_trial, pareto_front

    def trial(trial_id, accuracy, status="COMPLETED", budget=400):
        return TrialSummary(trial_id, status, {"budget": budget}, accuracy, 2)

    trials = [trial("a", 0.0, budget=800), trial("b", 0.0, "EARLY_STOPPED", budget=200),
              trial("c", 0.0, budget=300), trial("d", 0.0, budget=300), trial("e", None), trial("f", 0.5, "STOPPED")]
    assert best_trial(trials, {}).trial_id == "c"  # ran to the end, the smaller budget, the first id
    costs = {t.trial_id: t.config["budget"] for t in trials}
    assert best_trial(trials, costs).trial_id == pareto_front(trials, "budget", costs)[-1]["trial_id"] == "c"
    assert best_trial(trials, {"a": 100.0}).trial_id == "a"  # the search's own cost, where it has one
    trials.append(trial("g", 0.1, "EARLY_STOPPED", budget=900))  # a higher accuracy wins whatever it cost
    assert best_trial(trials, {}).trial_id == "g"
    assert best_trial([trial("x", None), trial("y", 0.9, "ERROR")], {}) is None


def test_a_config_already_trained_is_answered_from_the_study_not_trained_again():
    from search.config import SpaceConfig
    from search.searcher import MultiFidelityOptunaSearch
    from search.space import DefineByRun

    space = SpaceConfig.model_validate({"weights": {"random": 1.0}, "num_instructions": {"choices": [10, 20]},
                                        "budget": 100, "learning_rate": 0.003})
    searcher = MultiFidelityOptunaSearch(DefineByRun(space), metric="unseen_accuracy", mode="max",
                                         sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=2)
    trained = []
    for i in range(2):
        config = searcher.suggest(f"t{i}")
        trained.append(config["num_instructions"])
        searcher.on_trial_complete(f"t{i}", {"unseen_accuracy": 0.1 * (i + 1), "epoch": 2, "training_iteration": 2})
    # Two points, two trainings: the second suggestion was never the first config again.
    assert sorted(trained) == [10, 20]
    # Once every point is trained, a suggestion still comes (a repeat, so a search never stalls),
    # after REPEATS - 1 repeats were answered from the study with the values of their originals.
    from search.searcher import REPEATS

    assert searcher.suggest("t2")["num_instructions"] in (10, 20)
    study = searcher._ot_study
    copies = [t for t in study.trials if "tune_trial_id" not in t.user_attrs and t.state.is_finished()]
    assert len(copies) >= REPEATS - 1
    for copy in copies:
        original = next(t for t in study.trials if "tune_trial_id" in t.user_attrs and t.params == copy.params)
        assert copy.state == original.state and copy.value == original.value


@pytest.mark.parametrize("pareto", [None, "compute"])
def test_a_resumed_searcher_leaves_trials_the_study_finished_after_its_snapshot(tmp_path, pareto):
    # The driver dies after telling the study that ASHA stopped trial "a" but before Tune's next
    # snapshot: on resume Tune restores the older snapshot and runs "a" on.
    from search.config import SpaceConfig
    from search.searcher import COST_METRIC, MultiFidelityOptunaSearch
    from search.space import DefineByRun

    space = SpaceConfig.model_validate({"weights": {"random": 1.0}, "num_instructions": {"low": 5, "high": 50},
                                        "budget": 100, "learning_rate": 0.003})
    metric, mode = ("unseen_accuracy", "max") if not pareto else (["unseen_accuracy", COST_METRIC[pareto]], ["max", "min"])
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal")))

    def searcher():
        return MultiFidelityOptunaSearch(DefineByRun(space), metric=metric, mode=mode, study_name="s", storage=storage,
                                         sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=4, pareto=pareto)

    def result(acc, epoch):
        return {"unseen_accuracy": acc, "epoch": epoch, "training_iteration": epoch, "examples_seen": 100 * epoch}

    first = searcher()
    first.suggest("a"), first.suggest("b")
    for t in ("a", "b"):
        first.on_trial_result(t, result(0.1, 1))
    first.save(str(tmp_path / "snapshot.pkl"))
    first.on_trial_complete("a", result(0.2, 2))  # stopped early by ASHA, after the snapshot
    first.suggest("c")  # asked of the study after the snapshot too: no restored trial knows it

    resumed = searcher()
    resumed.restore(str(tmp_path / "snapshot.pkl"))
    resumed.on_trial_result("a", result(0.3, 3))
    resumed.on_trial_complete("a", result(0.4, 4))  # ignored: the study already holds its end
    with warnings.catch_warnings():
        # Tune delivers results at least once: an epoch the study holds may come again on resume.
        warnings.filterwarnings("error", message=".*already reported")
        resumed.on_trial_result("b", result(0.1, 1))
    resumed.on_trial_result("b", result(0.5, 2))
    resumed.on_trial_complete("b", result(0.6, 4))
    a, b, c = optuna.load_study(study_name="s", storage=storage).trials
    # "c" would stay RUNNING for good (seen once in the suite's killed-driver test, moment "late").
    assert c.state.name == "FAIL"
    if pareto:  # early-stopped against compute: a true point, at what it trained
        assert (a.state.name, a.values, b.state.name, b.values) == ("COMPLETE", [0.2, 200], "COMPLETE", [0.6, 400])
    else:
        assert (a.state.name, a.intermediate_values) == ("PRUNED", {1: 0.1, 2: 0.2})
        assert (b.state.name, b.value, b.intermediate_values) == ("COMPLETE", 0.6, {1: 0.1, 2: 0.5, 4: 0.6})


@pytest.mark.parametrize("pareto", [None, "budget", "compute"])
def test_trials_ended_by_the_time_limit_stand_in_the_study_as_stopped_early(pareto):
    # Tune's stop of a whole search tells the searcher nothing: without on_time_up all three
    # would stay RUNNING.
    from search.config import SpaceConfig
    from search.searcher import COST_METRIC, MultiFidelityOptunaSearch
    from search.space import DefineByRun

    space = SpaceConfig.model_validate({"weights": {"random": 1.0}, "num_instructions": {"low": 5, "high": 50},
                                        "budget": 100, "learning_rate": 0.003})
    metric, mode = ("unseen_accuracy", "max") if not pareto else (["unseen_accuracy", COST_METRIC[pareto]], ["max", "min"])
    searcher = MultiFidelityOptunaSearch(DefineByRun(space), metric=metric, mode=mode, pareto=pareto,
                                         sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=4)
    for t in ("ran", "done", "waiting"):
        searcher.suggest(t)
    ran = {"unseen_accuracy": 0.3, "epoch": 2, "training_iteration": 2, "budget": 100, "examples_seen": 200}
    searcher.on_trial_result("ran", {**ran, "unseen_accuracy": 0.1, "epoch": 1, "training_iteration": 1})
    searcher.on_trial_result("ran", ran)
    searcher.on_trial_complete("done", {**ran, "unseen_accuracy": 0.5, "epoch": 4, "training_iteration": 4})
    # What Tune holds as the last result of a trial that never reported: its id and auto-filled fields.
    searcher.on_time_up([("ran", ran), ("done", {}), ("waiting", {"trial_id": "waiting", "done": False})])
    states = {t.user_attrs["tune_trial_id"]: t for t in searcher._ot_study.trials}
    ran_state = {None: "PRUNED", "budget": "PRUNED", "compute": "COMPLETE"}[pareto]  # as if ASHA had stopped it
    assert (states["ran"].state.name, states["waiting"].state.name, states["done"].state.name) == \
        (ran_state, "PRUNED", "COMPLETE")
    assert states["waiting"].values is None and not states["waiting"].intermediate_values
    if pareto == "compute":
        assert states["ran"].values == [0.3, 200]
    elif not pareto:
        assert states["ran"].intermediate_values == {1: 0.1, 2: 0.3}
