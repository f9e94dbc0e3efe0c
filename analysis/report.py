"""Stage 6, report: what a search found, or has found so far, as text and plots.

``mixsearch report EXPERIMENT`` prints it and writes the plots under ``EXPERIMENT/report/``. A
finished experiment is reported from its ``summary.json``; a running or interrupted one from
Tune's trial logs, so the command also watches a search live from another terminal.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import plots
from analysis.results import (SUMMARY, curves, experiment_folder, experiments, front, is_storage_path, load_summary,
                              progress, run_record, trials_asked)


class ReportError(ValueError):
    """Not an experiment that can be reported; the message says which path and why."""


def _fmt(value: Any) -> str:
    # Four significant digits: a learning rate of 0.006745976595189632 reads as 0.006746.
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _config_lines(config: dict) -> list[str]:
    return [f"  {k}: {_fmt(v)}" for k, v in config.items()]


def _failure_lines(trials: list[dict], shown: int = 3) -> list[str]:
    """Why trials failed (ERROR) or were stopped (NaN loss, out of memory), one line per reason:
    a search whose trials all fail the same way says why once, not once per trial."""
    groups: dict[tuple[str, str], list[str]] = {}
    for t in trials:
        if t.get("status") in ("ERROR", "STOPPED"):
            reason = next((r for r in (t.get("reason") or "").splitlines() if r.strip()), "no reason recorded")
            groups.setdefault((t["status"], reason), []).append(t["trial_id"])
    lines = []
    for (status, reason), ids in groups.items():
        which = ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
        verb = "failed" if status == "ERROR" else "stopped"
        lines.append(f"{len(ids)} {'trial' if len(ids) == 1 else 'trials'} {verb} ({which}): {reason[:300]}")
    return lines


def _tie_lines(trials: list[dict]) -> list[str]:
    """A warning when every ranked trial scored the same: "best" is then only the first of a tie.
    Typical of a first run that learned nothing, or of exact match on free-text answers."""
    ranked = [t for t in trials if t.get("unseen_accuracy") is not None and t.get("status") not in ("STOPPED", "ERROR")]
    values = {t["unseen_accuracy"] for t in ranked}
    if len(ranked) < 2 or len(values) != 1:
        return []
    value = values.pop()
    who = f"all {len(ranked)} trials" if len(ranked) == len(trials) else f"the {len(ranked)} trials with a result all"
    why = ("train longer (training.epochs), on more examples (budget) or faster (learning_rate), or, for "
           "free-text answers, score partial matches (training.metric: rouge_l)") if value == 0 else \
          "a larger evaluation (training.eval_examples) or a harder unseen split tells mixtures apart"
    return [f"warning: {who} scored {value:.3f}, so this one is no better than the others: {why}"]


def _where(summary: dict, folder: str | Path | None) -> str:
    """The experiment's folder or URI as shown: ``folder`` when given, else where the search wrote it."""
    from search.config import is_uri

    if folder is None:
        return summary["experiment_path"]
    return str(folder).rstrip("/") if is_uri(str(folder)) else str(Path(folder))  # Path folds s3:// to s3:/


