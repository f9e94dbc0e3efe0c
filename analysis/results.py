"""Stage 6, report: load an experiment's results into pandas, for notebooks and scripts.

    from analysis.results import trials, curves, progress, front, proposals
    df = trials("mixsearch_results/default")      # one row per trial, weights flattened
    cv = curves("mixsearch_results/default")      # one row per (trial, epoch), with its config
    pg = progress("mixsearch_results/default")    # one row per trial so far (a running search too)
    pf = front("mixsearch_results/default")       # the Pareto front, with search.pareto set
    pr = proposals("mixsearch_results/default")   # the surrogate's predicted-best configs
    ex = experiments("mixsearch_results")         # one row per experiment of a storage path
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

SUMMARY = "summary.json"
METRIC = "unseen_accuracy"
# Optuna's raw simplex draws: the normalized weights are what a trial trained on.
INTERNAL = {"simplex_u"}


def _local_folder(path: str | Path) -> Path:
    """``path`` as a Path, once it is known to be a local folder. Raises FileNotFoundError for a
    missing one, ValueError for a URI (a cluster's storage: ``analysis.remote.fetch`` copies it
    down) or an empty path."""
    from search.config import is_uri, not_empty

    not_empty(str(path))  # "" would read the working directory
    if is_uri(str(path)):  # Path() would fold "s3://b/x" into "s3:/b/x", "no such folder"
        raise ValueError(f"{path}: a URI; notebooks read a local folder: analysis.remote.fetch(URI) makes "
                         "an up-to-date copy and returns its folder (`mixsearch report` and export fetch it)")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    return Path(path)


def _is_experiment(folder: Path) -> bool:
    return (folder / SUMMARY).exists() or (folder / "tuner.pkl").exists()


def _experiments_in(folder: Path) -> list[Path]:
    """The experiments directly inside a folder (a storage path), by name."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and _is_experiment(p)), key=lambda p: p.name)


def experiment_folder(experiment: str | Path) -> Path:
    """``experiment`` as a Path, once it is known to be an experiment's folder: one with a
    ``summary.json`` or Tune's ``tuner.pkl``. Raises FileNotFoundError for a missing folder and
    ValueError for another one (the storage path above experiments, say: they are named), where
    reading the trial logs would quietly find none; ValueError too for a URI (an experiment on a
    cluster's storage), which ``analysis.remote.fetch`` copies down, and for an empty path."""
    exp = _local_folder(experiment)
    if not _is_experiment(exp):
        inside = [p.name for p in _experiments_in(exp)]
        hint = (f"it holds the experiments {', '.join(inside)}: pass one, e.g. {exp / inside[0]}" if inside
                else "mixsearch run writes <storage_path>/<name>/")
        raise ValueError(f"{experiment}: neither a {SUMMARY} nor Tune's tuner.pkl; not an experiment ({hint})")
    return exp


def is_storage_path(path: str | Path) -> bool:
    """Whether ``path`` is a local folder that holds experiments rather than being one."""
    try:
        folder = _local_folder(path)
    except (ValueError, FileNotFoundError):
        return False
    return not _is_experiment(folder) and bool(_experiments_in(folder))


def run_record(experiment: str | Path) -> tuple[list[float], dict | None]:
    """The driver's ``runs.json``: (the seconds of each run so far, the driver running it or None)."""
    import pyarrow.fs as pafs

    from search.driver import RUNS, read_runs

    return read_runs(pafs.LocalFileSystem(), str(Path(experiment).absolute() / RUNS))


def trials_asked(experiment: str | Path) -> int | None:
    """The trials a TPE search asked for, from the config it started with (a grid's are not counted)."""
    try:
        search = (yaml.safe_load((Path(experiment) / "config.yaml").read_text()) or {}).get("search") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return search.get("num_samples") if search.get("algorithm", "tpe") == "tpe" else None


def _unfinished_state(runs: list[float], driver: dict | None) -> str:
    from search.driver import live_driver

    return "running" if live_driver(driver) else "interrupted" if runs else "unknown"


def state(experiment: str | Path) -> str:
    """Where an experiment stands: finished (it has its summary), running (its driver is alive),
    interrupted (a run ended unfinished, or its driver died), or unknown (no driver's record: a
    search of an older mixsearch)."""
    if (Path(experiment) / SUMMARY).exists():
        return "finished"
    return _unfinished_state(*run_record(experiment))


def experiment_folders(storage_path: str | Path) -> list[Path]:
    """The experiments of a storage path (each ``<storage_path>/<name>/``), by name."""
    return _experiments_in(_local_folder(storage_path))


def experiments(storage_path: str | Path) -> pd.DataFrame:
    """One row per experiment in a storage path (``mixsearch run`` writes
    ``<storage_path>/<name>/``), by name: its ``state`` (finished, running, interrupted; unknown
    for a search of an older mixsearch without a summary; unreadable for a summary.json that is
    not one), the ``trials`` that reported so far and those ``asked`` for, the
    ``best_unseen_accuracy`` and its ``best_trial`` (for an unfinished search, by the trials'
    last reported values), and the ``seconds`` its runs took."""
    rows = []
    for exp in experiment_folders(storage_path):
        row = {"name": exp.name}
        if (exp / SUMMARY).exists():  # it has every figure: no need for the logs, runs.json or config
            try:
                summary = json.loads((exp / SUMMARY).read_text())
                best = summary.get("best") or {}
                row |= {"state": "finished", "trials": summary["num_trials"], "asked": summary["num_trials"],
                        "best_unseen_accuracy": best.get(METRIC), "best_trial": best.get("trial_id"),
                        "seconds": summary.get("wall_seconds")}
            except (json.JSONDecodeError, KeyError, AttributeError):  # one bad folder must not hide the rest
                row["state"] = "unreadable"
        else:
            runs, driver = run_record(exp)
            prog = progress(exp)
            top = prog.iloc[0] if not prog.empty else {}
            row |= {"state": _unfinished_state(runs, driver),
                    "trials": len(prog), "asked": trials_asked(exp), "best_unseen_accuracy": top.get(METRIC),
                    "best_trial": top.get("trial_id"), "seconds": sum(runs) or None}
        rows.append(row)
    columns = ["name", "state", "trials", "asked", "best_unseen_accuracy", "best_trial", "seconds"]
    # Nullable integers: an unreadable experiment's missing counts would make them floats.
    return pd.DataFrame(rows, columns=columns).astype({"trials": "Int64", "asked": "Int64"})


