"""The whole path on a local Ray cluster: prepare -> search -> trials -> summary."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import ray

from search.cli import main
from tests.conftest import write_config


@pytest.fixture(autouse=True)
def fresh_ray():
    # The CLI starts its own local cluster (as a user's run does); stop it after each test.
    yield
    ray.shutdown()


def load(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_three_trial_search_end_to_end(tmp_path, capsys):
    path = write_config(tmp_path)
    assert main(["run", str(path)]) == 0
    exp = tmp_path / "results" / "t"
    summary = load(exp / "summary.json")
    assert summary["num_trials"] == len(summary["trials"]) == 3
    for t in summary["trials"]:
        assert t["status"] in ("COMPLETED", "EARLY_STOPPED"), t
        assert t["training_iteration"] >= 1
        assert 0.0 <= t["unseen_accuracy"] <= 1.0
        c = t["config"]
        assert abs(sum(c["weights"].values()) - 1) < 1e-9 and set(c["weights"]) == {"random", "repeated", "periodic", "mirrored"}
        assert 4 <= c["num_instructions"] <= 100 and 0.003 <= c["learning_rate"] <= 0.01 and c["budget"] == 400
        assert set(t["per_domain"]) == {"random", "repeated", "periodic", "mirrored"}
    best = summary["best"]
    assert best["unseen_accuracy"] == max(t["unseen_accuracy"] for t in summary["trials"])
    assert os.path.isdir(best["checkpoint"])
    assert summary["wall_seconds"] > 0
    out = capsys.readouterr().out
    assert f"best trial {best['trial_id']}" in out and str(exp / "summary.json") in out

    # The Optuna study lives beside the experiment, with every epoch's value.
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal")))
    study = optuna.load_study(study_name="t", storage=storage)
    assert len(study.trials) == 3
    for ot, t in zip(sorted(study.trials, key=lambda x: x.number), summary["trials"]):
        assert len(ot.intermediate_values) >= 1

    # Running again would overwrite: refused, nothing lost.
    before = (exp / "summary.json").read_text()
    assert main(["run", str(path)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert (exp / "summary.json").read_text() == before


def test_resume_without_an_experiment_is_refused(tmp_path, capsys):
    assert main(["run", str(write_config(tmp_path)), "--resume"]) == 2
    assert "no experiment to resume" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_python_dash_m_search_is_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "search", "config"], capture_output=True, text=True, check=True).stdout
    copy = tmp_path / "mine.yaml"
    copy.write_text(out)
    from search.config import load_config

    assert load_config(copy) == load_config()


@pytest.mark.slow
def test_killed_driver_resumes_and_trials_continue_from_checkpoints(tmp_path):
    # grace_period = epochs: no early stopping, so every trial must end COMPLETED.
    path = write_config(tmp_path, {"training": {"epochs": 4}, "search": {"num_samples": 4, "grace_period": 4}})
    exp = tmp_path / "results" / "t"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "search", "run", str(path)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 180
    while not list(exp.glob("trial_*/checkpoint_*")):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything in its session
    driver.wait()
    assert not (exp / "summary.json").exists()

    assert main(["run", str(path), "--resume"]) == 0
    summary = load(exp / "summary.json")
    assert summary["num_trials"] == 4
    assert all(t["status"] == "COMPLETED" and t["training_iteration"] == 4 for t in summary["trials"]), summary["trials"]
    # Each trial reported each epoch once: a trial killed mid-run continued from its
    # checkpoint instead of starting over.
    for result in exp.glob("trial_*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line.strip()]
        assert epochs == sorted(set(epochs)) and epochs[-1] == 4, (result, epochs)