def summary_text(summary: dict, folder: str | Path | None = None) -> str:
    """The finished search in a few lines: the best trial, the Pareto front, the surrogate's
    proposal, where the results are (what ``mixsearch run`` prints at its end): in ``folder``
    when given (a copy read elsewhere), else where the search wrote them."""
    runs = summary.get("run_seconds") or []  # more than one when the experiment was resumed
    lines = [f"{summary['num_trials']} trials in {summary['wall_seconds']:.0f}s"
             + (f" ({', '.join(f'{n} {s.lower()}' for s, n in summary['counts'].items())})"
                if summary.get("counts") else "")
             + (f", over {len(runs)} runs (--resume): {', '.join(f'{t:.0f}s' for t in runs)}" if len(runs) > 1 else "")]
    if summary.get("out_of_time"):
        from search.config import duration_text

        where = _where(summary, folder)
        counts = summary.get("counts") or {}
        cut = [f"{n} {'trial' if n == 1 else 'trials'} {what}" for n, what in
               ((counts.get("OUT_OF_TIME", 0), "cut short (out_of_time)"), (counts.get("PENDING", 0), "never started")) if n]
        lines.append(f"the time limit ({duration_text(summary['time_limit'])}) ended the search"
                     + (f": {', '.join(cut)}" if cut else "")
                     + f"; to search on, start a new experiment with --start-from {where}")
    best = summary.get("best")
    if best:
        # Each domain's accuracy too: abilities grow at their own pace, and a mean hides which lags.
        per = best.get("per_domain") or {}
        by_domain = f" ({', '.join(f'{d} {v:.3f}' for d, v in per.items())})" if len(per) > 1 else ""
        lines.append(f"best trial {best['trial_id']}: unseen_accuracy {best['unseen_accuracy']:.3f}{by_domain}")
        lines += _config_lines(best["config"])
        lines += _tie_lines(summary.get("trials") or [])
    else:
        lines.append("no trial reported an unseen_accuracy")
    lines += _failure_lines(summary.get("trials") or [])
    pareto = summary.get("pareto")
    if pareto:
        lines.append(f"pareto front (unseen accuracy against {pareto['against']}):")
        lines += [f"  {p['trial_id']}: {p['unseen_accuracy']:.3f} at {p[pareto['against']]:g}"
                  for p in pareto["front"]]
    sur = summary.get("surrogate") or {}
    if "proposal" in sur:
        prop = sur["proposal"]
        lines.append(
            f"surrogate (cross-validated rank correlation {sur['cv_rank_correlation']:.2f} over the last "
            f"results of {sur['trials']} trials, {sur['finished_trials']} run to the end) proposes, "
            f"near those, predicting {prop['predicted_unseen_accuracy']:.3f} +- {prop['predicted_std']:.3f}:")
        lines += _config_lines(prop["config"])
    elif sur:
        lines.append(f"surrogate: {sur.get('error')}")
    lines.append(f"results: {_where(summary, folder)}/{SUMMARY}")
    return "\n".join(lines)


def _unfinished(experiment: str | Path, runs: list[float], driver: dict | None, shown: str | Path | None = None) -> str:
    """Why there is no summary yet: the driver's record (``run_record``) says whether it still runs.
    ``shown`` names the experiment in the text (by default ``experiment``, the folder read)."""
    from search.driver import driver_text, live_driver

    name = shown if shown is not None else experiment
    if live_driver(driver):
        ends = ""
        if driver.get("deadline") is not None:
            from search.config import duration_text

            ends = f"; its time limit ends it in {duration_text(max(0.0, driver['deadline'] - time.time()))}"
        return f"{name}: no {SUMMARY} yet: the search is running ({driver_text(driver)}){ends}"
    resume = "`mixsearch run CONFIG --resume` finishes it"
    if runs:
        # Written by a driver whose terminal closed (SIGHUP): its last lines could be shown nowhere else.
        hangup = ", and what its driver printed after its terminal closed is in driver.log" \
            if (Path(experiment) / "driver.log").exists() else ""
        return f"{name}: no {SUMMARY} yet: the search was interrupted (or its driver died); {resume}{hangup}"
    return f"{name}: no {SUMMARY} yet (the search is running, or was interrupted: {resume})"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def progress_text(experiment: str | Path, prog: pd.DataFrame, top: int = 5, shown: str | Path | None = None) -> str:
    """A search without a summary yet (running, or interrupted), from its ``progress()``: trials
    (of those asked) and epochs so far, the time spent, and the best trials by their last
    reported ``unseen_accuracy``; ``shown`` names it (by default ``experiment``)."""
    runs, driver = run_record(experiment)
    asked, spent = trials_asked(experiment), sum(runs)
    lines = [_unfinished(experiment, runs, driver, shown),
             f"{len(prog)}{f' of {asked}' if asked else ''} trials so far, {int(prog['epochs'].sum())} epochs "
             f"trained{f' in {_duration(spent)}' if spent else ''}; best by their last reported unseen_accuracy:"]
    knobs = plots.searched_knobs(prog)
    for _, row in prog.head(top).iterrows():
        why = f" (stopped: {row['stopped']})" if isinstance(row["stopped"], str) else ""
        lines.append(f"  {row['trial_id']}: {row['unseen_accuracy']:.3f} after {row['epochs']} epochs{why}  "
                     f"{_fmt({k: row[k] for k in knobs})}")
    return "\n".join(lines)