def load_summary(experiment: str | Path) -> dict:
    """The experiment's ``summary.json`` as a dict."""
    path = experiment_folder(experiment) / SUMMARY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no summary; has the experiment finished (or been resumed)?") from None


def trials(experiment: str | Path) -> pd.DataFrame:
    """One row per trial: status, unseen accuracy (overall and per domain), config knobs."""
    rows = []
    for t in load_summary(experiment)["trials"]:
        row = {k: t[k] for k in ("trial_id", "status", "unseen_accuracy", "training_iteration")} | _flat(t["config"])
        row.update({f"unseen_accuracy/{d}": v for d, v in t["per_domain"].items()})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("unseen_accuracy", ascending=False, na_position="last")


def curves(experiment: str | Path) -> pd.DataFrame:
    """Every reported epoch of every trial, with its config (flattened as in ``trials``), read
    from Tune's per-trial ``result.json`` logs: readable while the search runs. An epoch reported
    twice (Tune delivers results at least once) keeps its last value; the final report of a trial
    stopped by a NaN loss or lack of memory has no epoch and is left out (``progress`` shows it)."""
    logs, _ = _logs(experiment)
    if logs.empty:
        return logs
    cv = logs[logs["epoch"].notna()]
    return cv.astype({"epoch": int}).reset_index(drop=True)


def progress(experiment: str | Path) -> pd.DataFrame:
    """One row per trial so far, best first: epochs trained, last and best ``unseen_accuracy``,
    why it was stopped (``stopped``: ``nan_loss``, ``out_of_memory``; missing otherwise) and the
    config. Read from the trial logs, so it works on a running or interrupted search, before
    ``summary.json`` is written."""
    logs, knobs = _logs(experiment)
    if logs.empty:
        return pd.DataFrame(columns=["trial_id", "epochs", METRIC, "best_unseen_accuracy", "stopped"])
    # A trial's last word: the report that stopped it (it has no epoch), else its latest epoch.
    in_order = logs.assign(_at=logs["epoch"].fillna(math.inf)).sort_values("_at", kind="stable")
    by_trial = in_order.groupby("trial_id", sort=False)
    last = by_trial.tail(1).set_index("trial_id")
    out = pd.DataFrame({
        "epochs": by_trial["epoch"].max().fillna(0).astype(int),
        METRIC: last[METRIC],
        "best_unseen_accuracy": logs[logs["epoch"].notna()].groupby("trial_id")[METRIC].max(),
        "stopped": last["stopped"] if "stopped" in last else None,
    }).join(last[knobs])
    return out.reset_index().sort_values(METRIC, ascending=False, na_position="last", ignore_index=True)


def log_rows(log: Path) -> list[dict]:
    """A trial's reports from Tune's ``result.json``, in the order written (none if it is absent)."""
    rows = []
    for line in (log.read_text().splitlines() if log.exists() else []):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a trial still writing it
            continue
    return rows


def _logs(experiment: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(every trial's reports in the order written, the names of the config's columns)."""
    rows, knobs = [], {}
    for log in sorted(experiment_folder(experiment).glob("*/result.json")):
        for r in log_rows(log):
            config = _flat({k: v for k, v in r.get("config", {}).items() if k not in INTERNAL})
            knobs.update(dict.fromkeys(config))
            metrics = {k: v for k, v in r.items() if not isinstance(v, dict)}
            rows.append({"epoch": None} | metrics | config | {"trial_dir": log.parent.name})
    df = pd.DataFrame(rows)
    if df.empty:
        return df, []
    df["epoch"] = df["epoch"].astype(float)
    # A repeated epoch (a trial restored from a checkpoint reports it again) keeps its last delivery.
    repeated = df["epoch"].notna() & df.duplicated(["trial_id", "epoch"], keep="last")
    return df[~repeated].reset_index(drop=True), list(knobs)


def _flat(config: dict) -> dict:
    out = {}
    for key, value in config.items():
        out.update({f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value})
    return out


def front(experiment: str | Path) -> pd.DataFrame:
    """The Pareto front of unseen accuracy against the searched cost, by rising cost."""
    pareto = load_summary(experiment).get("pareto")
    if not pareto:
        raise ValueError(f"{experiment}: not a Pareto search (set search.pareto: budget or compute)")
    return pd.DataFrame([{k: v for k, v in p.items() if k != "config"} | _flat(p["config"]) for p in pareto["front"]])


def proposals(experiment: str | Path) -> pd.DataFrame:
    """The surrogate's proposals, best first, with its cross-validated rank correlation."""
    sur = load_summary(experiment).get("surrogate") or {}
    if "proposals" not in sur:
        raise ValueError(f"{experiment}: no surrogate proposals ({sur.get('error', 'none fitted')})")
    return pd.DataFrame([{"predicted_unseen_accuracy": p["predicted_unseen_accuracy"], "predicted_std": p["predicted_std"],
                          "cv_rank_correlation": sur["cv_rank_correlation"]} | _flat(p["config"])
                         for p in sur["proposals"]])
