"""The whole path on a local Ray cluster: prepare -> search -> trials -> summary."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
import ray
import yaml

from search import stopping
from search.cli import PREPARE_ADVICE, main
from search.pool import readers
from tests.conftest import merge, write_config


@pytest.fixture(autouse=True)
def fresh_ray():
    # The CLI starts its own local cluster (as a user's run does); stop it after each test.
    yield
    ray.shutdown()


def load(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_three_trial_search_end_to_end(tmp_path, capsys, caplog):
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
    for ot in study.trials:
        assert len(ot.intermediate_values) >= 1

    # Running again would overwrite: refused, nothing lost.
    before = (exp / "summary.json").read_text()
    assert main(["run", str(path)]) == 2
    assert f"{exp}: an experiment of this name has finished (`mixsearch report {exp}`); give another --name" \
        in capsys.readouterr().err
    assert (exp / "summary.json").read_text() == before

    # The config it started with is saved beside it, and a resume with another is refused (Tune
    # would run the experiment as it started, ignoring the change); where it runs may change.
    from search.config import load_config

    assert yaml.safe_load((exp / "config.yaml").read_text()) == load_config(path).model_dump(mode="json")
    changed = write_config(tmp_path, {"training": {"epochs": 3}, "search": {"num_samples": 4}}, "changed.yaml")
    assert main(["run", str(changed), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: {changed}: not the config {exp}/config.yaml started with" in err
    assert "training.epochs: 2 then, 3 now; search.num_samples: 3 then, 4 now" in err
    assert (exp / "summary.json").read_text() == before
    # A retried job's --resume of the finished experiment (where it runs may change): nothing runs
    # and nothing is rewritten. It used to restore Tune and rewrite the summary, its seconds added.
    moved = write_config(tmp_path, {"ray": {"num_cpus": 1}}, "moved.yaml")
    kept = {f.name: f.read_bytes() for f in exp.iterdir() if f.is_file()}
    assert main(["run", str(moved), "--resume", "--dry-run"]) == 0
    finished = f"{exp}: finished: nothing to resume: `mixsearch report {exp}` shows what it found"
    assert f"experiment: {exp} (finished: nothing to resume" in capsys.readouterr().out
    ray.shutdown()  # the search's cluster: the resume must not start one
    assert main(["run", str(moved), "--resume"]) == 0
    out = capsys.readouterr().out
    # caplog: the log handler keeps the stream of the first test that set logging up.
    assert finished in caplog.text and f"best trial {best['trial_id']}" in out and str(exp / "summary.json") in out
    assert not ray.is_initialized()
    assert {f.name: f.read_bytes() for f in exp.iterdir() if f.is_file()} == kept


@pytest.mark.slow
def test_search_with_a_local_pretrained_model_and_lora(tmp_path, pretrained_dir, capfd):
    path = write_config(tmp_path, {
        "model": {"tiny": None, "pretrained": str(pretrained_dir),
                  "lora": {"rank": 4, "alpha": 8, "target_modules": ["c_attn", "c_proj"]}},
        "search": {"num_samples": 2},
    })
    assert main(["run", str(path)]) == 0
    out = capfd.readouterr()
    # Ray forwards trials' output to the search's: it showed transformers' progress bar, once a trial.
    assert "Loading weights" not in out.err + out.out
    summary = load(tmp_path / "results" / "t" / "summary.json")
    assert summary["num_trials"] == 2
    assert all(t["status"] in ("COMPLETED", "EARLY_STOPPED") for t in summary["trials"]), summary["trials"]
    assert summary["best"]["checkpoint"]


def test_a_gpu_trial_on_a_cluster_without_gpus_is_refused(tmp_path, capsys):
    path = write_config(tmp_path, {"resources_per_trial": {"gpu": 0.5}})
    assert main(["run", str(path)]) == 2
    assert "resources_per_trial.gpu = 0.5, but the local Ray cluster has 0 GPUs" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_max_length_below_the_longest_row_is_refused_before_any_trial(tmp_path, capsys):
    import pyarrow as pa

    from search.pool import read_split
    from trainables.data import encode
    from trainables.tokenizer import char_tokenizer

    path = write_config(tmp_path, {"model": {"max_length": 16}})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    found = re.search(r"line \d+, key model.max_length: the pool's longest row is (\d+) tokens", err)
    assert found and "Traceback" not in err, err
    assert not (tmp_path / "results").exists()
    # The figure is the trials' own encoding's: every row fits in it, and not in one less.
    pool = next((tmp_path / "pools").iterdir())
    rows = pa.concat_tables([read_split(pool, split) for split in ("train", "unseen")])
    longest = int(found.group(1))
    encode(rows, char_tokenizer(), longest)
    with pytest.raises(ValueError, match="exceeds"):
        encode(rows, char_tokenizer(), longest - 1)


@pytest.mark.slow
def test_faults_inside_trials_are_recorded_and_the_search_goes_on(tmp_path, monkeypatch, capsys):
    # Three trials each get one fault after their first epoch; the others run normally.
    monkeypatch.setenv("MIXSEARCH_FAULTS", "raise,nan,oom")
    monkeypatch.setenv("MIXSEARCH_FAULT_DIR", str(tmp_path))
    path = write_config(tmp_path, {"training": {"epochs": 3},
                                   "search": {"num_samples": 5, "grace_period": 3, "max_failures": 0}})
    assert main(["run", str(path)]) == 0
    summary = load(tmp_path / "results" / "t" / "summary.json")
    assert summary["counts"] == {"COMPLETED": 2, "ERROR": 1, "STOPPED": 2}, summary["trials"]
    reasons = sorted((t["status"], t["reason"].split(":")[0]) for t in summary["trials"] if t["reason"])
    assert reasons == [("ERROR", "RuntimeError"), ("STOPPED", "FloatingPointError"), ("STOPPED", "OutOfMemoryError")]
    assert "injected fault" in next(t["reason"] for t in summary["trials"] if t["status"] == "ERROR")
    assert summary["best"]["trial_id"] in {t["trial_id"] for t in summary["trials"] if t["status"] == "COMPLETED"}
    # The printed summary says why, one line per reason.
    out = capsys.readouterr().out
    assert re.search(r"^1 trial failed \(\w+\): RuntimeError: injected fault", out, re.M), out
    assert re.search(r"^1 trial stopped \(\w+\): FloatingPointError", out, re.M), out
    assert re.search(r"^1 trial stopped \(\w+\): OutOfMemoryError", out, re.M), out


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_says_why_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIXSEARCH_FAULTS", "raise")
    monkeypatch.setenv("MIXSEARCH_FAULT_DIR", str(tmp_path))
    path = write_config(tmp_path, {"training": {"epochs": 2}, "search": {"num_samples": 1, "max_failures": 0}})
    assert main(["run", str(path)]) == 1
    out = capsys.readouterr().out
    assert "no trial reported an unseen_accuracy" in out and "1 trial failed" in out, out
    assert load(tmp_path / "results" / "t" / "summary.json")["best"] is None  # still summarized


@pytest.mark.slow
def test_a_grid_recipe_runs_every_combination_once(tmp_path):
    mixtures = [{"random": 1.0}, {"random": 0.5, "mirrored": 0.5}]
    path = write_config(tmp_path, {"search": {"algorithm": "grid", "space": {"weights": {"choices": mixtures}}}})
    data = yaml.safe_load(path.read_text())  # replace SMALL's ranges rather than merge into them
    data["search"]["space"].update(num_instructions={"choices": [5, 20]}, learning_rate=0.005)
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 0
    exp = tmp_path / "results" / "t"
    summary = load(exp / "summary.json")
    got = sorted((tuple(sorted(t["config"]["weights"].items())), t["config"]["num_instructions"]) for t in summary["trials"])
    assert got == sorted((tuple(sorted(m.items())), n) for m in mixtures for n in (5, 20))
    assert not (exp / "optuna.journal").exists()  # a grid needs no study


def test_python_dash_m_search_is_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "search", "config"], capture_output=True, text=True, check=True).stdout
    copy = tmp_path / "mine.yaml"
    copy.write_text(out)
    from search.config import load_config

    assert load_config(copy) == load_config()


def start_driver(tmp_path, *args, verb="run", launcher=()) -> subprocess.Popen:
    log = open(tmp_path / "driver.log", "a")
    return subprocess.Popen([*launcher, sys.executable, "-m", "search", verb, *map(str, args)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def reported(exp) -> dict[str, list[tuple[int, int]]]:
    """Per trial folder: the (epoch, pid) of every result the driver recorded."""
    out = {}
    for f in exp.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[f.parent.name] = [(r["epoch"], r["pid"]) for r in rows]
    return out


def wait_for(condition, driver, tmp_path, seconds=180):
    deadline = time.time() + seconds
    while not condition():
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


# Slow enough epochs (a few seconds) that a kill lands mid-trial; no early stopping.
KILLABLE = {"training": {"epochs": 4}, "search": {"num_samples": 4, "grace_period": 4, "space": {"budget": 6000}}}


@pytest.mark.slow
def test_a_killed_trial_restarts_from_its_checkpoint(tmp_path):
    path = write_config(tmp_path, KILLABLE)
    exp = tmp_path / "results" / "t"
    driver = start_driver(tmp_path, path)
    wait_for(lambda: any(len(r) == 1 for r in reported(exp).values()), driver, tmp_path)
    victim, rows = next((t, r) for t, r in reported(exp).items() if len(r) == 1)
    os.kill(rows[0][1], signal.SIGKILL)  # the trial's worker process dies after its first checkpoint
    assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    after = reported(exp)[victim]
    first = [e for e, pid in after if pid == rows[0][1]]
    second = [e for e, pid in after if pid != rows[0][1]]
    assert first[0] == 1 and second, after  # it ran on in a new process
    # The new process continued from the last checkpoint, not from scratch: it starts at epoch 2
    # or later, and at most the epoch being reported when the process died runs again (Tune
    # delivers results at least once).
    assert 2 <= second[0] <= first[-1] + 1 and second[0] >= first[-1], after
    assert second == list(range(second[0], 5)), after
    summary = load(exp / "summary.json")
    assert all(t["status"] == "COMPLETED" for t in summary["trials"])


def trials_started(exp) -> int:
    return sum(1 for rows in reported(exp).values() if rows)


# When the driver dies: while writing the pool (before Tune exists), after the first epoch of
# the first trials, and late in the search. --resume must finish the experiment every time.
MOMENTS = {
    "preparing": lambda tmp, exp: any((tmp / "pools").glob(".tmp-*")),
    "first_epoch": lambda tmp, exp: any(len(r) >= 1 for r in reported(exp).values()),
    "late": lambda tmp, exp: trials_started(exp) >= 3,
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_killed_driver_resumes_and_finishes_the_experiment(tmp_path, moment):
    path = write_config(tmp_path, KILLABLE)
    exp = tmp_path / "results" / "t"
    driver = start_driver(tmp_path, path)
    wait_for(lambda: MOMENTS[moment](tmp_path, exp), driver, tmp_path)
    if moment != "preparing":  # its trials read the pool: prepare --force must not delete it under them
        pool = next((tmp_path / "pools").iterdir())
        assert [r["pid"] for r in readers(pool)] == [driver.pid]
        assert main(["prepare", str(path), "--force"]) == 2 and not ray.is_initialized()
        assert (pool / "manifest.json").exists()
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything in its session
    driver.wait()
    assert not (exp / "summary.json").exists()
    if moment != "preparing":
        assert readers(pool) == []  # its record is left behind, but its process is gone

    assert main(["run", str(path), "--resume"]) == 0
    summary = load(exp / "summary.json")
    assert summary["num_trials"] == 4
    assert summary["counts"] == {"COMPLETED": 4}, summary["trials"]
    # The killed run's time counts once its search had started (it recorded itself), not before.
    assert len(summary["run_seconds"]) == (1 if moment == "preparing" else 2), summary["run_seconds"]
    # Tune's per-trial logs run on to the last epoch without a gap (an epoch in flight when the
    # driver died may be recorded twice: Tune delivers results at least once). Tune copies them
    # to storage in the background, so the epoch of a checkpoint saved just before the kill can
    # be missing there (seen once: a trial's log began at epoch 2, resumed from its epoch-1
    # checkpoint); the study is written as results arrive and holds it.
    for trial, rows in reported(exp).items():
        epochs = [e for e, _ in rows]
        assert sorted(set(epochs)) == list(range(epochs[0], 5)) and epochs[-1] == 4, (trial, rows)
    # The Optuna study holds the four trials, none left RUNNING, each with every epoch's value:
    # trials continued from the last checkpoint the driver had recorded, and no result was lost.
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal")))
    study = optuna.load_study(study_name="t", storage=storage).trials
    assert "RUNNING" not in [t.state.name for t in study] and len(study) >= 4, study
    ids = {t["trial_id"] for t in summary["trials"]}
    held = {t.user_attrs["tune_trial_id"]: sorted(t.intermediate_values) for t in study}
    assert all(held[i] == [1, 2, 3, 4] for i in ids), held


# How a search is stopped: (signal, sent to the driver's whole process group?, exit statuses).
STOPS = {
    "ctrl_c": (signal.SIGINT, True, {130}),  # what Ctrl-C in a terminal sends: the whole group
    "sigterm": (signal.SIGTERM, False, {143}),  # `kill PID`, `ray job stop` (on a cluster: the driver alone)
    # A batch scheduler cancelling the job (Slurm's scancel), `kill -- -PGID`: the local cluster's own
    # processes get it too, so Tune cannot stop its trials. Ray may end the driver itself (status 1,
    # seen once in six), else the driver gives up after a grace period; it once waited a minute.
    "sigterm_to_group": (signal.SIGTERM, True, {143, 1}),
    # A closed terminal: the shell sends SIGHUP to the whole group. The local cluster ignores it.
    "sighup": (signal.SIGHUP, True, {129}),
}


def interrupt(tmp_path, path, exp, *args, how="ctrl_c", moment="first_epoch", verb="run") -> int:
    """Start a search (or another verb) and stop it (``STOPS``) at a moment (``MOMENTS``), by
    default after a trial's first epoch; its exit status."""
    sig, group, codes = STOPS[how]
    driver = start_driver(tmp_path, path, *args, verb=verb)
    wait_for(lambda: MOMENTS[moment](tmp_path, exp), driver, tmp_path)
    (os.killpg if group else os.kill)(driver.pid, sig)
    try:  # well within the minute a driver whose cluster is gone would otherwise wait
        code = driver.wait(timeout=stopping.SIGTERM_GRACE_SECONDS + 30)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        raise
    assert code in codes, (tmp_path / "driver.log").read_text()[-3000:]
    return code


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c", "sigterm", "sigterm_to_group"])  # sighup: with a terminal, below
def test_ctrl_c_or_sigterm_leaves_an_unsummarized_experiment_that_resume_finishes(tmp_path, capsys, how):
    # As many trials as run at once: every trial exists when Ctrl-C lands, and Tune shows the
    # running ones TERMINATED; the search once read as done, summarized and exit 0.
    path = write_config(tmp_path, merge(KILLABLE, {"search": {"num_samples": 2}}))
    exp = tmp_path / "results" / "t"
    code = interrupt(tmp_path, path, exp, how=how)
    log = (tmp_path / "driver.log").read_text()
    # (Sent to the group, the signal also ends Ray's own processes, whose last words are theirs.)
    assert how == "sigterm_to_group" or "Traceback" not in log, log[-3000:]
    if how.startswith("sigterm"):  # said at once, whoever ends the process
        assert "SIGTERM: ending the search as Ctrl-C does; run the same command with --resume to finish it" in log
    if how == "sigterm_to_group":
        if code == 143:  # not Ray: the driver gave up on its dead cluster
            grace = f"{stopping.SIGTERM_GRACE_SECONDS:g} s"
            assert f"SIGTERM: the search did not end within {grace} (was its local Ray cluster stopped " \
                   "too?); exiting: run the same command with --resume to finish it" in log, log[-3000:]
        assert main(["run", str(path), "--resume"]) == 0
        assert load(exp / "summary.json")["counts"] == {"COMPLETED": 2}
        return
    # SIGTERM ends the search as Ctrl-C does (Ray's own handler exited mid-step, status 15, silent).
    assert "interrupted with 0 of 2 trials finished; the experiment is saved: run the same command with --resume" in log, log[-3000:]
    # KILLABLE keeps every trial to its end (grace 4 of 4 epochs), and the run says so.
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "grace_period" in text)
    assert f"{path}, line {line}, key search.grace_period: grace_period 4 >= training.epochs 4: ASHA stops no" in log
    # No summary: a running trial would have read as stopped early, and the search as done.
    assert not (exp / "summary.json").exists()
    record = load(exp / "runs.json")
    interrupted = record["runs"]
    assert len(interrupted) == 1 and interrupted[0] > 0 and record["driver"] is None, record  # it ended
    began = time.time()
    assert main(["run", str(path), "--resume"]) == 0
    resumed = time.time() - began
    summary = load(exp / "summary.json")
    assert summary["counts"] == {"COMPLETED": 2} and not summary["out_of_time"]
    # The search's time is both runs': the interrupted one as it recorded itself, then this one.
    assert summary["run_seconds"][0] == interrupted[0] and len(summary["run_seconds"]) == 2
    assert 0 < summary["run_seconds"][1] <= resumed + 0.05  # kept to 0.1 s
    assert summary["wall_seconds"] == pytest.approx(sum(summary["run_seconds"]), abs=0.1)
    assert f"over 2 runs (--resume): {interrupted[0]:.0f}s, " in capsys.readouterr().out


