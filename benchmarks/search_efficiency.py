"""How much compute each search strategy needs to find a good mixture: a tabular benchmark.

Three steps (the third a second measurement on the same table):

1. ``build-table`` runs the real training loop (``trainables.train.run_epochs``, what every trial
   runs) once for every configuration of a grid of mixtures x distinct instructions x learning
   rates on the built-in corpus, with the default model and training (8 epochs, evaluated on the
   whole unseen split, 2,000 items, so the 0.02 tolerance is about twice the evaluation's
   standard error; a budget of 10,000 examples, so the table builds in about 47 minutes on
   2 cores; 34 minutes on a quieter day), and writes each configuration's per-epoch
   ``unseen_accuracy``, ``unseen_loss`` and ``unseen_token_accuracy`` curves to
   ``benchmarks/search_efficiency_table.json`` (committed). It needs no Ray, so it runs on any
   machine with torch, e.g. a GPU box::

       python benchmarks/search_efficiency.py build-table --pool <pool of search/default.yaml> --workers 2

2. The benchmark itself (the default) replays search strategies against the table through real
   Tune, with a trainable that looks the curve up and reports it epoch by epoch:

   - ``grid``: every configuration in a shuffled order, no early stopping;
   - ``random_asha``: random sampling with ASHA;
   - ``tpe``: Optuna TPE without pruning (Ray's ``OptunaSearch``, FIFO);
   - ``mixsearch``: this project's searcher (TPE, early-stopped trials PRUNED) with ASHA,
     the space and scheduler settings of ``search/default.yaml``.

   Two bounds run as well: random sampling and this project's searcher, each with an oracle
   for a scheduler that, at ASHA's first rung, stops exactly the trials whose final value falls
   short (``random_oracle``, ``mixsearch_oracle``; ``--oracle-epoch N`` moves it to epoch N). No
   real stopping rule that decides by then can do better than that oracle, so they show how much
   of random with ASHA's cost any such rule could save.

   Compute is epochs trained. An adaptive strategy's cost is the epochs spent until some trial
   first reports an ``unseen_accuracy`` within 0.02 of the table's best final value (all its
   epochs, if it never does; each may run as many trials as the table has). A grid has no
   stopping rule: it knows its best only once it has run every point, so its cost is the whole
   grid (when it first met a good point is printed too). Medians over seeds::

       python benchmarks/search_efficiency.py           # 10 seeds
       python benchmarks/search_efficiency.py --quick   # 3 seeds

   ``random_asha_loss`` (random sampling, ASHA ranking by ``unseen_loss`` as this project's does)
   runs too, to tell the stopping rule's part from the searcher's; the replay also prints how well
   each figure at each epoch ranks the final accuracy. The last line printed is one JSON object:
   each strategy's median epochs, ``ratio_vs_grid`` and ``ratio_vs_random_asha`` (this project's
   compute over theirs), and the bounds (``bound_*``).

3. ``default-size``: what ranking ASHA's rungs by ``search.stop_by`` buys a search of the default
   size (12 trials, 2 at a time) on the table: the best final value each search finds among its
   trials run to the end, ASHA ranking by ``unseen_accuracy`` (a Tune user's choice, the
   baseline) and by ``stop_by`` (``unseen_loss``) on the same 40 seeds (10 with ``--quick``)::

       python benchmarks/search_efficiency.py default-size

   Its last line is one JSON object: each side's mean and worst best, how many of the searches
   came within 0.02 of the table's best, their mean epochs, and ``ratio`` (mean best, this
   project's over the baseline's).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:  # the replay needs Ray; building the table does not
    from ray.tune import Stopper
except ImportError:  # pragma: no cover
    Stopper = object

TABLE = Path(__file__).with_name("search_efficiency_table.json")
TOLERANCE = 0.02
DOMAINS = ["random", "repeated", "periodic", "mirrored"]


def _heavy(domain: str) -> dict[str, float]:
    return {d: (0.7 if d == domain else 0.1) for d in DOMAINS}


# The grid of the table. On 2 CPU cores a default trial (20,000 examples x 8 epochs) takes minutes,
# so the table uses half the default budget: 60 curves in about 47 minutes.
AXES = {
    "weights": [{d: 0.25 for d in DOMAINS}, _heavy("random"), _heavy("mirrored"),
                {"random": 0.5, "repeated": 0.0, "periodic": 0.5, "mirrored": 0.0}],
    "num_instructions": [8, 40, 200, 600, 1000],
    "learning_rate": [0.0015, 0.003, 0.006],
}
BUDGET, EPOCHS, EVAL_EXAMPLES = 10000, 8, 2000
# Recorded beside each curve of unseen_accuracy (its key is "curve"): "<metric>_curve".
EXTRA_CURVES = ("unseen_loss", "unseen_token_accuracy")


# ---------------------------------------------------------------- step 1: the table

def _run_one(args: tuple[dict, dict]) -> dict:
    from trainables.train import run_epochs

    point, setup = args
    began = time.perf_counter()
    metrics = [m for m, _ in run_epochs({**point, "setup": setup})]
    # The smooth figures too: whether they rank configurations earlier than exact match does.
    extra = {f"{k}_curve": [m[k] for m in metrics] for k in EXTRA_CURVES}
    return {**point, "curve": [m["unseen_accuracy"] for m in metrics], **extra,
            "seconds": round(time.perf_counter() - began, 1)}


def _key(point: dict) -> tuple:
    return (AXES["weights"].index(point["weights"]), point["num_instructions"], point["learning_rate"])


def build_table(pool: str | Path, workers: int, gpu: bool, out: Path, epochs: int = EPOCHS) -> None:
    """Train every grid point to the end, ``workers`` at a time; write the curves as JSON.

    The file is rewritten after every point and points already in it are skipped, so an
    interrupted build continues where it stopped. ``epochs`` other than the replay's make a table
    for study only (e.g. how well short schedules rank configs); the replay refuses it.
    """
    import multiprocessing as mp

    import torch

    from search.config import Config, trial_setup
    from search.pool import Manifest

    rows = []
    if out.exists():  # continue a build, but never mix curves of other epochs or axes into it
        earlier = json.loads(out.read_text())
        if earlier["meta"]["epochs"] != epochs or earlier["meta"]["axes"] != AXES:
            raise SystemExit(f"{out} holds a table of other epochs or axes: give another --out")
        if any(f"{k}_curve" not in r for r in earlier["rows"] for k in EXTRA_CURVES):
            raise SystemExit(f"{out} holds curves without {', '.join(EXTRA_CURVES)}: give another --out")
        rows = earlier["rows"]
    pool = Path(pool).resolve()
    domains = Manifest.load(pool).domains  # a bad pool fails now, not in every one of 60 runs
    if sorted(domains) != sorted(DOMAINS):
        raise SystemExit(f"{pool} has domains {domains}; the table's mixtures need {DOMAINS}: "
                         "give the pool of search/default.yaml")
    cfg = Config.model_validate({"training": {"epochs": epochs, "eval_examples": EVAL_EXAMPLES}})
    setup = trial_setup(cfg, pool)
    setup["resources"] = {"cpu": 1, "gpu": 1 if gpu else 0}
    done = {_key(r) for r in rows}
    points = [dict(zip(AXES, values)) | {"budget": BUDGET} for values in itertools.product(*AXES.values())]
    points = [p for p in points if _key(p) not in done]
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    meta = {
        "built_with": "trainables.train.run_epochs; model and training of search/default.yaml "
                      f"except epochs {epochs} and eval_examples {EVAL_EXAMPLES}",
        "device": device, "workers": workers,
        "epochs": epochs, "budget": BUDGET, "eval_examples": EVAL_EXAMPLES, "axes": AXES,
    }
    began = time.time()
    # spawn: CUDA cannot be used in forked children.
    with mp.get_context("spawn").Pool(workers) as pool_:
        for i, row in enumerate(pool_.imap_unordered(_run_one, [(p, setup) for p in points]), 1):
            rows.append(row)
            rows.sort(key=_key)
            meta["wall_seconds"] = round(time.time() - began)
            out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
            print(f"{i}/{len(points)} {row['num_instructions']:>5} lr={row['learning_rate']} "
                  f"final={row['curve'][-1]:.3f} ({row['seconds']} s, {meta['wall_seconds']} s in)", flush=True)
    print(f"{len(rows)} curves in {out}")


# ---------------------------------------------------------------- step 2: the replay

STRATEGIES = ("grid", "random_asha", "tpe", "mixsearch")
# Random sampling with this project's stopping rule (ASHA ranking by unseen_loss): with it, the
# figures tell how much of the saving is the stopping rule and how much the searcher.
REFERENCES = ("random_asha_loss",)
# Bounds, not strategies: random sampling and this project's searcher with a stopping rule that
# knows the table (an oracle), to show how far any stopping rule deciding at that epoch could go.
BOUNDS = ("random_oracle", "mixsearch_oracle")
TRIALS_PER_TABLE_POINT = 4


def lookup(config: dict, curves: dict) -> None:
    """A Tune trainable that reports a configuration's recorded curves (``unseen_accuracy`` and
    ``unseen_loss``), epoch by epoch."""
    from ray import tune

    recorded = curves[_key(config)]
    for epoch, values in enumerate(zip(*recorded.values()), 1):
        tune.report({**dict(zip(recorded, values)), "epoch": epoch})


def table_curves(rows: list[dict]) -> dict:
    """Each configuration's key -> {metric: per-epoch curve}, of the metrics the replay reports."""
    return {_key(r): {"unseen_accuracy": r["curve"], "unseen_loss": r["unseen_loss_curve"]} for r in rows}


