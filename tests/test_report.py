"""The report stage: `mixsearch report`, its plots and the notebook, on a real (small) search,
finished and as a running one looks (trial logs, no summary yet)."""

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import ray
import yaml

from analysis import plots
from analysis.results import curves, progress
from search.cli import main
from tests.conftest import write_config

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """(a finished 5-trial Pareto search's folder, its summary, what `mixsearch run` printed).
    One trial's loss turns NaN after its first epoch (fault injection), so one is STOPPED."""
    tmp = tmp_path_factory.mktemp("report")
    path = write_config(tmp, {"search": {"num_samples": 5, "pareto": "compute"}})
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("MIXSEARCH_FAULTS", "nan")
        mp.setenv("MIXSEARCH_FAULT_DIR", str(tmp))
        assert main(["run", str(path)]) == 0
    ray.shutdown()
    exp = tmp / "results" / "t"
    summary = json.loads((exp / "summary.json").read_text())
    assert [t["status"] for t in summary["trials"]].count("STOPPED") == 1
    return exp, summary, printed.getvalue()


def as_running(exp, dst):
    """A copy of the experiment as it looks mid-search (no summary.json), its accuracies replaced
    by distinct known values (at this size every trial's is 0): trial i scores (i + 1) / 10 plus
    epoch / 100, except that the first trial's last epoch falls back (its best is not its last).
    The stopped trial's final report (no epoch, scored 0) is left as the trainable wrote it.
    Returns ({trial_id: [value of each epoch]}, {trial_id: its last reported value})."""
    shutil.copytree(exp, dst)
    (dst / "summary.json").unlink()
    epochs, last = {}, {}
    for i, log in enumerate(sorted(dst.glob("trial_*/result.json"))):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        trained = [r for r in rows if "epoch" in r]
        for r in trained:
            r["unseen_accuracy"] = (i + 1) / 10 + r["epoch"] / 100
        if i == 0 and len(trained) > 1:
            trained[-1]["unseen_accuracy"] = 0.01
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))
        epochs[rows[0]["trial_id"]] = [r["unseen_accuracy"] for r in trained]
        last[rows[0]["trial_id"]] = rows[-1]["unseen_accuracy"]
    return epochs, last