def test_a_driver_stuck_after_sigterm_says_where_it_was():
    # The watchdog's last line names the main thread's frame: one such hang in a suite run under
    # load left only "did not end within 10 s", and nothing to tell where it waited.
    seen, done = {}, threading.Event()

    def look() -> None:
        time.sleep(0.2)
        seen["at"] = stopping._main_thread_at()
        done.set()

    def waiting_in_here() -> None:
        done.wait(10)

    threading.Thread(target=look).start()
    waiting_in_here()
    assert re.fullmatch(r"\S*threading\.py:\d+ in wait, from tests/test_search\.py:\d+ in waiting_in_here", seen["at"]), seen
    # A library in a virtual environment inside the clone (scripts/setup.sh's .venv) is not ours.
    assert stopping._is_ours(__file__) and not stopping._is_ours(ray.__file__)


STUCK_IN_C = """
import os, signal, sys
from search import stopping
stopping.SIGTERM_GRACE_SECONDS = 1.0
with stopping.signals_as_ctrl_c():
    # As a driver's main thread waiting in Ray's C++: Python's handler cannot run there, and the
    # signal lands on another thread. (Blocked here; the process's other threads take it.)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})
    print("waiting", flush=True)
    os.read(os.pipe()[0], 1)  # nothing ever comes
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_a_signal_is_announced_while_the_main_thread_waits_in_c_code(tmp_path, sig):
    # CI once saw a driver SIGTERM'd with its local cluster end without a word: its main thread
    # waited in Ray's C++, and Ray exited (status 1) before Python ran the handler there. Now a
    # thread of its own says it at once, and starts the clock that ends a process that is stuck.
    log = tmp_path / "driver.log"
    driver = subprocess.Popen([sys.executable, "-c", STUCK_IN_C], stdout=subprocess.PIPE,
                              stderr=open(log, "w"), text=True, start_new_session=True)
    try:
        assert driver.stdout.readline() == "waiting\n", log.read_text()
        driver.send_signal(sig)
        code = driver.wait(timeout=30)
    finally:
        driver.kill()
    said = log.read_text()
    line = next(i for i, text in enumerate(STUCK_IN_C.splitlines(), 1) if "os.read" in text)
    assert code == 128 + sig, said
    assert f"{sig.name}: ending the search as Ctrl-C does; {stopping.RESUME_ADVICE}" in said, said
    # Stuck, it exits after the grace period (1 s here), saying where its main thread waited.
    assert f"{sig.name}: the search did not end within 1 s" in said and f"(it was at <string>:{line} in <module>)" in said, said


HALF_BUILT = """
import ray.data
from search.cli import main
main(["config"])  # (prints the default config)
dataset = ray.data.Dataset.__new__(ray.data.Dataset)  # as a Ctrl-C inside its __init__ leaves one
del dataset


