"""Stage 6, report: load an experiment's results into pandas, for notebooks and scripts.

    from analysis.results import trials, curves
    df = trials("mixsearch_results/default")      # one row per trial, weights flattened
    cv = curves("mixsearch_results/default")      # one row per (trial, epoch)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SUMMARY = "summary.json"


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
        row = {k: t[k] for k in ("trial_id", "status", "unseen_accuracy", "training_iteration")}
        for key, value in t["config"].items():
            if isinstance(value, dict):
                row.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                row[key] = value
        row.update({f"unseen_accuracy/{d}": v for d, v in t["per_domain"].items()})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("unseen_accuracy", ascending=False, na_position="last")


def curves(experiment: str | Path) -> pd.DataFrame:
    """Every reported epoch of every trial, read from Tune's per-trial ``result.json`` logs."""
    rows = []
    for log in sorted(Path(experiment).glob("*/result.json")):
        for line in log.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.append({k: v for k, v in r.items() if not isinstance(v, dict)} | {"trial_dir": log.parent.name})
    return pd.DataFrame(rows)