def live_process():
    """A process that stands in for a running search's driver, in runs.json."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def record_of(process) -> dict:
    return {"runs": [30.0], "driver": {"host": socket.gethostname(), "pid": process.pid, "at": time.time()}}


def test_report_of_a_finished_search_prints_what_run_printed_and_writes_plots(experiment, tmp_path, capsys):
    exp, summary, printed = experiment
    assert main(["report", str(exp), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    text = out[:out.index("plots: ")].strip()
    assert text in printed  # the same block as at the end of the run
    best = summary["best"]
    by_domain = ", ".join(f"{d} {v:.3f}" for d, v in best["per_domain"].items())
    assert len(best["per_domain"]) == 4  # each domain's accuracy follows the mean
    assert f"best trial {best['trial_id']}: unseen_accuracy {best['unseen_accuracy']:.3f} ({by_domain})\n" in text
    assert f"  learning_rate: {best['config']['learning_rate']:.4g}\n" in text  # rounded for reading
    assert "pareto front (unseen accuracy against compute):" in text
    # At this size no trial learns anything: the tie and why the surrogate made no proposal are said.
    assert {t["unseen_accuracy"] for t in summary["trials"] if t["status"] != "STOPPED"} == {0.0}
    assert "\nwarning: the 4 trials with a result all scored 0.000, so this one is no better than the others: " in text
    assert "\nsurrogate: not fit: every trial reported unseen_accuracy 0.000 at every epoch" in text
    for name in ("curves.png", "knobs.png", "front.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == PNG
    assert not (exp / "report").exists()  # --out was given


@pytest.mark.parametrize("values, statuses, warned", [
    ([0.0, 0.0, 0.0], ["COMPLETED", "EARLY_STOPPED", "COMPLETED"], "all 3 trials scored 0.000"),
    # A failed trial has no result and does not count; the hint depends on the value.
    ([0.5, None, 0.5], ["COMPLETED", "ERROR", "COMPLETED"], "the 2 trials with a result all scored 0.500"),
    ([0.0, 0.0, 0.1], ["COMPLETED", "EARLY_STOPPED", "COMPLETED"], None),
    ([0.0, 0.4], ["COMPLETED", "STOPPED"], None),  # the stopped trial's value is not a result
    ([0.0], ["COMPLETED"], None),
])
def test_a_tie_for_best_is_said(values, statuses, warned):
    from analysis.report import summary_text

    trials = [{"trial_id": f"t{i}", "status": s, "unseen_accuracy": v, "config": {"budget": 100}, "reason": None}
              for i, (v, s) in enumerate(zip(values, statuses))]
    ranked = [t for t in trials if t["unseen_accuracy"] is not None and t["status"] not in ("STOPPED", "ERROR")]
    best = max(ranked, key=lambda t: t["unseen_accuracy"])
    text = summary_text({"num_trials": len(trials), "wall_seconds": 1.0, "trials": trials, "experiment_path": "e",
                         "best": best})
    lines = [line for line in text.splitlines() if line.startswith("warning:")]
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(f"warning: {warned}, so this one is no better")
        assert ("training.metric: rouge_l" in lines[0]) == (values[0] == 0.0)


def test_progress_and_plots_hold_every_trials_results(experiment, tmp_path):
    exp, summary, _ = experiment
    trials = {t["trial_id"]: t for t in summary["trials"]}
    live = tmp_path / "live"
    epochs, last = as_running(exp, live)
    prog = progress(live)
    assert list(prog["trial_id"]) == sorted(last, key=lambda t: -last[t])  # best last value first
    for _, row in prog.iterrows():
        t, values = trials[row["trial_id"]], epochs[row["trial_id"]]
        stopped = t["status"] == "STOPPED"  # its final report counts as an iteration, not an epoch
        assert row["epochs"] == len(values) == t["training_iteration"] - stopped
        assert row["unseen_accuracy"] == last[row["trial_id"]] and row["best_unseen_accuracy"] == max(values)
        assert (row["stopped"] == "nan_loss") if stopped else pd.isna(row["stopped"])
        assert row["num_instructions"] == t["config"]["num_instructions"]
        assert row["weights.random"] == pytest.approx(t["config"]["weights"]["random"])
    assert "simplex_u.random" not in prog  # Optuna's raw draws are not the trial's config

    cv = curves(live)
    assert cv["epoch"].notna().all() and len(cv) == sum(map(len, epochs.values()))
    lines = plots.curves_figure(cv).axes[0].get_lines()
    assert sorted(ln.get_label().split()[0] for ln in lines) == sorted(epochs)
    for ln in lines:
        values = epochs[ln.get_label().split()[0]]
        assert list(ln.get_ydata()) == values and list(ln.get_xdata()) == list(range(1, len(values) + 1))
    best = max(epochs, key=lambda t: epochs[t][-1])
    assert [ln.get_label() for ln in lines if ln.get_color() == "black"] == [f"{best} (best)"]
    # Beside it, what ASHA ranks trials by: each trial's unseen loss, by epoch, on a log scale.
    loss = plots.curves_figure(cv).axes[1]
    assert loss.get_ylabel() == "unseen_loss" and loss.get_yscale() == "log"
    logged = {t: list(rows.sort_values("epoch")["unseen_loss"]) for t, rows in cv.groupby("trial_id")}
    assert {ln.get_label().split()[0]: list(ln.get_ydata()) for ln in loss.get_lines()} == logged
    assert [ln.get_label() for ln in loss.get_lines() if ln.get_color() == "black"] == [f"{best} (best)"]
    assert len(plots.curves_figure(cv.drop(columns="unseen_loss")).axes) == 1  # logs written before it

    knobs = plots.searched_knobs(prog)
    assert "num_instructions" in knobs and "learning_rate" in knobs and "budget" not in knobs  # budget is fixed
    fig = plots.knobs_figure(prog)
    assert len(fig.axes) == len(knobs)
    full = {t for t, v in epochs.items() if len(v) == max(map(len, epochs.values()))}
    for ax in fig.axes:
        filled, hollow = ax.collections  # ran to the end, stopped early
        assert sorted(filled.get_offsets()[:, 1]) == sorted(last[t] for t in full)
        assert len(filled.get_offsets()) + len(hollow.get_offsets()) == len(last)


def test_a_running_search_is_reported_from_its_trial_logs(experiment, tmp_path, capsys):
    exp, summary, _ = experiment
    live = tmp_path / "live"
    epochs, last = as_running(exp, live)
    # Tune delivers results at least once (a restored trial reports its epoch again), and a
    # trial may be writing its log right now.
    trial = next(t for t in sorted(epochs) if t in last and last[t] == epochs[t][-1])  # not stopped
    log = next(live.glob(f"*{trial}*/result.json"))
    lines = log.read_text().splitlines()
    again = {**json.loads(lines[-1]), "unseen_accuracy": 0.99}
    log.write_text("\n".join(lines + [json.dumps(again), lines[0][:40]]) + "\n")
    epochs[trial][-1] = last[trial] = 0.99
    cv = curves(live)
    assert not cv.duplicated(["trial_id", "epoch"]).any() and len(cv) == sum(map(len, epochs.values()))
    assert cv[cv["trial_id"] == trial]["unseen_accuracy"].iloc[-1] == 0.99  # the last delivery counts

    # Interrupted once, running again: its driver (a live process here) keeps runs.json.
    driver = live_process()
    record = {"runs": [100.0, 95.6], "driver": {**record_of(driver)["driver"], "deadline": time.time() + 5430}}  # search.time_limit's
    (live / "runs.json").write_text(json.dumps(record))
    try:
        assert main(["report", str(live)]) == 0
    finally:
        driver.kill()
        driver.wait()
    out = capsys.readouterr().out
    trained = sum(map(len, epochs.values()))
    assert f"no summary.json yet: the search is running (process {driver.pid} on {socket.gethostname()}, " in out
    assert "s ago); its time limit ends it in 1 h 30 min" in out
    assert f"{len(epochs)} of 5 trials so far, {trained} epochs trained in 3 min 16 s;" in out
    listed = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ")]
    assert listed == sorted(last, key=lambda t: -last[t])
    stopped = next(t["trial_id"] for t in summary["trials"] if t["status"] == "STOPPED")
    assert [line for line in out.splitlines() if "(stopped: nan_loss)" in line][0].startswith(f"  {stopped}:")
    assert sorted(p.name for p in (live / "report").iterdir()) == ["curves.png", "knobs.png"]

    # Its driver has died (the pid in runs.json is gone): interrupted.
    assert main(["report", str(live)]) == 0
    out = capsys.readouterr().out
    assert "no summary.json yet: the search was interrupted (or its driver died); `mixsearch run CONFIG " \
        "--resume` finishes it\n" in out
    # Its terminal closed (SIGHUP): the driver's last lines went to driver.log, and the report says where.
    (live / "driver.log").write_text("SIGHUP: ending the search as Ctrl-C does\n")
    assert main(["report", str(live)]) == 0
    assert "`mixsearch run CONFIG --resume` finishes it, and what its driver printed after its terminal " \
        "closed is in driver.log\n" in capsys.readouterr().out
    (live / "driver.log").unlink()

    # Just started: trial folders, nothing reported (and, from an older mixsearch, no runs.json).
    for log in live.glob("trial_*/result.json"):
        log.write_text("")
    (live / "runs.json").unlink()
    assert main(["report", str(live)]) == 0
    out = capsys.readouterr().out
    assert "no summary.json yet (the search is running, or was interrupted" in out
    assert "5 trials started, none has reported an epoch yet" in out


def watching(exp, tmp_path, interval: str, at_uri: bool = False):
    """(a copy of the experiment as it runs, its stand-in driver, `mixsearch report COPY --watch
    INTERVAL` started on it, its output piped); with ``at_uri``, the copy given by its file://
    URI (as results at s3:// are), copied down under tmp_path/cache."""
    live = tmp_path / "live"
    as_running(exp, live)
    driver = live_process()
    (live / "runs.json").write_text(json.dumps(record_of(driver)))
    watcher = subprocess.Popen([sys.executable, "-m", "search", "report", live.as_uri() if at_uri else str(live),
                                "--watch", interval], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "MIXSEARCH_CACHE": str(tmp_path / "cache")})
    return live, driver, watcher