class Other:
    def __del__(self):
        raise ValueError("any other error in a __del__ is still shown")


other = Other()
del other
"""


def test_a_half_built_ray_dataset_left_by_ctrl_c_is_collected_without_a_traceback():
    # Ctrl-C inside ray.data.from_items (a pool being written) once added, after the run's
    # "interrupted" line, Ray Data's traceback: its Dataset.__del__ reads what __init__ sets last.
    done = subprocess.run([sys.executable, "-c", HALF_BUILT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "_current_executor" not in done.stderr and "Dataset.__del__" not in done.stderr, done.stderr
    assert "ValueError: any other error in a __del__ is still shown" in done.stderr, done.stderr


SWALLOWED = """
import time
from search.cli import main
main(["config"])  # (prints the default config)


class Landing:
    def __del__(self):  # as a signal's handler raising while a __del__ or weakref callback runs
        raise KeyboardInterrupt


try:
    landing = Landing()
    del landing
    for _ in range(200):
        time.sleep(0.01)
    print("lost")
except KeyboardInterrupt:
    print("delivered")
"""


def test_a_ctrl_c_that_lands_in_a_callback_still_interrupts():
    # A SIGHUP'd `mixsearch prepare` once finished its pool and exited 0: the handler's
    # KeyboardInterrupt was raised inside importlib's module-lock callback, and Python dropped it.
    done = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=120)
    assert done.stdout.endswith("delivered\n") and "Exception ignored" not in done.stderr, done.stdout[-200:] + done.stderr


LEAKED = """
import _imp
import importlib
import sys
import threading