def final(curve: dict) -> float:
    return curve["unseen_accuracy"][-1]


class Reached(Stopper):
    """A Tune stopper that counts every epoch reported and ends the run at the first good one."""

    def __init__(self, threshold: float, stop: bool = True) -> None:
        self.threshold, self.stop = threshold, stop
        self.seen, self.hit = set(), None

    @property
    def epochs(self) -> int:
        return len(self.seen)

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.seen.add((trial_id, result["epoch"]))  # Tune repeats a trial's last result when it ends
        if self.hit is None and result["unseen_accuracy"] >= self.threshold:
            self.hit = self.epochs
        return False

    def stop_all(self) -> bool:
        return self.stop and self.hit is not None


def _oracle_stop(curves: dict, threshold: float, epoch: int):
    """A Tune scheduler that, at ``epoch``, stops exactly the trials whose final value in the
    table falls short of ``threshold`` (no real rule can know this; it bounds what one could do)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class OracleStop(FIFOScheduler):
        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            if result["epoch"] == epoch and final(curves[_key(trial.config)]) < threshold:
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    return OracleStop()


def _project_config(seed: int, num_samples: int):
    from search.config import Config

    return Config.model_validate({
        "name": "replay", "training": {"epochs": EPOCHS},
        "search": {"num_samples": num_samples, "seed": seed, "space": {
            "weights": {"choices": AXES["weights"]}, "budget": BUDGET,
            "num_instructions": {"choices": AXES["num_instructions"]},
            "learning_rate": {"choices": AXES["learning_rate"]}}},
    })


def replay(strategy: str, seed: int, curves: dict, threshold: float, tmp: Path, oracle_epoch: int | None = None) -> dict:
    """One search against the table through Tune: epochs until the first good result, and in all."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.driver import _search_algorithm, asha_scheduler
    from search.space import DefineByRun

    n = TRIALS_PER_TABLE_POINT * len(curves)  # room to sample with repeats; most runs stop far sooner
    cfg = _project_config(seed, n)
    # ASHA as a Tune user sets it up, on the objective; the project's ranks by search.stop_by.
    # Both are built by the driver's code, with the same rungs.
    asha = asha_scheduler(_with_stop_by(cfg, "unseen_accuracy"))
    exp = tmp / f"{strategy}-{seed}"
    param_space = None
    if strategy == "grid":  # the grid a user writes, in its order; it runs to the end
        search_alg, scheduler, num = BasicVariantGenerator(max_concurrent=2), FIFOScheduler(), 1
        param_space = {k: tune.grid_search(v) for k, v in AXES.items()}
    elif strategy in ("random_asha", "random_oracle", "random_asha_loss"):
        search_alg, scheduler, num = BasicVariantGenerator(max_concurrent=2, random_state=seed), asha, n
        if strategy == "random_asha_loss":
            scheduler = asha_scheduler(cfg)
        param_space = {k: tune.choice(v) for k, v in AXES.items()}
    elif strategy == "tpe":  # Ray's OptunaSearch as it comes, every trial trained to the end
        import optuna

        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)  # Optuna's defaults
        search_alg = ConcurrencyLimiter(OptunaSearch(DefineByRun(cfg.search.space), metric="unseen_accuracy",
                                                     mode="max", sampler=sampler), max_concurrent=2)
        scheduler, num = FIFOScheduler(), n
    else:  # this project's searcher and scheduler, built by the driver's own code
        exp.mkdir(parents=True)
        search_alg, _, num = _search_algorithm(cfg, str(exp))
        scheduler = asha_scheduler(cfg)
    if strategy.endswith("_oracle"):  # the same searcher; stopped where ASHA's first rung is
        scheduler = _oracle_stop(curves, threshold, oracle_epoch or cfg.search.grace_period)
    stopper = Reached(threshold, stop=strategy != "grid")
    tuner = tune.Tuner(
        tune.with_parameters(lookup, curves=curves),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{strategy}-{seed}", storage_path=str(tmp / "tune"), stop=stopper, verbose=0),
    )
    results = tuner.fit()
    return {"epochs_to_hit": stopper.hit if stopper.hit is not None else math.inf, "found": stopper.hit is not None,
            "epochs": stopper.epochs, "trials": len(results)}