@contextlib.contextmanager
def stopped_at_the_end(watcher, driver):
    """Whatever the test does, neither the watcher nor the stand-in driver outlives it."""
    try:
        yield
    finally:
        watcher.kill()
        driver.kill()
        driver.wait()


def driver_exits(watcher, driver) -> str:
    """The stand-in driver exits; what the watcher prints until it stops."""
    driver.kill()
    driver.wait()
    return watcher.communicate(timeout=60)[0]


@pytest.mark.parametrize("at_uri", [False, True], ids=["folder", "uri"])
@pytest.mark.parametrize("ends", ["finished", "interrupted"])
def test_watch_reports_again_while_the_search_runs_and_its_status_says_how_it_ended(experiment, tmp_path, capsys, ends,
                                                                                    at_uri):
    exp, summary, _ = experiment
    live, driver, watcher = watching(exp, tmp_path, "0.2", at_uri)
    with stopped_at_the_end(watcher, driver):
        out, waits = "", 0
        while waits < 2:  # two reports of it running, then the search ends, with its summary or without
            line = watcher.stdout.readline()
            assert line, out
            out += line
            waits += line.startswith("(again every")
        if ends == "finished":  # written whole (the driver writes it so), then the driver exits
            (live / "summary.tmp").write_text((exp / "summary.json").read_text())
            (live / "summary.tmp").rename(live / "summary.json")
        out += driver_exits(watcher, driver)
    code = watcher.returncode
    assert code == (0 if ends == "finished" else 1), out
    reports = out.split("\n--- ")  # not a terminal: each report under its time
    assert out.startswith("--- ") and len(reports) >= 3, out
    for report in reports[:2]:  # (a third may have read the search just as it ended)
        assert "no summary.json yet: the search is running" in report, report
    for report in reports[:-1]:
        assert report.rstrip().endswith("(again every 0.2 s while the search runs; Ctrl-C stops watching, not the search)")
    last = reports[-1]
    assert "again every" not in last
    if ends == "finished":
        assert f"best trial {summary['best']['trial_id']}: unseen_accuracy" in last
    else:
        assert "no summary.json yet: the search was interrupted (or its driver died)" in last
    if at_uri:  # each report from a copy brought up to date, named by the URI
        copy = tmp_path / "cache" / "file" / live.relative_to("/")
        for report in reports[:2]:
            assert f"{live.as_uri()}: no summary.json yet: the search is running" in report, report
        for report in reports:
            assert f"(a copy of {live.as_uri()} in {copy}, made at " in report, report
        assert (f"results: {live.as_uri()}/summary.json" if ends == "finished" else f"{live.as_uri()}: no summary") in last
        assert not list(copy.glob("*/checkpoint_*")) and list(live.glob("*/checkpoint_*"))  # weights stay behind
        return
    # Finished, it is reported once; the storage path beside it too, nothing in it running.
    for path in (live, tmp_path):
        assert main(["report", str(path), "--watch", "0.2"]) == (0 if ends == "finished" or path == tmp_path else 1)
        assert capsys.readouterr().out.count("--- ") == 1


