"""The report stage: `mixsearch report`, its plots and the notebook, on a real (small) search,
finished and as a running one looks (trial logs, no summary yet)."""

import contextlib
import io
import json
import shutil

import pytest
import ray

from analysis import plots
from analysis.results import curves, progress
from search.cli import main
from tests.conftest import write_config

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """(a finished 4-trial Pareto search's folder, its summary, what `mixsearch run` printed)."""
    tmp = tmp_path_factory.mktemp("report")
    path = write_config(tmp, {"search": {"num_samples": 4, "pareto": "compute"}})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", str(path)]) == 0
    ray.shutdown()
    exp = tmp / "results" / "t"
    return exp, json.loads((exp / "summary.json").read_text()), printed.getvalue()


def as_running(exp, dst):
    """A copy of the experiment as it looks mid-search (no summary.json), its accuracies replaced
    by distinct known values (at this size every trial's is 0): trial i scores (i + 1) / 10 plus
    epoch / 100, except that the first trial's last epoch falls back (its best is not its last).
    Returns {trial_id: [value of each epoch]}."""
    shutil.copytree(exp, dst)
    (dst / "summary.json").unlink()
    expected = {}
    for i, log in enumerate(sorted(dst.glob("trial_*/result.json"))):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        for r in rows:
            r["unseen_accuracy"] = (i + 1) / 10 + r["epoch"] / 100
        if i == 0 and len(rows) > 1:
            rows[-1]["unseen_accuracy"] = 0.01
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))
        expected[rows[0]["trial_id"]] = [r["unseen_accuracy"] for r in rows]
    return expected


def test_report_of_a_finished_search_prints_what_run_printed_and_writes_plots(experiment, tmp_path, capsys):
    exp, summary, printed = experiment
    assert main(["report", str(exp), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    text = out[:out.index("plots: ")].strip()
    assert text in printed  # the same block as at the end of the run
    best = summary["best"]
    assert f"best trial {best['trial_id']}: unseen_accuracy {best['unseen_accuracy']:.3f}" in text
    assert f"  learning_rate: {best['config']['learning_rate']:.4g}\n" in text  # rounded for reading
    assert "pareto front (unseen accuracy against compute):" in text and "surrogate (cross-validated" in text
    for name in ("curves.png", "knobs.png", "front.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == PNG
    assert not (exp / "report").exists()  # --out was given


def test_progress_and_plots_hold_every_trials_results(experiment, tmp_path):
    exp, summary, _ = experiment
    trials = {t["trial_id"]: t for t in summary["trials"]}
    live = tmp_path / "live"
    expected = as_running(exp, live)
    prog = progress(live)
    assert list(prog["trial_id"]) == sorted(expected, key=lambda t: -expected[t][-1])  # best last value first
    for _, row in prog.iterrows():
        t, values = trials[row["trial_id"]], expected[row["trial_id"]]
        assert row["epochs"] == t["training_iteration"] == len(values)
        assert row["unseen_accuracy"] == values[-1] and row["best_unseen_accuracy"] == max(values)
        assert row["num_instructions"] == t["config"]["num_instructions"]
        assert row["weights.random"] == pytest.approx(t["config"]["weights"]["random"])
    assert "simplex_u.random" not in prog  # Optuna's raw draws are not the trial's config

    lines = plots.curves_figure(curves(live)).axes[0].get_lines()
    assert sorted(ln.get_label().split()[0] for ln in lines) == sorted(expected)
    for ln in lines:
        values = expected[ln.get_label().split()[0]]
        assert list(ln.get_ydata()) == values and list(ln.get_xdata()) == list(range(1, len(values) + 1))
    best = max(expected, key=lambda t: expected[t][-1])
    assert [ln.get_label() for ln in lines if ln.get_color() == "black"] == [f"{best} (best)"]

    knobs = plots.searched_knobs(prog)
    assert "num_instructions" in knobs and "learning_rate" in knobs and "budget" not in knobs  # budget is fixed
    fig = plots.knobs_figure(prog)
    assert len(fig.axes) == len(knobs)
    full = {t for t, v in expected.items() if len(v) == max(map(len, expected.values()))}
    for ax, knob in zip(fig.axes, knobs):
        filled, hollow = ax.collections  # ran to the end, stopped early
        assert sorted(filled.get_offsets()[:, 1]) == sorted(expected[t][-1] for t in full)
        assert len(filled.get_offsets()) + len(hollow.get_offsets()) == len(expected)


def test_a_running_search_is_reported_from_its_trial_logs(experiment, tmp_path, capsys):
    exp, summary, _ = experiment
    live = tmp_path / "live"
    expected = as_running(exp, live)
    # Tune delivers results at least once, and a trial may be writing its log right now.
    log = next(live.glob("trial_*/result.json"))
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines + [lines[0], lines[0][:40]]) + "\n")
    cv = curves(live)
    assert not cv.duplicated(["trial_id", "epoch"]).any() and len(cv) == sum(map(len, expected.values()))

    assert main(["report", str(live)]) == 0
    out = capsys.readouterr().out
    epochs = sum(map(len, expected.values()))
    assert "no summary.json yet" in out and f"{len(expected)} trials so far, {epochs} epochs trained" in out
    listed = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ")]
    assert listed == sorted(expected, key=lambda t: -expected[t][-1])
    assert sorted(p.name for p in (live / "report").iterdir()) == ["curves.png", "knobs.png"]

    # Just started: trial folders, nothing reported.
    for log in live.glob("trial_*/result.json"):
        log.write_text("")
    assert main(["report", str(live)]) == 0
    assert "4 trials started, none has reported an epoch yet" in capsys.readouterr().out


def test_what_is_not_an_experiment_is_one_line(experiment, tmp_path, capsys):
    exp, _, _ = experiment
    broken = tmp_path / "broken"
    shutil.copytree(exp, broken)
    (broken / "summary.json").write_text("{")
    for target, words in [(tmp_path / "nope", "no such folder"), (tmp_path, "not an experiment"),
                          ("s3://bucket/results/t", "report reads a local folder"),
                          (broken, f"{broken / 'summary.json'}: not a mixsearch summary")]:
        assert main(["report", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err


def test_the_notebook_runs_on_an_experiment(experiment):
    from pathlib import Path

    exp, summary, _ = experiment
    nb = json.loads((Path(__file__).parents[1] / "analysis" / "explore.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] for c in nb["cells"] if c["cell_type"] == "code")  # committed clean
    assert cells[0].startswith("EXPERIMENT = ")
    ns: dict = {}
    exec(f"EXPERIMENT = {str(exp)!r}", ns)
    for cell in cells[1:]:
        exec(cell, ns)
    assert len(ns["prog"]) == len(summary["trials"]) and ns["finished"]
    assert len(ns["curves_fig"].axes[0].get_lines()) == len(summary["trials"])
    assert ns["df"]["unseen_accuracy"].iloc[0] == summary["best"]["unseen_accuracy"]
