"""What the search itself costs: per-trial overhead and wall time against the trials' own compute.

Twenty short trials (the real trainable, a tiny model, a few seconds each) run two at a time:

- baseline: the same twenty configs through ``trainables.train.run_epochs`` in a plain pool of
  two worker processes, no Ray, no Tune, no Optuna;
- project: ``mixsearch run`` (``search.driver.run_search``) on a grid of the same twenty configs:
  a local Ray cluster, Tune with ASHA, checkpoints every epoch, the summary and its surrogate.

A trial's compute is the time its function runs (Tune's ``time_total_s``; the same clock in the
baseline's workers). ``ratio`` is the project's wall time over (total trial compute /
concurrency): 1.0 would mean the search adds nothing. ``per_trial_overhead_s`` is the wall time
beyond that, times the concurrency, per trial.

    python benchmarks/search_overhead.py           # 20 trials
    python benchmarks/search_overhead.py --quick   # 10 trials

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONCURRENCY = 2
LEARNING_RATES = [0.002, 0.003, 0.004, 0.005, 0.006]


def config(tmp: Path, trials: int) -> dict:
    """A tiny setup whose trials take a few seconds; a grid of exactly ``trials`` points."""
    counts = [10, 20, 40, 80][: max(1, trials // len(LEARNING_RATES))]
    return {
        "name": "overhead",
        "storage_path": str(tmp / "results"),
        "corpus": {"pool_dir": str(tmp / "pools"),
                   "string_rewrite": {"alphabet": "abcd", "input_length": 6, "rules_per_domain": 30,
                                      "unseen_rules_per_domain": 5, "examples_per_rule": 8}},
        "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "max_length": 32},
        "training": {"epochs": 3, "eval_examples": 100},
        "search": {"algorithm": "grid", "max_concurrent": CONCURRENCY, "grace_period": 3,
                   "space": {"weights": {"choices": [{"random": 0.25, "repeated": 0.25, "periodic": 0.25, "mirrored": 0.25}]},
                             "num_instructions": {"choices": counts}, "budget": 20000,
                             "learning_rate": {"choices": LEARNING_RATES[: trials // len(counts)]}}},
        "ray": {"num_cpus": CONCURRENCY},
    }


def _timed(args: tuple[dict, dict]) -> float:
    from trainables.train import run_epochs

    point, setup = args
    began = time.perf_counter()
    for _ in run_epochs({**point, "setup": setup}):
        pass
    return time.perf_counter() - began


def baseline(cfg, pool: Path) -> tuple[float, list[float]]:
    """The same trials in a bare process pool: (wall seconds, each trial's seconds)."""
    from search.config import trial_setup

    setup = trial_setup(cfg, pool)
    space = cfg.search.space
    points = [{"weights": space.weights.choices[0], "num_instructions": int(n), "budget": int(space.budget),
               "learning_rate": lr} for n in space.num_instructions.choices for lr in space.learning_rate.choices]
    began = time.perf_counter()
    with mp.get_context("spawn").Pool(CONCURRENCY) as workers:
        seconds = workers.map(_timed, [(p, setup) for p in points], chunksize=1)
    return time.perf_counter() - began, seconds


def project(cfg) -> tuple[float, list[float], int]:
    """The search: (wall seconds, each trial's time_total_s, trials)."""
    import ray

    from search.driver import experiment_dir, run_search

    began = time.perf_counter()
    summary = run_search(cfg)
    wall = time.perf_counter() - began
    ray.shutdown()
    seconds = []
    for t in summary.trials:
        lines = (Path(experiment_dir(cfg)) / f"trial_{t.trial_id}" / "result.json").read_text().splitlines()
        seconds.append(json.loads(lines[-1])["time_total_s"])
    return wall, seconds, summary.num_trials


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 trials instead of 20")
    args = ap.parse_args(argv)
    trials = 10 if args.quick else 20

    import ray

    from search.config import Config
    from search.driver import init_ray
    from search.pool import prepare

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.model_validate(config(Path(tmp), trials))
        init_ray(cfg)  # the pool is prepared once, outside both timings
        pool = prepare(cfg)
        ray.shutdown()
        b_wall, b_seconds = baseline(cfg, pool)
        p_wall, p_seconds, n = project(cfg)
    assert n == len(b_seconds) == trials, (n, len(b_seconds))

    def figures(wall: float, seconds: list[float]) -> tuple[float, float]:
        ideal = sum(seconds) / CONCURRENCY
        return wall / ideal, (wall - ideal) * CONCURRENCY / len(seconds)

    ratio, overhead = figures(p_wall, p_seconds)
    b_ratio, b_overhead = figures(b_wall, b_seconds)
    print(f"baseline (process pool): {b_wall:.1f} s wall, {sum(b_seconds):.1f} s of trials")
    print(f"project (mixsearch run): {p_wall:.1f} s wall, {sum(p_seconds):.1f} s of trials")
    print(json.dumps({
        "trials": trials, "concurrency": CONCURRENCY,
        "trial_seconds_mean": round(sum(p_seconds) / trials, 2),
        "wall_s": round(p_wall, 1), "ratio": round(ratio, 3), "per_trial_overhead_s": round(overhead, 2),
        "baseline_wall_s": round(b_wall, 1), "baseline_ratio": round(b_ratio, 3),
        "baseline_per_trial_overhead_s": round(b_overhead, 2),
    }))


if __name__ == "__main__":
    main()
