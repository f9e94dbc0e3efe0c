"""Stage 6, report: load an experiment's results into pandas, for notebooks and scripts.

    from analysis.results import trials, curves, front, proposals
    df = trials("mixsearch_results/default")      # one row per trial, weights flattened
    cv = curves("mixsearch_results/default")      # one row per (trial, epoch)
    pf = front("mixsearch_results/default")       # the Pareto front, with search.pareto set
    pr = proposals("mixsearch_results/default")   # the surrogate's predicted-best configs
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
        row = {k: t[k] for k in ("trial_id", "status", "unseen_accuracy", "training_iteration")} | _flat(t["config"])
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
