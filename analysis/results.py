"""Stage 6, report: load an experiment's results into pandas, for notebooks and scripts.

    from analysis.results import trials, curves, progress, front, proposals
    df = trials("mixsearch_results/default")      # one row per trial, weights flattened
    cv = curves("mixsearch_results/default")      # one row per (trial, epoch), with its config
    pg = progress("mixsearch_results/default")    # one row per trial so far (a running search too)
    pf = front("mixsearch_results/default")       # the Pareto front, with search.pareto set
    pr = proposals("mixsearch_results/default")   # the surrogate's predicted-best configs
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SUMMARY = "summary.json"
METRIC = "unseen_accuracy"
# Optuna's raw simplex draws: the normalized weights are what a trial trained on.
INTERNAL = {"simplex_u"}


def load_summary(experiment: str | Path) -> dict:
    """The experiment's ``summary.json`` as a dict."""
    path = Path(experiment) / SUMMARY
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
    twice (Tune delivers results at least once) keeps its last value."""
    return _logs(experiment)[0]


def progress(experiment: str | Path) -> pd.DataFrame:
    """One row per trial so far, best first: epochs reported, last and best ``unseen_accuracy``,
    and the config. Read from the trial logs, so it works on a running or interrupted search,
    before ``summary.json`` is written."""
    cv, knobs = _logs(experiment)
    if cv.empty:
        return pd.DataFrame(columns=["trial_id", "epochs", "unseen_accuracy", "best_unseen_accuracy"])
    by_trial = cv.sort_values("epoch").groupby("trial_id", sort=False)
    last = by_trial.tail(1).set_index("trial_id")
    out = pd.DataFrame({"epochs": last["epoch"].astype(int), "unseen_accuracy": last[METRIC],
                        "best_unseen_accuracy": by_trial[METRIC].max()}).join(last[knobs])
    return out.reset_index().sort_values(METRIC, ascending=False, na_position="last", ignore_index=True)


def _logs(experiment: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(one row per trial and epoch, the names of the config's columns in it)."""
    rows, knobs = [], {}
    for log in sorted(Path(experiment).glob("*/result.json")):
        for line in log.read_text().splitlines():
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # the last line of a trial still writing it
                continue
            config = _flat({k: v for k, v in r.get("config", {}).items() if k not in INTERNAL})
            knobs.update(dict.fromkeys(config))
            metrics = {k: v for k, v in r.items() if not isinstance(v, dict)}
            rows.append(metrics | config | {"trial_dir": log.parent.name})
    df = pd.DataFrame(rows)
    if df.empty:
        return df, []
    return df.drop_duplicates(["trial_id", "epoch"], keep="last").reset_index(drop=True), list(knobs)


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