import search.pool
from search.cli import main

interrupted = threading.Event()
import_module = importlib.import_module


def waits_for_the_interrupt(name, package=None):  # the driver's background import of the trainable
    if name == "trainables.train":
        interrupted.wait(60)
    return import_module(name, package)


def interrupted_prepare(cfg, **kwargs):
    # A Ctrl-C landing just after importlib took its global lock, before the try whose finally
    # releases it (in _get_module_lock or its weakref callback).
    _imp.acquire_lock()
    interrupted.set()
    raise KeyboardInterrupt


importlib.import_module = waits_for_the_interrupt
search.pool.prepare = interrupted_prepare
sys.exit(main(["run", sys.argv[1]]))
"""


@pytest.mark.slow
def test_a_ctrl_c_that_leaves_the_import_lock_held_still_ends_the_run(tmp_path):
    # Stopped by Ctrl-C while preparing its pool, a run once hung (the suite's driver never exited):
    # the interrupt had left Python's import lock held by the main thread, which then waited for
    # the thread importing the trainable, itself waiting for that lock.
    path = write_config(tmp_path)
    done = subprocess.run([sys.executable, "-c", LEAKED, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.rstrip().endswith("interrupted: run the same command with --resume to finish it"), done.stderr[-3000:]


CONVERTED = """
import os
import signal
import sys
import time