def experiments_text(storage_path: str | Path, table: pd.DataFrame) -> str:
    """A storage path's experiments (``experiments``), a line each: name, state, trials, the
    best unseen_accuracy and its trial, the time its runs took."""
    lines = [f"{storage_path}: {len(table)} experiment{'s' if len(table) != 1 else ''} (pass one to "
             "`mixsearch report` for its trials and plots)"]
    width = max(len(n) for n in table["name"])
    for _, e in table.iterrows():
        if e["state"] == "unreadable":
            lines.append(f"  {e['name']:<{width}}  unreadable   its {SUMMARY} is not a mixsearch summary")
            continue
        asked = e["asked"] if pd.notna(e["asked"]) and e["asked"] != e["trials"] else None
        trials = f"{e['trials']}{f' of {asked}' if asked is not None else ''} trials"
        so_far = " so far" if e["state"] != "finished" else ""
        best = "no result yet" if pd.isna(e["best_unseen_accuracy"]) else \
            f"best{so_far} {e['best_unseen_accuracy']:.3f} ({e['best_trial']})"
        took = f", {_duration(e['seconds'])}" if pd.notna(e["seconds"]) else ""
        lines.append(f"  {e['name']:<{width}}  {e['state']:<11}  {trials}, {best}{took}")
    return "\n".join(lines)


def report(experiment: str | Path, out: str | Path | None = None,
           shown: str | None = None) -> tuple[str, list[Path]]:
    """(the text to print, the plots written) for an experiment folder: ``curves.png`` and
    ``knobs.png`` from the trial logs (where there are any) and, for a finished Pareto search,
    ``front.png``, under ``out``, by default ``<experiment>/report/``. For a storage path (a
    folder of experiments), a line per experiment and no plots. ``shown`` names the experiment in
    the text, by default ``experiment`` (the URI of a copy made by ``analysis.remote.fetch``)."""
    shown = shown if shown is not None else experiment
    if is_storage_path(experiment):
        return experiments_text(shown, experiments(experiment)), []
    try:
        exp = experiment_folder(experiment)
    except (FileNotFoundError, ValueError) as e:
        raise ReportError(str(e)) from None
    finished = (exp / SUMMARY).exists()
    prog = progress(exp)
    if not finished and prog.empty:
        started = len(list(exp.glob("trial_*")))
        return f"{_unfinished(experiment, *run_record(experiment), shown)}\n{started} trials started, none has reported an epoch yet", []
    try:
        summary = load_summary(exp) if finished else None
        # The folder read, not the summary's experiment_path: a copy synced from a cluster is elsewhere.
        text = summary_text(summary, shown) if finished else progress_text(experiment, prog, shown=shown)
    except (json.JSONDecodeError, KeyError) as e:
        raise ReportError(f"{exp / SUMMARY}: not a mixsearch summary ({type(e).__name__}: {e})") from None

    figures = {}
    if not prog.empty:  # a summary.json copied without its trial folders has none
        figures = {"curves.png": plots.curves_figure(curves(exp)), "knobs.png": plots.knobs_figure(prog)}
    if summary and summary.get("pareto"):
        figures["front.png"] = plots.front_figure(front(exp), summary["pareto"]["against"])
    out = Path(out) if out is not None else exp / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"{out}: cannot write the plots there ({e.strerror or e})") from None
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=120)
    return text, [out / name for name in figures]