def _start_quietly() -> None:
    """A local 2-CPU cluster whose Tune and Optuna messages (each experiment's settings, paths and
    saves, each study's creation, the metrics of trials the stopper ended before they reported)
    stay out of the benchmark's output. Ray's logger level is set after ray.init, which sets it."""
    import logging

    import optuna
    import ray

    # Tune's newer console output prints each experiment's settings and paths even at verbose=0:
    # hundreds of lines around the benchmark's own; the older one is silent at 0.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line for each of the replay's studies


def rank_correlations(curves: dict) -> dict[str, list[float]]:
    """Per metric, the Spearman correlation of its value at each epoch with the final
    ``unseen_accuracy`` over the table's configurations (for the loss, of its negation: lower is
    better): how well a stopping rule that ranks by it at that epoch could rank them."""
    from scipy.stats import spearmanr

    finals = [final(c) for c in curves.values()]
    sign = {"unseen_accuracy": 1, "unseen_loss": -1}
    return {m: [float(spearmanr(finals, [sign[m] * c[m][e] for c in curves.values()])[0]) for e in range(EPOCHS)]
            for m in sign}


def replay_all(quick: bool, oracle_epoch: int | None = None) -> None:
    import tempfile

    import ray

    table = json.loads(TABLE.read_text())
    if table["meta"]["epochs"] != EPOCHS or table["meta"]["axes"] != AXES:
        raise SystemExit(f"{TABLE} was built for other axes or epochs than this script's: rebuild it")
    if any(f"{k}_curve" not in r for r in table["rows"] for k in EXTRA_CURVES):
        raise SystemExit(f"{TABLE} has no loss curves (built before they were recorded): rebuild it")
    curves = table_curves(table["rows"])
    best = max(final(c) for c in curves.values())
    threshold = best - TOLERANCE
    seeds = list(range(3 if quick else 10))
    print(f"table: {len(curves)} curves of {EPOCHS} epochs, best final unseen_accuracy {best:.3f}; "
          f"{sum(final(c) >= threshold for c in curves.values())} configurations within {TOLERANCE}")
    ranking = rank_correlations(curves)
    for metric, by_epoch in ranking.items():
        print(f"{metric} at each epoch against the final unseen_accuracy (Spearman): "
              + " ".join(f"{r:.2f}" for r in by_epoch))
    _start_quietly()
    every = STRATEGIES + REFERENCES + BOUNDS
    runs: dict[str, list[dict]] = {s: [] for s in every}
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for strategy in every:
                if strategy == "grid" and runs["grid"]:  # deterministic: one run stands for all seeds
                    runs["grid"].append(runs["grid"][0])
                    continue
                r = replay(strategy, seed, curves, threshold, Path(tmp), oracle_epoch)
                runs[strategy].append(r)
                print(f"seed {seed} {strategy:<16} {r['epochs_to_hit']:>4} epochs to within {TOLERANCE} "
                      f"({r['trials']} trials{'' if r['found'] else ', never reached'})", flush=True)
    ray.shutdown()
    # A run that never got within the tolerance counts as infinitely costly (inf in the median).
    median = {s: statistics.median(r["epochs_to_hit"] for r in runs[s]) for s in every}
    grid_total = runs["grid"][0]["epochs"]

    def fin(x: float, digits: int = 3):  # JSON has no infinity: a median that never got there is null
        return None if math.isinf(x) else round(x, digits)

    def ratio(ours: float, theirs: float):
        return None if math.isinf(theirs) else fin(ours / theirs)

    out = {
        "seeds": len(seeds), "table_best": round(best, 4), "tolerance": TOLERANCE,
        "grid_epochs": grid_total,
        "grid_first_hit_epochs": fin(median["grid"]),
        "random_asha_epochs": fin(median["random_asha"]),
        "tpe_epochs": fin(median["tpe"]),
        "mixsearch_epochs": fin(median["mixsearch"]),
        "random_asha_loss_epochs": fin(median["random_asha_loss"]),
        "found": {s: sum(r["found"] for r in runs[s]) for s in every},
        "ratio_vs_grid": fin(median["mixsearch"] / grid_total),
        "ratio_vs_random_asha": ratio(median["mixsearch"], median["random_asha"]),
        "ratio_vs_tpe": ratio(median["mixsearch"], median["tpe"]),
        "ratio_vs_random_asha_loss": ratio(median["mixsearch"], median["random_asha_loss"]),
        # How well each figure at ASHA's first rung ranks the final accuracy.
        "first_rung_rank_correlation": {m: round(r[_project_config(0, 1).search.grace_period - 1], 3)
                                        for m, r in ranking.items()},
        # What an oracle stopping rule at the first rung would give, with either sampler.
        "bound_random_oracle_epochs": fin(median["random_oracle"]),
        "bound_mixsearch_oracle_epochs": fin(median["mixsearch_oracle"]),
        "bound_ratio_vs_random_asha": ratio(median["mixsearch_oracle"], median["random_asha"]),
        "bound_oracle_epoch": oracle_epoch or _project_config(0, 1).search.grace_period,
        "wall_s": round(time.time() - began),
    }
    print(json.dumps(out))