import search.pool
from search.cli import main


def prepare(cfg, **kwargs):
    try:
        if sys.argv[3] == "ctrl_c":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        raise KeyboardInterrupt  # (nothing else to catch without a Ctrl-C)
    except KeyboardInterrupt:  # as pydantic-core does (its SchemaError) when Ctrl-C lands in a model's build
        raise RuntimeError("Error building validator: KeyboardInterrupt: ") from None


search.pool.prepare = prepare
sys.exit(main([sys.argv[1], sys.argv[2]]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c", "none"])
@pytest.mark.parametrize("verb", ["run", "prepare"])
def test_a_library_error_raised_for_a_ctrl_c_is_taken_as_the_ctrl_c(tmp_path, verb, how):
    # Ctrl-C while Ray Data imported its models (a run's first pipeline) became pydantic-core's
    # SchemaError: the run exited 1 with its traceback. The same error without a Ctrl-C is a bug, shown.
    path = write_config(tmp_path)
    done = subprocess.run([sys.executable, "-c", CONVERTED, verb, str(path), how], capture_output=True, text=True,
                          timeout=120)
    if how == "none":
        assert done.returncode == 1 and "RuntimeError: Error building validator" in done.stderr, done.stderr[-3000:]
        return
    said = "interrupted: run the same command with --resume to finish it" if verb == "run" else "interrupted"
    assert done.returncode == 130 and done.stderr.rstrip().endswith(said), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Error building" not in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("verb, how", [("run", "ctrl_c"), ("run", "sigterm"), ("prepare", "ctrl_c"), ("prepare", "sigterm"),
                                      ("prepare", "sighup")])