def test_watching_a_uri_goes_on_from_the_last_copy_while_it_cannot_be_reached(experiment, tmp_path):
    exp, summary, _ = experiment
    live, driver, watcher = watching(exp, tmp_path, "0.2", at_uri=True)
    away = tmp_path / "away"
    with stopped_at_the_end(watcher, driver):
        out = ""
        for line in watcher.stdout:  # the first report is out: the store goes away for a while
            out += line
            if line.startswith("(again every"):
                live.rename(away)
                break
        for line in watcher.stdout:
            out += line
            if line.startswith("(could not copy it again: "):
                break
        away.rename(live)
        shutil.copy(exp / "summary.json", live)
        out += driver_exits(watcher, driver)
    assert watcher.returncode == 0, out
    assert f"(could not copy it again: {live.as_uri()}: no such folder; showing the copy of " in out
    assert f"best trial {summary['best']['trial_id']}" in out.split("\n--- ")[-1]


def test_ctrl_c_stops_watching_and_says_the_search_goes_on(experiment, tmp_path):
    _, driver, watcher = watching(experiment[0], tmp_path, "1")
    with stopped_at_the_end(watcher, driver):
        for line in watcher.stdout:  # the first report is out: it waits for the next
            if line.startswith("(again every 1 s"):
                break
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 130 and err.rstrip().endswith("\nstopped watching; the search goes on"), err
    assert "Traceback" not in err and "interrupted" not in err, err


def test_watch_takes_an_interval_as_a_duration(capsys):
    from search.cli import _parser

    assert _parser().parse_args(["report", "x", "--watch"]).watch == 30
    assert _parser().parse_args(["report", "x", "--watch", "2m"]).watch == 120
    assert _parser().parse_args(["report", "x"]).watch is None
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["report", "x", "--watch", "soon"])
    assert e.value.code == 2 and "'soon' is not a duration" in capsys.readouterr().err


