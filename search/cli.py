"""The ``mixsearch`` command: one verb per stage.

    mixsearch config              print the default config (copy it, edit it)
    mixsearch prepare [CONFIG]    write (or reuse) the pool of a config
    mixsearch run [CONFIG]        prepare if needed, search, write summary.json
"""

from __future__ import annotations

import argparse
import logging
import sys

from search.config import DEFAULT_CONFIG, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixsearch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("config", help="print the default config")

    prep = verbs.add_parser("prepare", help="write (or reuse) the pool of a config")
    prep.add_argument("config", nargs="?", help="YAML config (default: the built-in one)")
    prep.add_argument("--force", action="store_true", help="rewrite the pool even if it exists")

    run = verbs.add_parser("run", help="search mixtures; prepares the pool if needed")
    run.add_argument("config", nargs="?", help="YAML config (default: the built-in one)")
    run.add_argument("--name", help="experiment name (results in STORAGE_PATH/NAME)")
    run.add_argument("--storage-path", help="where experiments are stored (a folder)")
    run.add_argument("--num-samples", type=int, help="number of trials")
    run.add_argument("--resume", action="store_true", help="finish an interrupted experiment")
    run.add_argument("--start-from", metavar="EXPERIMENT",
                     help="a previous experiment (folder or summary.json): try its surrogate's proposals first")
    return p


def _overrides(args: argparse.Namespace) -> dict:
    return {"name": args.name, "storage_path": args.storage_path, "search.num_samples": args.num_samples,
            "search.start_from": args.start_from}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.verb == "config":
        sys.stdout.write(DEFAULT_CONFIG.read_text())
        return 0
    try:
        if args.verb == "prepare":
            cfg = load_config(args.config)
            from search.driver import init_ray
            from search.pool import Manifest, pool_path, prepare

            pool_path(cfg)  # a files corpus's missing files fail here, before Ray starts
            init_ray(cfg)
            pool = prepare(cfg, force=args.force)
            m = Manifest.load(pool)
            print(f"pool: {pool}")
            for split in ("train", "unseen"):
                stats = getattr(m, split)
                print(f"{split}: {sum(s.rows for s in stats.values())} rows, "
                      f"{sum(s.instructions for s in stats.values())} instructions in {len(stats)} domains")
                width = max((len(d) for d in stats), default=0)
                for d, s in stats.items():
                    print(f"  {d:<{width}} {s.rows:>8} rows {s.instructions:>6} instructions "
                          f"(examples each {s.examples_min}-{s.examples_max}, entropy {s.entropy:.2f} bits)")
            if m.dropped:
                print("dropped: " + ", ".join(f"{k} {v}" for k, v in m.dropped.items()))
            for line in m.faults:
                print(f"  {line}")
            return 0
        cfg = load_config(args.config, _overrides(args))
        from search.driver import run_search

        summary = run_search(cfg, resume=args.resume, source=args.config or str(DEFAULT_CONFIG))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = summary.best
    print(f"\n{summary.num_trials} trials in {summary.wall_seconds:.0f}s")
    if best:
        print(f"best trial {best['trial_id']}: unseen_accuracy {best['unseen_accuracy']:.3f}")
        for k, v in best["config"].items():
            print(f"  {k}: {v}")
    if summary.pareto:
        print(f"pareto front (unseen accuracy against {summary.pareto['against']}):")
        for p in summary.pareto["front"]:
            print(f"  {p['trial_id']}: {p['unseen_accuracy']:.3f} at {p[summary.pareto['against']]:g}")
    sur = summary.surrogate or {}
    if "proposal" in sur:
        prop = sur["proposal"]
        print(f"surrogate (cross-validated rank correlation {sur['cv_rank_correlation']:.2f} over the last "
              f"results of {sur['trials']} trials, {sur['finished_trials']} run to the end) proposes, "
              f"near those, predicting {prop['predicted_unseen_accuracy']:.3f} +- {prop['predicted_std']:.3f}:")
        for k, v in prop["config"].items():
            print(f"  {k}: {v}")
    elif sur:
        print(f"surrogate: {sur.get('error')}")
    print(f"results: {summary.experiment_path}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