def test_stopped_while_preparing_the_pool_it_says_so_in_a_line_and_leaves_nothing_half_written(tmp_path, verb, how):
    # run's line was empty (an exception with no message), SIGTERM exited 15 without one (prepare
    # did so until 2026-12-03), and prepare printed Ray Data's traceback.
    path = write_config(tmp_path, KILLABLE)
    interrupt(tmp_path, path, tmp_path / "results" / "t", how=how, moment="preparing", verb=verb)
    log = (tmp_path / "driver.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    said = "interrupted: run the same command with --resume to finish it" if verb == "run" else "interrupted"
    assert log.rstrip().endswith(said), log[-3000:]
    if how != "ctrl_c":
        what, advice = ("the search", stopping.RESUME_ADVICE) if verb == "run" else ("the pool's preparation", PREPARE_ADVICE)
        assert f"{STOPS[how][0].name}: ending {what} as Ctrl-C does; {advice}" in log, log[-3000:]
    assert not list((tmp_path / "pools").iterdir())  # the pool being written is gone


@pytest.mark.slow
def test_a_closed_terminal_ends_the_search_as_ctrl_c_does_and_what_follows_goes_beside_it(tmp_path, capsys):
    # The hangup used to kill the driver and its local cluster at once (the shell sends it to the
    # whole process group): mid-step, nothing saved, not a word. The driver runs in a terminal
    # (a pseudo-terminal) that is closed, as an SSH session that drops.
    import pty
    import select

    path = write_config(tmp_path, merge(KILLABLE, {"search": {"num_samples": 2}}))
    exp = tmp_path / "results" / "t"
    terminal, tty = pty.openpty()
    driver = subprocess.Popen([sys.executable, "-m", "search", "run", str(path)], stdin=tty, stdout=tty,
                              stderr=tty, start_new_session=True)
    os.close(tty)
    screen, closing = [], threading.Event()

    def show() -> None:  # read what the terminal shows, else the driver blocks once it is full
        while not closing.is_set():
            if select.select([terminal], [], [], 0.1)[0]:
                try:
                    screen.append(os.read(terminal, 1 << 16))
                except OSError:
                    return

    reader = threading.Thread(target=show)
    reader.start()
    try:
        deadline = time.time() + 180
        while not MOMENTS["first_epoch"](tmp_path, exp):
            assert driver.poll() is None and time.time() < deadline, b"".join(screen)[-3000:]
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGHUP)
    finally:
        closing.set()
        reader.join()
        os.close(terminal)  # writes to the terminal now fail (EIO)
    try:
        code = driver.wait(timeout=stopping.SIGTERM_GRACE_SECONDS + 30)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        raise
    log = (exp / "driver.log").read_text()
    assert code == 129, log[-3000:]
    assert "SIGHUP: ending the search as Ctrl-C does; run the same command with --resume to finish it" in log
    # Its cluster outlived the hangup: Tune stopped the trials and saved, and the driver said so.
    assert "interrupted with 0 of 2 trials finished; the experiment is saved" in log, log[-3000:]
    assert "did not end within" not in log and "Traceback" not in log, log[-3000:]
    assert not (exp / "summary.json").exists() and load(exp / "runs.json")["driver"] is None
    assert main(["run", str(path), "--resume"]) == 0
    assert load(exp / "summary.json")["counts"] == {"COMPLETED": 2}


@pytest.mark.slow
def test_under_nohup_a_closed_terminal_leaves_the_search_running(tmp_path):
    # What the README suggests for a search that must outlive its terminal: the driver keeps
    # nohup's ignoring of SIGHUP, and so does its local cluster.
    path = write_config(tmp_path, merge(KILLABLE, {"search": {"num_samples": 2}}))
    exp = tmp_path / "results" / "t"
    driver = start_driver(tmp_path, path, launcher=["nohup"])
    wait_for(lambda: MOMENTS["first_epoch"](tmp_path, exp), driver, tmp_path)
    os.killpg(driver.pid, signal.SIGHUP)
    assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert load(exp / "summary.json")["counts"] == {"COMPLETED": 2}
    assert "SIGHUP" not in (tmp_path / "driver.log").read_text()