def test_results_at_a_uri_are_reported_and_exported_from_a_copy_brought_up_to_date(experiment, tmp_path, capsys,
                                                                                      monkeypatch):
    # file:// goes through pyarrow's filesystem API as s3:// and gs:// do.
    from analysis.remote import default_copy, fetch

    monkeypatch.setenv("MIXSEARCH_CACHE", str(tmp_path / "cache"))
    exp, summary, _ = experiment
    remote = tmp_path / "bucket" / "results" / "t"
    epochs, _ = as_running(exp, remote)
    uri = remote.as_uri()
    copy = default_copy(uri)
    assert copy == tmp_path / "cache" / "file" / remote.relative_to("/")
    driver = live_process()
    (remote / "runs.json").write_text(json.dumps(record_of(driver)))
    try:
        assert main(["report", uri]) == 0
    finally:
        driver.kill()
        driver.wait()
    out = capsys.readouterr().out
    assert f"{uri}: no summary.json yet: the search is running (process {driver.pid} " in out
    assert f"{len(epochs)} of 5 trials so far" in out and f"(a copy of {uri} in {copy}, made at " in out
    assert sorted(p.name for p in (copy / "report").iterdir()) == ["curves.png", "knobs.png"]
    assert not list(copy.glob("*/checkpoint_*")) and list(remote.glob("*/checkpoint_*"))  # weights stay behind

    # Again: only what changed there is copied (a growing log), written whole into place.
    logs = sorted(remote.glob("trial_*/result.json"))
    before = {p: (copy / p.relative_to(remote)).stat().st_ino for p in logs}
    with logs[0].open("a") as f:
        f.write(json.dumps({**json.loads(logs[0].read_text().splitlines()[-1]), "unseen_accuracy": 0.99}) + "\n")
    assert fetch(uri) == copy
    assert [(copy / p.relative_to(remote)).read_text() for p in logs] == [p.read_text() for p in logs]
    assert [(copy / p.relative_to(remote)).stat().st_ino == before[p] for p in logs] == [False] + [True] * (len(logs) - 1)
    assert not list(copy.rglob(".*.part"))

    # Finished there: the summary, named by its URI; the storage path above it, listed.
    shutil.copy(exp / "summary.json", remote)
    assert main(["report", uri]) == 0
    out = capsys.readouterr().out
    assert f"best trial {summary['best']['trial_id']}" in out and f"results: {uri}/summary.json\n" in out
    assert main(["report", remote.parent.as_uri()]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{remote.parent.as_uri()}: 1 experiment ") and lines[1].split()[:2] == ["t", "finished"]

    # Export copies down the checkpoints of the trial it exports, and only those.
    best = summary["best"]
    assert main(["export", uri, str(tmp_path / "model")]) == 0
    assert f"trial {best['trial_id']}, epoch {best['training_iteration']} " in capsys.readouterr().out
    assert json.loads((tmp_path / "model" / "mixsearch.json").read_text())["trial_id"] == best["trial_id"]
    assert {p.parent.name for p in copy.glob("*/checkpoint_*")} == {f"trial_{best['trial_id']}"}
    assert main(["export", remote.parent.as_uri(), str(tmp_path / "model2")]) == 2
    assert f"a storage path; it holds the experiments t: pass one, e.g. {uri}\n" in capsys.readouterr().err


def test_a_uri_that_cannot_be_copied_down_is_one_line_and_a_copy_overwrites_nothing_else(experiment, tmp_path, capsys,
                                                                                        monkeypatch):
    from analysis.remote import fetch

    monkeypatch.setenv("MIXSEARCH_CACHE", str(tmp_path / "cache"))
    exp, _, _ = experiment
    (tmp_path / "empty").mkdir()
    for target, words in [("nosuch://bucket/results/t", "nosuch://bucket/results/t: cannot reach it (Unrecognized "),
                          ((tmp_path / "nope").as_uri(), f"{(tmp_path / 'nope').as_uri()}: no such folder"),
                          ((tmp_path / "empty").as_uri(),
                           f"{(tmp_path / 'empty').as_uri()}: neither an experiment nor a storage path of experiments")]:
        for verb in (["report", target], ["report", target, "--watch", "1"], ["export", target, str(tmp_path / "m")]):
            assert main(verb) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {words}") and err.count("\n") == 1, err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "m").exists()
    # A folder that is not its copy is left as it was.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a copy made by fetch"):
        fetch(exp.as_uri(), mine)
    assert [p.name for p in mine.iterdir()] == ["summary.json"] and (mine / "summary.json").read_text() == "mine"
    fetch(exp.as_uri(), tmp_path / "copy")
    with pytest.raises(ValueError, match=f"a copy of {exp.as_uri()}, not of {exp.parent.as_uri()}"):
        fetch(exp.parent.as_uri(), tmp_path / "copy")


def test_a_summary_without_its_trial_folders_is_still_reported(experiment, tmp_path, capsys):
    exp, summary, _ = experiment
    (tmp_path / "copy").mkdir()
    shutil.copy(exp / "summary.json", tmp_path / "copy")
    assert main(["report", str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert f"best trial {summary['best']['trial_id']}" in out
    # The copy's folder, not the one the search wrote (a copy synced from a cluster is elsewhere).
    assert f"results: {tmp_path / 'copy' / 'summary.json'}\n" in out and str(exp) not in out
    assert sorted(p.name for p in (tmp_path / "copy" / "report").iterdir()) == ["front.png"]


def test_what_is_not_an_experiment_is_one_line(experiment, tmp_path, capsys):
    exp, _, _ = experiment
    broken = tmp_path / "broken"
    shutil.copytree(exp, broken)
    (broken / "summary.json").write_text("{")
    (tmp_path / "empty").mkdir()
    for target, words in [(tmp_path / "nope", "no such folder"), (tmp_path / "empty", "not an experiment"),
                          (broken, f"{broken / 'summary.json'}: not a mixsearch summary")]:
        assert main(["report", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err
    # The notebook's readers, where Path() made "s3:/bucket/..." no such folder, say how to read one.
    with pytest.raises(ValueError, match=r"s3://bucket/results/t: a URI; .* analysis.remote.fetch\(URI\) makes"):
        progress("s3://bucket/results/t")
    (tmp_path / "afile").write_text("")
    assert main(["report", str(exp), "--out", str(tmp_path / "afile" / "plots")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'afile' / 'plots'}: cannot write the plots there (Not a directory)\n"


def test_the_storage_path_instead_of_an_experiment_is_named_as_such_everywhere(experiment, tmp_path, capsys):
    # A common slip: the folder above experiments. Reading its trial logs used to find none, so a
    # notebook's curves() and progress() came back empty without a word.
    from analysis.results import load_summary, trials

    exp, _, _ = experiment
    root = exp.parent
    hint = f"it holds the experiments {exp.name}: pass one, e.g. {exp}"
    # (`mixsearch report` lists them: below.) A folder with no experiment in it is named as such.
    assert main(["report", str(tmp_path)]) == 2
    assert "not an experiment (mixsearch run writes <storage_path>/<name>/)" in capsys.readouterr().err
    for read in (curves, progress, trials, load_summary):
        with pytest.raises(ValueError, match="not an experiment") as e:
            read(root)
        assert hint in str(e.value)
        with pytest.raises(FileNotFoundError, match="no such folder"):
            read(tmp_path / "nope")
    assert len(curves(exp)) > 0 and len(progress(exp)) == 5


def test_a_storage_path_is_reported_as_its_experiments_a_line_each(experiment, tmp_path, capsys):
    # It used to be refused ("not an experiment"), naming the experiments, and nothing more.
    from analysis.results import experiments

    exp, summary, _ = experiment
    root = tmp_path / "results"
    shutil.copytree(exp, root / "done")
    _, cut_last = as_running(exp, root / "cut")  # interrupted: its driver's record says it ended
    (root / "cut" / "runs.json").write_text(json.dumps({"runs": [75.0], "driver": None}))
    _, live_last = as_running(exp, root / "live")
    driver = live_process()
    (root / "live" / "runs.json").write_text(json.dumps(record_of(driver)))
    config = yaml.safe_load((root / "live" / "config.yaml").read_text())
    config["search"]["num_samples"] = 9  # more trials asked for than have reported
    (root / "live" / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "notes").mkdir()  # not an experiment: left out
    shutil.copytree(exp, root / "bad")
    (root / "bad" / "summary.json").write_text("{")  # listed as such, the others still read
    try:
        table = experiments(root).set_index("name")
        assert main(["report", str(root)]) == 0
    finally:
        driver.kill()
        driver.wait()
    out = capsys.readouterr().out
    assert list(table.index) == ["bad", "cut", "done", "live"]
    assert list(table["state"]) == ["unreadable", "interrupted", "finished", "running"]
    best = summary["best"]
    assert table.loc["done", "best_trial"] == best["trial_id"] and table.loc["done", "trials"] == 5
    assert table.loc["done", "best_unseen_accuracy"] == best["unseen_accuracy"]
    for name, last in (("cut", cut_last), ("live", live_last)):  # by the trials' last reported values
        top = max(last, key=last.get)
        assert table.loc[name, "best_trial"] == top and table.loc[name, "best_unseen_accuracy"] == last[top]
    assert table.loc["live", "asked"] == 9 and table.loc["cut", "seconds"] == 75.0
    lines = out.splitlines()
    assert lines[0] == f"{root}: 4 experiments (pass one to `mixsearch report` for its trials and plots)"
    assert lines[1].split() == ["bad", "unreadable", "its", "summary.json", "is", "not", "a", "mixsearch", "summary"]
    assert lines[2].split()[:3] == ["cut", "interrupted", "5"]
    assert f"5 trials, best so far {cut_last[max(cut_last, key=cut_last.get)]:.3f}" in lines[2] and lines[2].endswith(", 1 min 15 s")
    assert lines[3].split()[:2] == ["done", "finished"] and f"best {best['unseen_accuracy']:.3f} ({best['trial_id']})" in lines[3]
    assert lines[4].split()[:2] == ["live", "running"] and "5 of 9 trials, best so far" in lines[4]
    assert len(lines) == 5 and "notes" not in out
    assert not (root / "report").exists()  # no plots for a list


def test_the_notebook_runs_on_an_experiment(experiment, tmp_path):
    # In a real Jupyter kernel, as a user runs it: the figures must come out as images.
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    exp, summary, _ = experiment
    # As if the search ran in another folder: its pool_dir is relative to that one, not to the
    # notebook's (the last cell looked for the pool here, and failed).
    shutil.copytree(exp, tmp_path / "t")
    exp = tmp_path / "t"
    config = yaml.safe_load((exp / "config.yaml").read_text())
    config["corpus"]["pool_dir"] = "./mixsearch_pools"
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    root = Path(__file__).parents[1]
    nb = nbformat.read(root / "analysis" / "explore.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs for c in code)  # committed clean
    assert code[0].source.startswith("EXPERIMENT = ")
    code[0].source = f"EXPERIMENT = {str(exp)!r}"
    nb.cells.append(nbformat.v4.new_code_cell(
        'print(len(prog), len(curves_fig.axes[0].get_lines()), finished, df["unseen_accuracy"].iloc[0], '
        'len(items), items["answer"].map(type).eq(str).all())'))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    shown = {c.source.splitlines()[-1]: [o for o in c.outputs if o.output_type == "execute_result"] for c in code}
    assert "image/png" in shown["curves_fig"][0]["data"] and "image/png" in shown["knobs_fig"][0]["data"]
    assert "text/html" in shown["prog.head(10)"][0]["data"]  # a table
    beside = shown["experiments(Path(EXPERIMENT).parent)"][0]["data"]["text/plain"]  # only this one, finished
    assert [line.split()[:3] for line in beside.splitlines()[1:]] == [["0", "t", "finished"]], beside
    # At this size every result is 0: no proposals, and the cell says why rather than failing.
    said = next(out for line, out in shown.items() if line.startswith("proposals(EXPERIMENT)"))
    assert "not fit: every trial reported unseen_accuracy 0.000" in said[0]["data"]["text/plain"]
    n = len(summary["trials"])
    assert nb.cells[-1].outputs[0]["text"].split() == [str(n), str(n), "True", str(summary["best"]["unseen_accuracy"]),
                                                       "5", "True"]  # the best model's answers to 5 unseen items
    assert "text/html" in shown["items[[\"domain\", \"instruction\", \"input\", \"output\", \"answer\"]] if finished else \"not finished yet\""][0]["data"]


def test_a_trials_model_is_exported_for_transformers_and_scores_as_in_its_trial(experiment, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from analysis.model import answers, load_trained, prompt_ids, unseen_items
    from search.config import load_config
    from search.pool import pool_path
    from trainables.data import IGNORE, encode
    from trainables.evaluate import evaluate, generate_answers
    from trainables.train import eval_rows

    exp, summary, _ = experiment
    best = summary["best"]
    out = tmp_path / "models" / "best"
    assert main(["export", str(exp), str(out)]) == 0
    assert f"trial {best['trial_id']}, epoch {best['training_iteration']} " in capsys.readouterr().out
    info = json.loads((out / "mixsearch.json").read_text())
    assert (info["trial_id"], info["epoch"], info["config"]) == (best["trial_id"], best["training_iteration"], best["config"])
    assert info["per_domain"] == best["per_domain"] and info["bos"] and info["prompt"] == "{instruction}|{input}="
    assert info["base_model"] is None and info["lora"] is None  # the tiny model, trained whole

    # Loaded by transformers alone, it scores the unseen items as its trial did at that epoch.
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    cfg = load_config(exp / "config.yaml")
    rows = eval_rows(pool_path(cfg), cfg.training.eval_examples, cfg.seed)
    unseen = encode(rows, tok, cfg.model.max_length)
    scores = evaluate(model, tok, unseen, max_length=cfg.model.max_length)
    log = [json.loads(line) for line in (exp / f"trial_{best['trial_id']}" / "result.json").read_text().splitlines()]
    logged = next(r for r in log if r.get("epoch") == info["epoch"])
    assert scores["unseen_loss"] == pytest.approx(logged["unseen_loss"], rel=1e-4)
    assert scores["unseen_token_accuracy"] == pytest.approx(logged["unseen_token_accuracy"], abs=0.005)

    items = unseen_items(exp)  # the items the trials were scored on
    assert {k: list(items[k]) for k in ("domain", "instruction", "input", "output")} == {
        k: rows[k].to_pylist() for k in ("domain", "instruction", "input", "output")}

    # Prompts are built as prepare wrote the pool's rows, so answers() are those the evaluation scored.
    trained = load_trained(exp)
    assert prompt_ids(trained, rows["instruction"].to_pylist(), rows["input"].to_pylist()) == [
        ids[:int((labels == IGNORE).sum())].tolist() for ids, labels in zip(unseen.ids, unseen.labels)]
    few = rows.slice(0, 8)
    expected = generate_answers(model, tok, encode(few, tok, cfg.model.max_length), cfg.model.max_length, max_new_tokens=6)
    assert answers(trained, few["instruction"].to_pylist(), few["input"].to_pylist(), max_new_tokens=6) == expected

    # Nothing is overwritten; any trial can be named; a wrong name lists the trials.
    before = sorted(p.name for p in out.iterdir())
    assert main(["export", str(exp), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == before
    stopped = next(t for t in summary["trials"] if t["status"] == "STOPPED")  # NaN loss after epoch 1
    assert main(["export", str(exp), str(tmp_path / "stopped"), "--trial", stopped["trial_id"]]) == 0
    assert json.loads((tmp_path / "stopped" / "mixsearch.json").read_text())["epoch"] == 1
    assert main(["export", str(exp), str(tmp_path / "x"), "--trial", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no trial nope (its trials: " in err and all(t["trial_id"] in err for t in summary["trials"])
    assert main(["export", str(exp), str(tmp_path / "x"), "--model", str(tmp_path)]) == 2
    assert "the trials trained a tiny model" in capsys.readouterr().err  # --model replaces a pretrained one
    live = tmp_path / "live"
    shutil.copytree(exp, live)
    (live / "summary.json").unlink()
    assert main(["export", str(live), str(tmp_path / "y")]) == 2
    assert "no summary.json yet" in capsys.readouterr().err
    # Given the trial, a running search's model loads; a files corpus's prompts follow its template.
    config = yaml.safe_load((live / "config.yaml").read_text())
    config["corpus"] |= {"source": "files", "files": {"paths": ["a.jsonl"], "prompt": "Q: {instruction}\n{input}\nA: "}}
    (live / "config.yaml").write_text(yaml.safe_dump(config))
    assert prompt_ids(load_trained(live, best["trial_id"]), ["ab"], ["cd"]) == [
        [tok.bos_token_id, *tok("Q: ab\ncd\nA: ", add_special_tokens=False)["input_ids"]]]
    with pytest.raises(FileNotFoundError, match="the pool its trials read is not here .*`mixsearch prepare "):
        unseen_items(live)  # no summary naming it, and a config whose corpus file is not here
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left
