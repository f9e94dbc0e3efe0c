"""How far to trust the surrogate of a search summary: its rank correlation and its proposals.

Two measurements:

1. ``table`` (the default): on the committed curves of ``search_efficiency_table.json`` (60
   configurations, 8 epochs), each seed takes 12 configurations in random order (the default
   search's size) and cuts their curves where ASHA's rule would have stopped them (grace period,
   reduction factor and ``stop_by`` of ``search/default.yaml``), then fits the surrogate to what is left, as the
   driver does after a search. It compares the cross-validated rank correlation the summary
   would report with the true one: the Spearman correlation between the fit's predicted final
   values of all 60 configurations and their final values in the table. Medians and quartiles
   over seeds (the true figure is spread wide: which trials ran to the end decides much)::

       python benchmarks/surrogate_quality.py            # 100 seeds
       python benchmarks/surrogate_quality.py --quick    # 20 seeds

2. ``train-proposals``: trains a finished search's top proposals with the real training loop
   (``trainables.train.run_epochs``, the config and pool the search used), two at a time, and
   prints their final ``unseen_accuracy`` beside the prediction and the search's best trial::

       python benchmarks/surrogate_quality.py train-proposals mixsearch_results/default --top 2

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import statistics
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TABLE = Path(__file__).with_name("search_efficiency_table.json")
TRIALS = 12


def asha_cut(curves: list[list[float]], grace: int, rf: int,
             ranked_by: list[list[float]] | None = None) -> list[list[float]]:
    """Each curve cut where asynchronous successive halving, seeing them in order, stops it:
    at each rung (grace x rf^k) a trial goes on only if it is in the top 1/rf of that rung so far,
    ranked by ``ranked_by`` (per curve and epoch, higher is better; the curves themselves if None)."""
    import numpy as np

    ranked_by = ranked_by or curves
    epochs = len(curves[0])
    rungs, r = [], int(grace)
    while r < epochs:
        rungs.append(r)
        r = int(r * rf)
    seen: dict[int, list[float]] = {r: [] for r in rungs}
    out = []
    for c, k in zip(curves, ranked_by):
        stop = epochs
        for r in rungs:
            seen[r].append(k[r - 1])
            # Ray's ASHA: the cutoff is the (1 - 1/rf) quantile of the rung's results so far.
            if len(seen[r]) > 1 and k[r - 1] < np.percentile(seen[r], (1 - 1 / rf) * 100):
                stop = r
                break
        out.append(c[:stop])
    return out


def ranking(row: dict, stop_by: str) -> list[float]:
    """What the search's ASHA ranks a table row by at each epoch, higher better (``search.stop_by``)."""
    return [-x for x in row["unseen_loss_curve"]] if stop_by == "unseen_loss" else row["curve"]


def table(seeds: int) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    from search.config import load_config
    from search.surrogate import Curve, cv_rank_correlation, fit

    cfg = load_config(ROOT / "search" / "default.yaml")
    rows = json.loads(TABLE.read_text())["rows"]
    configs = [{k: r[k] for k in ("weights", "num_instructions", "learning_rate", "budget")} for r in rows]
    finals = [r["curve"][-1] for r in rows]
    epochs = len(rows[0]["curve"])
    reported, true = [], []
    for seed in range(seeds):
        picked = random.Random(seed).sample(range(len(rows)), TRIALS)
        cut = asha_cut([rows[i]["curve"] for i in picked], cfg.search.grace_period, cfg.search.reduction_factor,
                       [ranking(rows[i], cfg.search.stop_by) for i in picked])
        curves = [Curve(str(i), configs[i], list(enumerate(c, 1))) for i, c in zip(picked, cut)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reported.append(cv_rank_correlation(curves, cfg.search.space, seed=seed))
            mu, _ = fit(curves, cfg.search.space, seed).predict(configs, epochs)
        true.append(float(spearmanr(mu, finals).statistic))
        print(f"seed {seed}: {sum(len(c) == epochs for c in cut)} of {TRIALS} ran to the end; "
              f"reported {reported[-1]:.2f}, true {true[-1]:.2f}", flush=True)

    def quartiles(xs: list[float]) -> list[float]:
        q = statistics.quantiles(xs, n=4)
        return [round(q[0], 3), round(q[2], 3)]

    return {
        "seeds": seeds,
        "reported_cv_rank_correlation": round(statistics.median(reported), 3),
        "true_rank_correlation": round(statistics.median(true), 3),
        "reported_quartiles": quartiles(reported),
        "true_quartiles": quartiles(true),
        # Does a higher reported figure mean a better fit? Pearson across seeds.
        "agreement_across_seeds": round(float(np.corrcoef(reported, true)[0, 1]), 3),
    }


def _train(args: tuple[dict, dict]) -> list[float]:
    import torch

    from trainables.train import run_epochs

    torch.set_num_threads(1)  # two at a time on two cores, as the search runs them
    config, setup = args
    return [m["unseen_accuracy"] for m, _ in run_epochs({**config, "setup": setup})]


def train_proposals(experiment: Path, top: int, config_path: Path) -> dict:
    from search.config import load_config, trial_setup

    summary_path = experiment if experiment.suffix == ".json" else experiment / "summary.json"
    summary = json.loads(summary_path.read_text())
    proposals = (summary.get("surrogate") or {}).get("proposals")
    if not proposals:
        raise SystemExit(f"{summary_path}: no surrogate proposals")
    setup = trial_setup(load_config(config_path), summary["pool"])
    setup["resources"] = {"cpu": 1, "gpu": 0}
    chosen = proposals[:top]
    with mp.get_context("spawn").Pool(2) as pool:
        curves = pool.map(_train, [(p["config"], setup) for p in chosen])
    out = []
    for p, curve in zip(chosen, curves):
        c = p["config"]
        print(f"{c.get('num_instructions')} instructions, weights "
              f"{ {k: round(v, 2) for k, v in c['weights'].items()} }, lr {c.get('learning_rate', 0):.4g}: "
              f"predicted {p['predicted_unseen_accuracy']:.3f} +- {p['predicted_std']:.3f}, "
              f"trained {curve[-1]:.3f}", flush=True)
        out.append({"predicted": p["predicted_unseen_accuracy"], "trained": round(curve[-1], 4)})
    best = (summary.get("best") or {}).get("unseen_accuracy", math.nan)
    return {"proposals": out, "best_trial": best}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    t = sub.add_parser("train-proposals", help="train a finished search's top proposals")
    t.add_argument("experiment", type=Path, help="an experiment folder or its summary.json")
    t.add_argument("--top", type=int, default=2)
    t.add_argument("--config", type=Path, default=ROOT / "search" / "default.yaml",
                   help="the search's config (model and training)")
    ap.add_argument("--quick", action="store_true", help="20 seeds instead of 100")
    args = ap.parse_args(argv)
    if args.cmd == "train-proposals":
        print(json.dumps(train_proposals(args.experiment, args.top, args.config)))
    else:
        print(json.dumps(table(20 if args.quick else 100)))


if __name__ == "__main__":
    main()