@pytest.mark.slow
def test_a_time_limit_spent_by_earlier_runs_ends_the_resumed_search_with_what_it_found(tmp_path, capsys, caplog):
    path = write_config(tmp_path, KILLABLE)
    exp = tmp_path / "results" / "t"
    interrupt(tmp_path, path, exp, "--time-limit", "1h")  # a limit far off: Ctrl-C ends this run
    assert "interrupted with" in (tmp_path / "driver.log").read_text()
    spent = load(exp / "runs.json")["runs"][0]
    assert spent > 1
    assert main(["run", str(path), "--resume", "--time-limit", "1", "--dry-run"]) == 0
    assert "time limit: 1 s (0 s left after the earlier runs)" in capsys.readouterr().out
    # The limit may change on a resume (the driver keeps it, not Tune); this one is already spent.
    assert main(["run", str(path), "--resume", "--time-limit", "1"]) == 0
    assert "command line --time-limit 1, key search.time_limit: the earlier runs took" in caplog.text
    summary = load(exp / "summary.json")
    assert summary["out_of_time"] and summary["time_limit"] == 1 and summary["run_seconds"][0] == spent
    # The trials the first run had started stop where they were, with their results; no other runs.
    statuses = {t["trial_id"]: t["status"] for t in summary["trials"]}
    ran = {t["trial_id"] for t in summary["trials"] if t["training_iteration"] >= 1}
    assert ran and all(statuses[i] == "OUT_OF_TIME" for i in ran), summary["trials"]
    assert all(s == "PENDING" for i, s in statuses.items() if i not in ran), summary["trials"]
    assert summary["best"]["trial_id"] in ran
    out = capsys.readouterr().out
    def trials(n):
        return f"{n} trial{'s' * (n > 1)}"

    pending = sum(s == "PENDING" for s in statuses.values())
    cut = f"{trials(len(ran))} cut short (out_of_time)" + (f", {trials(pending)} never started" if pending else "")
    assert f"the time limit (1 s) ended the search: {cut}; to search on, start a new experiment with " \
           f"--start-from {exp}" in out, out
    # Tune's stop of the whole search tells the searcher nothing: the study would keep them RUNNING.
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal")))
    study = optuna.load_study(study_name="t", storage=storage).trials
    assert {t.state.name for t in study} == {"PRUNED"}, study
    assert {t.user_attrs["tune_trial_id"] for t in study if t.intermediate_values} == ran
    assert main(["run", str(path), "--resume"]) == 0 and load(exp / "summary.json") == summary  # it is done


def test_the_run_clock_adds_each_run_to_those_before_it(tmp_path, caplog):
    import pyarrow.fs as pafs

    from search.driver import RunClock

    fs, path = pafs.LocalFileSystem(), tmp_path / "runs.json"

    def runs():
        return load(path)["runs"]

    with RunClock(fs, str(tmp_path), started=time.time() - 30, every=0.02) as clock:
        # Written at the start: a run killed at once still counts (kept to 0.1 s, so a slow write may add one).
        assert len(runs()) == 1 and runs()[0] == pytest.approx(30.0, abs=0.15)
        assert load(path)["driver"]["pid"] == os.getpid()  # and who is running it
        assert load(path)["driver"]["deadline"] is None
        clock.deadline = 1e10  # search.time_limit's, for `mixsearch report`
        time.sleep(0.3)
        assert runs()[0] > 30.0  # kept up to date while it runs
        assert load(path)["driver"]["deadline"] == 1e10
        first = clock.finish()
    assert runs() == first and len(first) == 1 and first[0] >= 30.3 and load(path)["driver"] is None
    # A later run (--resume) adds its own time, and so does one that ends with an error.
    with pytest.raises(RuntimeError), RunClock(fs, str(tmp_path), started=time.time() - 5, every=60):
        raise RuntimeError("a search that failed")
    assert runs()[0] == first[0] and runs()[1] == pytest.approx(5.0, abs=0.5)
    # An unreadable record costs only the earlier runs' time, with a warning.
    path.write_text('{"runs": [1.0, oops')
    with RunClock(fs, str(tmp_path), started=time.time(), every=60) as clock:
        assert clock.earlier == []
    assert "runs.json is unreadable" in caplog.text and len(runs()) == 1