def _with_stop_by(cfg, stop_by: str):
    return cfg.model_copy(update={"search": cfg.search.model_copy(update={"stop_by": stop_by})})


def default_size(seed: int, curves: dict, tmp: Path, stop_by: str, max_concurrent: int | None = None) -> dict:
    """One search of the default search's size (``search.num_samples`` trials of
    ``search/default.yaml``, as many at a time unless ``max_concurrent``) on the table, through
    Tune, with this project's searcher and ASHA ranking by ``stop_by``: the best final value among
    trials run to the end."""
    from ray import tune

    from search.config import load_config
    from search.driver import _search_algorithm, asha_scheduler

    size = load_config().search
    cfg = _project_config(seed, size.num_samples)
    cfg = _with_stop_by(cfg.model_copy(update={"search": cfg.search.model_copy(
        update={"max_concurrent": max_concurrent or size.max_concurrent})}), stop_by)
    exp = tmp / f"{stop_by}-{seed}"
    exp.mkdir(parents=True)
    search_alg, _, num = _search_algorithm(cfg, str(exp))
    results = tune.Tuner(
        tune.with_parameters(lookup, curves=curves),
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=asha_scheduler(cfg), num_samples=num,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=exp.name, storage_path=str(tmp / "tune"), verbose=0),
    ).fit()
    ended = [r.metrics["unseen_accuracy"] for r in results if r.metrics.get("epoch") == EPOCHS]
    return {"best": max(ended, default=0.0), "epochs": sum(r.metrics.get("epoch", 0) for r in results)}