def test_resume_is_refused_while_a_driver_still_runs_the_experiment(tmp_path, capsys):
    import socket

    import pyarrow.fs as pafs

    from search.driver import check_not_running

    path = write_config(tmp_path, KILLABLE)
    exp = tmp_path / "results" / "t"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")  # an experiment Tune has written (never read: refused first)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def driver(host, pid, ago):
        (exp / "runs.json").write_text(json.dumps({"runs": [12.0], "driver": {"host": host, "pid": pid, "at": time.time() - ago}}))

    try:
        driver(socket.gethostname(), other.pid, ago=3)  # alive on this machine
        assert main(["run", str(path), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"a driver is still running this experiment (process {other.pid} on {socket.gethostname()}" in err, err
        assert "retry in" not in err and not ray.is_initialized()  # refused before Ray
        assert main(["run", str(path)]) == 2  # and a new run of the same name, without --resume
        assert f"an experiment of this name is running (process {other.pid} on {socket.gethostname()}, " \
            in capsys.readouterr().err
        driver("elsewhere", 1, ago=5)  # another machine, heard from 5 s ago
        assert main(["run", str(path), "--resume"]) == 2
        assert "on elsewhere, last seen 5 s ago); let it finish or stop it (Ctrl-C) before --resume, or if it is " \
            "gone, retry in 25 s" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    fs = pafs.LocalFileSystem()
    for host, pid, ago in [(socket.gethostname(), other.pid, 3), ("elsewhere", 1, 40)]:
        driver(host, pid, ago)  # dead on this machine; silent too long elsewhere: gone
        check_not_running(fs, str(exp), "t")
    (exp / "runs.json").write_text(json.dumps({"runs": [12.0], "driver": None}))  # it ended
    check_not_running(fs, str(exp), "t")
    assert main(["run", str(path)]) == 2
    assert "an unfinished experiment of this name exists; pass --resume to finish it" in capsys.readouterr().err


@pytest.mark.slow
def test_results_at_a_uri_with_the_study_in_a_database(tmp_path, capsys):
    uri = (tmp_path / "remote").as_uri()  # file:// goes through the same pyarrow path as s3://
    db = f"sqlite:///{tmp_path / 'study.db'}"
    path = write_config(tmp_path, {"storage_path": uri, "search": {"num_samples": 2, "study_storage": db}})
    assert main(["run", str(path)]) == 0
    summary = load(tmp_path / "remote" / "t" / "summary.json")
    assert summary["num_trials"] == 2 and summary["experiment_path"] == f"{uri}/t"
    assert len(optuna.load_study(study_name="t", storage=db).trials) == 2
    capsys.readouterr()
    assert main(["run", str(path)]) == 2  # exists: refused at the URI too, with how to report it
    assert f"has finished (`mixsearch report {uri}/t`); give another --name" in capsys.readouterr().err
    assert main(["run", str(path), "--resume"]) == 0  # finished: resuming changes nothing
    assert load(tmp_path / "remote" / "t" / "summary.json")["num_trials"] == 2


def test_a_uri_without_a_study_database_is_refused(tmp_path):
    from search.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="give search.study_storage a database URL"):
        load_config(write_config(tmp_path, {"storage_path": "s3://bucket/results"}))


# Trials that learn a little (exact match above 0 at some epochs): at the small config's size every
# result is 0, and the surrogate fits nothing to results that never differ.
LEARNS = {"corpus": {"string_rewrite": {"unseen_examples_per_rule": 10}},
          "model": {"tiny": {"n_layer": 2, "n_embd": 96, "n_head": 4}},
          "training": {"batch_size": 32, "epochs": 3, "eval_examples": 200},
          "search": {"grace_period": 3, "space": {"budget": 3000, "num_instructions": {"low": 40, "high": 120, "log": True},
                                                  "learning_rate": {"low": 0.005, "high": 0.02, "log": True}}}}


@pytest.mark.slow
def test_surrogate_in_the_summary_and_a_second_search_that_starts_from_its_proposals(tmp_path, capsys):
    path = write_config(tmp_path, merge(LEARNS, {"search": {"num_samples": 4, "pareto": "compute"}}))
    assert main(["run", str(path)]) == 0
    exp = tmp_path / "results" / "t"
    first = load(exp / "summary.json")
    sur = first["surrogate"]
    assert sur["trials"] == 4 and sur["results"] == 12 and -1 <= sur["cv_rank_correlation"] <= 1
    for p in sur["proposals"]:
        c = p["config"]
        assert 40 <= c["num_instructions"] <= 120 and abs(sum(c["weights"].values()) - 1) < 1e-9
    assert "surrogate (cross-validated rank correlation" in capsys.readouterr().out
    # Against compute every trial is a point at what it trained (budget 3000 x epochs).
    for p in first["pareto"]["front"]:
        t = next(t for t in first["trials"] if t["trial_id"] == p["trial_id"])
        assert p["compute"] == 3000 * t["training_iteration"]
    # The same, as notebooks load it.
    from analysis.results import front, proposals, trials

    assert list(front(exp)["compute"]) == [p["compute"] for p in first["pareto"]["front"]]
    assert list(proposals(exp)["num_instructions"]) == [p["config"]["num_instructions"] for p in sur["proposals"]]
    assert len(trials(exp)) == 4 and "weights.random" in trials(exp)

    # A second search tries the first one's proposals before sampling its own. Only which configs it
    # trains matters here: one epoch of the small model, on the budget of the small config.
    second = write_config(tmp_path, merge(LEARNS, {
        "name": "t2", "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}}, "training": {"epochs": 1},
        "search": {"num_samples": 2, "max_concurrent": 1, "grace_period": 1, "space": {"budget": 400}}}), "second.yaml")
    assert main(["run", str(second), "--start-from", str(exp)]) == 0
    trials = load(tmp_path / "results" / "t2" / "summary.json")["trials"]

    def point(c):
        return (c["num_instructions"], round(c["learning_rate"], 9), tuple(round(c["weights"][d], 9) for d in sorted(c["weights"])))

    # Both trials of the second search are the first search's two best proposals.
    assert sorted(point(t["config"]) for t in trials) == sorted(point(p["config"]) for p in sur["proposals"][:2])