def default_size_all(quick: bool) -> None:
    """The default search's size, ASHA ranking by unseen_accuracy (a Tune user's choice) against
    ranking by ``search.stop_by`` of ``search/default.yaml``, on the same seeds."""
    import tempfile

    import ray

    from search.config import load_config

    curves = table_curves(json.loads(TABLE.read_text())["rows"])
    good = max(final(c) for c in curves.values()) - TOLERANCE
    project = load_config().search.stop_by
    seeds = range(10 if quick else 40)
    _start_quietly()
    began = time.time()
    runs: dict[str, list[dict]] = {"unseen_accuracy": [], project: []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for stop_by in runs:
                runs[stop_by].append(default_size(seed, curves, Path(tmp), stop_by))
            print(f"seed {seed}: best " + ", ".join(f"{k} {v[-1]['best']:.3f}" for k, v in runs.items()), flush=True)
    ray.shutdown()
    figures = {k: {"mean_best": round(statistics.mean(r["best"] for r in v), 4),
                   "worst_best": min(r["best"] for r in v),
                   "within_tolerance": sum(r["best"] >= good for r in v),
                   "mean_epochs": round(statistics.mean(r["epochs"] for r in v), 1)} for k, v in runs.items()}
    base, ours = runs["unseen_accuracy"], runs[project]
    print(json.dumps({
        "seeds": len(seeds), "stop_by": project, "baseline": figures["unseen_accuracy"], "mixsearch": figures[project],
        "better": sum(o["best"] > b["best"] for b, o in zip(base, ours)),
        "worse": sum(o["best"] < b["best"] for b, o in zip(base, ours)),
        "ratio": round(figures[project]["mean_best"] / figures["unseen_accuracy"]["mean_best"], 3),
        "epochs_ratio": round(figures[project]["mean_epochs"] / figures["unseen_accuracy"]["mean_epochs"], 3),
        "wall_s": round(time.time() - began),
    }))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("build-table", help="train every grid point and write the curves")
    b.add_argument("--pool", required=True, help="a pool prepared from search/default.yaml")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--gpu", action="store_true")
    b.add_argument("--out", type=Path, default=TABLE)
    b.add_argument("--epochs", type=int, default=EPOCHS, help="length of each run's schedule")
    d = sub.add_parser("default-size", help="searches of the default size: the best each finds, "
                                            "ASHA ranking by unseen_accuracy or by search.stop_by")
    d.add_argument("--quick", action="store_true", help="10 seeds instead of 40")
    ap.add_argument("--quick", action="store_true", help="3 seeds instead of 10")
    ap.add_argument("--oracle-epoch", type=int, default=None,
                    help="the epoch at which the bounds' oracle stops trials (default: ASHA's first rung)")
    args = ap.parse_args(argv)
    if args.cmd == "build-table":
        build_table(args.pool, args.workers, args.gpu, args.out, args.epochs)
    elif args.cmd == "default-size":
        default_size_all(args.quick)
    else:
        replay_all(args.quick, args.oracle_epoch)


if __name__ == "__main__":
    main()
