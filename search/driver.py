"""Stage 5, experiment: Ray Tune + Optuna (TPE) + ASHA over mixtures, and its summary.

``run_search`` is the whole experiment: validate, start (or join) Ray, prepare the pool, search,
write ``<storage_path>/<name>/summary.json``. The Optuna study is stored beside the experiment
(``optuna.journal``), so the history survives the driver.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pyarrow as pa
import pyarrow.fs as pafs
import yaml

from search import liveness
from search.config import (
    CHAT_PROMPT, Config, ConfigError, check_space_against_pool, duration_text, is_uri, key_location, resolve,
    setting_location, storage_root, trial_setup, with_pool_domains,
)

if TYPE_CHECKING:
    from search.pool import Manifest

log = logging.getLogger(__name__)

METRIC = "unseen_accuracy"
SUMMARY = "summary.json"
CONFIG = "config.yaml"  # the config an experiment started with, saved beside it
RUNS = "runs.json"  # seconds of each run (the first, then each --resume) and the driver running it
# What a resume may change: where the experiment and the cluster are, and how long it may run (the
# driver, not Tune, keeps the deadline). Tune resumes everything else as it started, so a change
# there would be silently ignored.
RESUMABLE = ("name", "storage_path", "ray.", "search.start_from", "search.time_limit")
# Keys added since experiments began saving their config, with the value an experiment saved
# without one ran with: Tune resumes it so, whatever the config now says.
ADDED_SINCE = {"search.stop_by": "unseen_accuracy"}
# Whether ASHA keeps the larger or the smaller values of each stop_by metric.
STOP_BY_MODE = {"unseen_loss": "min", "unseen_accuracy": "max"}


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    # COMPLETED, EARLY_STOPPED (by ASHA), STOPPED (NaN loss, out of memory), ERROR, PENDING (never
    # started), OUT_OF_TIME (running, or resumed and waiting, when search.time_limit was reached)
    status: str
    config: dict[str, Any]
    unseen_accuracy: float | None  # the last reported value
    training_iteration: int
    per_domain: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # why a trial is STOPPED or ERROR


@dataclass(frozen=True)
class Summary:
    name: str
    best: dict[str, Any] | None  # config, unseen_accuracy, trial_id, per_domain, checkpoint
    trials: list[TrialSummary]
    num_trials: int
    counts: dict[str, int]  # trials per status
    wall_seconds: float  # every run of the experiment: sum(run_seconds)
    experiment_path: str
    pool: str
    pareto: dict[str, Any] | None = None  # {against, front: [...]} when search.pareto is set
    surrogate: dict[str, Any] | None = None  # rank correlation and proposals (search/surrogate.py)
    run_seconds: list[float] = field(default_factory=list)  # each run, the first to this one
    time_limit: float | None = None  # search.time_limit, in seconds
    out_of_time: bool = False  # the search ended at its time limit, with trials unfinished

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str)


def experiment_location(cfg: Config) -> tuple[pafs.FileSystem, str, str]:
    """The experiment's (filesystem, path on it, path or URI as users see it)."""
    root = storage_root(cfg.storage_path)
    fs, base = pafs.FileSystem.from_uri(root) if is_uri(root) else (pafs.LocalFileSystem(), root)
    return fs, f"{base.rstrip('/')}/{cfg.name}", f"{root.rstrip('/')}/{cfg.name}"


def experiment_dir(cfg: Config) -> str:
    """Where the experiment's results are: a local path or a URI."""
    return experiment_location(cfg)[2]


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _has_content(fs: pafs.FileSystem, path: str) -> bool:
    return bool(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def _experiments_in(fs: pafs.FileSystem, path: str) -> list[str]:
    """Names of the experiments directly under ``path`` (a storage path, passed by mistake)."""
    folders = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(f.base_name for f in folders
                  if f.type == pafs.FileType.Directory and _exists(fs, f"{f.path}/tuner.pkl"))


def init_ray(cfg: Config) -> None:
    """Join the configured cluster, or start a local one on this machine."""
    import ray

    if ray.is_initialized():
        return
    if cfg.ray.address:
        try:
            ray.init(address=cfg.ray.address)
        except ConnectionError as e:  # no cluster there: the user's setting, not a crash
            raise ConfigError(
                f"ray.address {cfg.ray.address!r}: no Ray cluster to join ({e}); start one "
                "(`ray up cluster.yaml`, or `ray start --head` on this machine) or set ray.address: null "
                "for a local one"
            ) from None
    else:
        # address="local": always a new cluster of our own. Without it ray.init() joins any
        # cluster already running on this machine (`ray start`, another tool's), sized for it.
        from search.stopping import cluster_ignores_hangup

        with cluster_ignores_hangup():  # so that a closed terminal leaves Tune a cluster to stop on
            ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False)


def check_model_source(cfg: Config, source: str) -> None:
    """Load a hub model's config before any cluster work. Otherwise a hub id that is misspelt,
    unreachable or not cached (``HF_HUB_OFFLINE``) fails in every trial, each retrying the hub
    for about 26 s, and Tune retries each trial. Local directories are checked when the config
    loads."""
    name = cfg.model.pretrained
    if name is None or Path(name).is_dir():
        return
    from transformers import AutoConfig

    from trainables.tokenizer import hub_offline

    # The cache first (no network), then the hub unless HF_HUB_OFFLINE forbids it.
    for local_only in (True,) if hub_offline() else (True, False):
        try:
            AutoConfig.from_pretrained(name, trust_remote_code=cfg.model.trust_remote_code,
                                       local_files_only=local_only)
            return
        except (OSError, ValueError) as e:
            error = e
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    raise ConfigError(
        f"{key_location(source, ('model', 'pretrained'))}: cannot load {name}: {first} (a hub id needs "
        "the hub, or its files cached, with HF_HUB_OFFLINE=1 on machines without it; or give a "
        "directory saved with save_pretrained)"
    )


def check_chat_template(cfg: Config, source: str) -> None:
    """``prompt: chat`` needs a pretrained tokenizer with a chat template: say so before Ray,
    rather than in every prepare task."""
    files = cfg.corpus.files
    if cfg.corpus.source != "files" or files.prompt != CHAT_PROMPT:
        return
    where = setting_location(cfg, source, ("corpus", "files", "prompt"))
    if not cfg.model.pretrained:
        raise ConfigError(f"{where}: chat renders rows with the model's chat template, and the tiny model's "
                          "character tokenizer has none: give model.pretrained, or a prompt template")
    from trainables.tokenizer import load_tokenizer

    if not getattr(load_tokenizer(cfg.model.model_dump()), "chat_template", None):
        raise ConfigError(f"{where}: the tokenizer of {cfg.model.pretrained} has no chat template (a base "
                          "model?): give a prompt template instead, e.g. \"{instruction}\\n{input}\\n\"")


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` could not be made or written to (None: it could), without making it."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):  # also false on a read-only disk
        return f"{existing} is not writable here"
    return None


def check_folders(cfg: Config, source: str, folders: dict[tuple[str, ...], str]) -> None:
    """Refuse local folders (config key -> path) that cannot be written to: found later, such a
    folder fails the run after Ray started and the pool was prepared, with a traceback."""
    for key, path in folders.items():
        folder = None if is_uri(path) else resolve(path)
        why = folder and _unwritable(folder)
        if why:
            raise ConfigError(f"{setting_location(cfg, source, key)}: cannot write to {folder} ({why})")


def check_inputs(cfg: Config, source: str, *, run: bool = True) -> None:
    """What can be checked before Ray starts, beyond the config itself: a files corpus's files
    (its pool is named by their sizes and times), a hub model and its chat template when the
    prompt is ``chat``, and the folders written to (the pool's and, for a run, the experiments')."""
    from search.ingest import IngestError
    from search.pool import pool_path

    try:
        pool_path(cfg)
    except IngestError as e:
        if e.key is None:
            raise
        raise ConfigError(f"{setting_location(cfg, source, e.key)}: {e}") from None
    check_model_source(cfg, source)
    check_chat_template(cfg, source)
    folders = {("storage_path",): cfg.storage_path} if run else {}
    check_folders(cfg, source, {**folders, ("corpus", "pool_dir"): cfg.corpus.pool_dir})


def check_rows_fit(cfg: Config, pool: Path, source: str) -> None:
    """On the built-in corpus with the character tokenizer, a row longer than ``model.max_length``
    fails every trial; say so before the first. (Prepare drops or cuts a file corpus's long rows;
    a pretrained tokenizer's counts are known only once it has tokenized.)"""
    if cfg.model.pretrained or cfg.corpus.source != "string_rewrite":
        return
    from search.pool import longest_row_chars
    from trainables.tokenizer import PROMPT

    longest = longest_row_chars(pool) + len(PROMPT.format(instruction="", input="")) + 2  # <bos>, <eos>
    if longest > cfg.model.max_length:
        raise ConfigError(
            f"{key_location(source, ('model', 'max_length'))}: the pool's longest row is {longest} "
            f"tokens (prompt and answer), more than max_length {cfg.model.max_length}"
        )


def _check_resources(cfg: Config) -> None:
    """A trial that asks for more than a fixed (local) cluster has would wait forever: refuse."""
    import ray

    if cfg.ray.address:  # a cluster that autoscales may add the resources later
        return
    have = ray.cluster_resources()
    asked = cfg.resources_per_trial
    for key, name in (("cpu", "CPU"), ("gpu", "GPU")):
        if getattr(asked, key) > have.get(name, 0):
            raise ConfigError(
                f"resources_per_trial.{key} = {getattr(asked, key):g}, but the local Ray cluster has "
                f"{have.get(name, 0):g} {name}s"
            )


def _public(config: dict) -> dict:
    # simplex_u are Optuna's raw draws; the normalized weights are what the trial trained on.
    return {k: v for k, v in config.items() if k != "simplex_u"}


def _status(result, epochs: int, cut: bool = False) -> str:
    m = result.metrics or {}
    it = int(m.get("epoch", 0))
    if result.error is not None:
        return "ERROR"
    if m.get("stopped"):
        return "STOPPED"
    if it >= epochs:
        return "COMPLETED"
    if it == 0:
        return "PENDING"
    return "OUT_OF_TIME" if cut else "EARLY_STOPPED"


def _reason(error: BaseException) -> str:
    # Ray wraps a trial's exception (RayTaskError); the user wants the exception itself.
    cause = getattr(error, "cause", None)
    error = cause if isinstance(cause, BaseException) else error
    return f"{type(error).__name__}: {error}"[:2000]


def _curve(result) -> list[tuple[int, float]]:
    """(epoch, accuracy) of every result a trial reported; a repeated epoch keeps its last value."""
    df = result.metrics_dataframe
    if df is None or METRIC not in df or "epoch" not in df:
        return []
    rows = df[["epoch", METRIC]].dropna()
    return sorted({int(e): float(v) for e, v in zip(rows["epoch"], rows[METRIC])}.items())


def pareto_front(trials: list[TrialSummary], against: str, costs: dict[str, float]) -> list[dict[str, Any]]:
    """Trials no other trial beats on both accuracy (higher) and cost (lower), by rising cost.

    Against the budget only completed trials count (an early-stopped trial's accuracy is not what
    its budget buys); against compute every trial with a result does, at what it trained (one
    cut by the time limit too).
    """
    points = [
        (costs[t.trial_id], t.unseen_accuracy, t) for t in trials
        if t.unseen_accuracy is not None and t.trial_id in costs
        and (t.status == "COMPLETED" or (against == "compute" and t.status in ("EARLY_STOPPED", "OUT_OF_TIME")))
    ]
    front, best = [], -math.inf
    for cost, acc, t in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append({"trial_id": t.trial_id, "unseen_accuracy": acc, against: cost, "config": t.config})
            best = acc
    return front


def best_trial(trials: list[TrialSummary], costs: dict[str, float]) -> TrialSummary | None:
    """The trial with the highest last ``unseen_accuracy`` (STOPPED and ERROR trials aside).

    A tie (every trial at 0 when none learned; two trials at one value of 1,000 items) goes to a
    trial that ran to the end, then to the cheaper by ``costs`` (a Pareto search's) or else by
    its budget, so that a budget Pareto search's best is its front's top; then to the first id.
    """
    ranked = [t for t in trials if t.unseen_accuracy is not None and t.status not in ("STOPPED", "ERROR")]

    def rank(t: TrialSummary) -> tuple[float, bool, float]:
        cost = costs.get(t.trial_id, t.config.get("budget", 0.0))
        return t.unseen_accuracy, t.status == "COMPLETED", -float(cost)

    return max(ranked, key=rank, default=None)  # max keeps the first of equals: trials come by id


def summarize(results, cfg: Config, pool: Path, run_seconds: list[float],
              out_of_time: frozenset[str] | None = None) -> Summary:
    """Condense a ResultGrid into the summary users read and notebooks load.

    ``run_seconds``: the time of each run of the experiment, the first to this one.
    ``out_of_time``: the ids of the trials unfinished when the time limit ended the search."""
    from search.searcher import COST_METRIC
    from search.surrogate import Curve, analyse

    pairs, curves, costs = [], [], {}
    for r in results:
        m = r.metrics or {}
        acc = m.get(METRIC)
        trial_id = str(m.get("trial_id") or Path(r.path).name)
        trial = TrialSummary(
            trial_id=trial_id,
            status=_status(r, cfg.training.epochs, cut=trial_id in (out_of_time or ())),
            config=_public(r.config or {}),
            unseen_accuracy=None if acc is None or math.isnan(acc) else float(acc),
            training_iteration=int(m.get("training_iteration", 0)),
            per_domain={k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(METRIC + "/")},
            reason=m.get("reason") if r.error is None else _reason(r.error),
        )
        pairs.append((trial, r))
        if trial.status not in ("STOPPED", "ERROR"):
            curves.append(Curve(trial.trial_id, trial.config, _curve(r)))
        if cfg.search.pareto and COST_METRIC[cfg.search.pareto] in m:
            costs[trial.trial_id] = float(m[COST_METRIC[cfg.search.pareto]])
    pairs.sort(key=lambda p: p[0].trial_id)
    trials = [t for t, _ in pairs]
    best = None
    top = best_trial(trials, costs)
    if top is not None:
        result = next(r for t, r in pairs if t is top)
        best = {
            "trial_id": top.trial_id,
            "unseen_accuracy": top.unseen_accuracy,
            "config": top.config,
            "per_domain": top.per_domain,
            "training_iteration": top.training_iteration,
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
        }
    pareto = None
    if cfg.search.pareto:
        pareto = {"against": cfg.search.pareto, "front": pareto_front(trials, cfg.search.pareto, costs)}
    try:
        surrogate = analyse(curves, cfg.search.space, cfg.training.epochs, seed=cfg.search.seed)
    except Exception as e:  # a failed fit must not cost the user the summary of a finished search
        log.warning("surrogate fit failed: %s", e)
        surrogate = {"error": f"{type(e).__name__}: {e}"}
    return Summary(
        name=cfg.name,
        best=best,
        trials=trials,
        num_trials=len(pairs),
        counts=dict(sorted(Counter(t.status for t in trials).items())),
        wall_seconds=round(sum(run_seconds), 1),
        experiment_path=experiment_dir(cfg),
        pool=str(pool),
        pareto=pareto,
        surrogate=surrogate,
        run_seconds=list(run_seconds),
        time_limit=cfg.search.time_limit,
        out_of_time=out_of_time is not None,
    )


def trial_name(trial) -> str:
    """Short trial names and folders: the config is in the summary, not in every path."""
    return f"trial_{trial.trial_id}"


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value})
    return out


def check_resumed_config(cfg: Config, source: str) -> dict[str, Any] | None:
    """Refuse to resume with a config that differs from the one the experiment started with
    (``config.yaml`` beside it) anywhere but in ``RESUMABLE``: Tune would ignore the change.
    Returns that config, flattened (``search.time_limit``), or None if none was saved."""
    fs, exp, shown = experiment_location(cfg)
    if not _exists(fs, f"{exp}/{CONFIG}"):
        return None  # started before experiments saved their config
    with fs.open_input_stream(f"{exp}/{CONFIG}") as f:
        started = _flat(yaml.safe_load(f.read()) or {})
    now = _flat(cfg.model_dump(mode="json"))
    keys = list(now) + [k for k in started if k not in now]  # in the config's order
    # A key added since this experiment started is not compared: it resumes as it ran.
    changed = [k for k in keys if not k.startswith(RESUMABLE) and started.get(k) != now.get(k)
               and not (k in ADDED_SINCE and k not in started)]
    if changed:
        shown_changes = "; ".join(f"{k}: {started.get(k)!r} then, {now.get(k)!r} now" for k in changed[:5])
        raise ConfigError(
            f"{source}: not the config {shown}/{CONFIG} started with ({shown_changes}"
            f"{f'; and {len(changed) - 5} more' if len(changed) > 5 else ''}): a resumed experiment "
            "runs as it started; resume with that config, or start a new experiment with --name NEW"
        )
    return started


def _check_limit_kept(started: dict[str, Any] | None, shown: str, cfg: Config, source: str) -> None:
    """Refuse a time limit for an experiment started before mixsearch had them (``started``: its
    flattened ``config.yaml``, from ``check_resumed_config``): Tune got no stopper then and
    restores the experiment as it started, so the limit would be ignored."""
    if cfg.search.time_limit is not None and "search.time_limit" not in (started or {}):
        raise ConfigError(f"{setting_location(cfg, source, ('search', 'time_limit'))}: {shown} was started by a "
                          "mixsearch without time limits, and Tune resumes it as it started: the limit would be "
                          "ignored; resume it without one")


def _write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    if isinstance(fs, pafs.LocalFileSystem):  # never a half-written file: write, then rename
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:  # object stores make an object visible only once it is complete
        with fs.open_output_stream(path) as out:
            out.write(text.encode())


def read_runs(fs: pafs.FileSystem, path: str) -> tuple[list[float], dict | None]:
    """(the seconds of each earlier run, the driver running the experiment now or None) of a
    ``runs.json``; ([], None) where there is none or it is unreadable (with a warning)."""
    if not _exists(fs, path):
        return [], None
    try:
        with fs.open_input_stream(path) as f:
            state = json.loads(f.read())
        driver = state.get("driver")
        return [float(t) for t in state["runs"]], driver if isinstance(driver, dict) and "at" in driver else None
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # only figures depend on it: go on
        log.warning("%s is unreadable (%s): the summary counts only this run's time", path, e)
        return [], None


def live_driver(driver: dict | None) -> bool:
    """Whether the driver a ``runs.json`` names still runs its experiment (``liveness.live``: it
    updates the file every 10 s)."""
    return liveness.live(driver)


def driver_text(driver: dict) -> str:
    """``process 123 on host, last seen 4 s ago``."""
    return liveness.seen_text(driver)


def _running_driver(fs: pafs.FileSystem, exp: str) -> dict | None:
    """The driver that ``runs.json`` names as running the experiment now, if it is alive (``live_driver``)."""
    _, driver = read_runs(fs, f"{exp}/{RUNS}")
    return driver if live_driver(driver) else None


def check_not_running(fs: pafs.FileSystem, exp: str, shown: str) -> None:
    """Refuse to resume an experiment that a driver is still running (``live_driver``): two
    drivers on one experiment would both run its trials and overwrite each other's state."""
    driver = _running_driver(fs, exp)
    if driver:
        raise ConfigError(
            f"{shown}: a driver is still running this experiment ({driver_text(driver)}); let it "
            "finish or stop it (Ctrl-C) before --resume" + liveness.retry_text(driver)
        )


def _report_command(shown: str) -> str:
    """`mixsearch report SHOWN` to point a user at (at a URI too: report copies it down)."""
    return f"`mixsearch report {shown}`"


def _finished_text(shown: str) -> str:
    return f"finished: nothing to resume: {_report_command(shown)} shows what it found"


def read_summary(fs: pafs.FileSystem, path: str) -> Summary:
    """A ``summary.json`` as the ``Summary`` that was written. Raises ConfigError for one that
    is not (a copy cut short, an edit)."""
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read())
        return Summary(**{**data, "trials": [TrialSummary(**t) for t in data["trials"]]})
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{path}: not a mixsearch summary ({type(e).__name__}: {e})") from None


def _existing(fs: pafs.FileSystem, exp: str, shown: str) -> str:
    """What a new run would overwrite, and what to do instead."""
    report = _report_command(shown)
    if _exists(fs, f"{exp}/{SUMMARY}"):
        return f"an experiment of this name has finished ({report}); give another --name to search again"
    driver = _running_driver(fs, exp)
    if driver:
        return (f"an experiment of this name is running ({driver_text(driver)}); {report} shows how far it is, "
                "or give another --name")
    return "an unfinished experiment of this name exists; pass --resume to finish it, or --name NEW"


class RunClock:
    """This run's time, kept in ``runs.json`` beside the experiment after the times of the runs
    before it, so that a resumed experiment's summary counts them all, with this driver's host and
    pid while it runs (``check_not_running``).

    Written when the search starts, every ``every`` seconds while it runs (a killed run counts up
    to its last write) and when it ends, however it ends (an error or Ctrl-C included)."""

    def __init__(self, fs: pafs.FileSystem, exp: str, started: float, every: float = 10.0):
        self._fs, self._path, self._started = fs, f"{exp}/{RUNS}", started
        self.earlier, _ = read_runs(fs, self._path)
        self.deadline: float | None = None  # search.time_limit's, for `mixsearch report` to show
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(every,), daemon=True)

    def _write(self, running: bool = True) -> list[float]:
        now = time.time()
        runs = [*self.earlier, round(now - self._started, 1)]
        driver = {**liveness.stamp(), "at": now, "deadline": self.deadline} if running else None
        _write_text(self._fs, self._path, json.dumps({"runs": runs, "driver": driver}))
        return runs

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self._write()
            except OSError as e:  # storage briefly unreachable: the next tick or the end writes it
                log.warning("could not record the run's time in %s: %s", self._path, e)

    def finish(self) -> list[float]:
        """Stop the clock; the time of every run, this one last, as written to ``runs.json``."""
        self._stop.set()
        self._thread.join()
        return self._write(running=False)

    def __enter__(self) -> RunClock:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._stop.is_set():  # ended before finish(): an error or Ctrl-C
            self.finish()


def tpe_sampler(seed: int, num_samples: int) -> optuna.samplers.TPESampler:
    """TPE as the search uses it: multivariate (it models how knobs interact, e.g. instructions
    and learning rate), with a constant liar so concurrent trials are not suggested alike."""
    import warnings

    with warnings.catch_warnings():  # both options are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(1, min(10, num_samples // 2)), multivariate=True, constant_liar=True,
        )


def asha_scheduler(cfg: Config):
    """The search's early stopping: ASHA over epochs, ranking trials at its rungs by
    ``search.stop_by``. At the first rungs exact match is near zero for every trial and ranks
    them by chance, while the loss on the same unseen answers already ranks them as their final
    accuracy will (README, "Benchmarks"); the searcher's objective stays ``unseen_accuracy``."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration", metric=cfg.search.stop_by, mode=STOP_BY_MODE[cfg.search.stop_by],
        max_t=cfg.training.epochs, grace_period=min(cfg.search.grace_period, cfg.training.epochs),
        reduction_factor=cfg.search.reduction_factor,
    )


def _search_algorithm(cfg: Config, exp: str):
    """(search_alg, param_space, num_samples) for Tune: TPE with its Optuna study, or a grid."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from search.searcher import MultiFidelityOptunaSearch
    from search.space import DefineByRun, adaptations, grid, to_params
    from search.study import study_storage

    if cfg.search.algorithm == "grid":  # every combination once; no Optuna study
        return BasicVariantGenerator(max_concurrent=cfg.search.max_concurrent), grid(cfg.search.space), 1
    proposals = previous_proposals(cfg) if cfg.search.start_from else []
    for i, c in enumerate(proposals, 1):
        if notes := adaptations(c, cfg.search.space):
            log.info("search.start_from: proposal %d of %d: %s", i, len(proposals), "; ".join(notes))
    points = [to_params(c, cfg.search.space) for c in proposals]
    sampler = tpe_sampler(cfg.search.seed, cfg.search.num_samples)
    metric, mode = METRIC, "max"
    if cfg.search.pareto:
        from search.searcher import COST_METRIC

        metric, mode = [METRIC, COST_METRIC[cfg.search.pareto]], ["max", "min"]
    searcher = MultiFidelityOptunaSearch(
        DefineByRun(cfg.search.space), metric=metric, mode=mode, sampler=sampler,
        study_name=cfg.name, storage=study_storage(cfg.search.study_storage, exp),
        max_epochs=cfg.training.epochs, pareto=cfg.search.pareto, points_to_evaluate=points or None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=cfg.search.max_concurrent), None, cfg.search.num_samples


def previous_proposals(cfg: Config) -> list[dict[str, Any]]:
    """The trial configs proposed by the surrogate of ``search.start_from``'s experiment.

    Raises ConfigError when that experiment has no summary or its summary no proposals.
    """
    where = cfg.search.start_from
    path = where if where.endswith(".json") else f"{where.rstrip('/')}/{SUMMARY}"
    try:
        fs, inner = pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), str(resolve(path)))
    except (OSError, pa.ArrowException) as e:
        raise ConfigError(f"search.start_from: cannot reach {where}: {e}") from None
    try:
        with fs.open_input_stream(inner) as f:
            summary = json.loads(f.read())
    except (FileNotFoundError, OSError) as e:
        folder = inner.rsplit("/", 1)[0]
        if not where.endswith(".json") and _exists(fs, f"{folder}/tuner.pkl"):  # an experiment, unfinished
            raise ConfigError(f"search.start_from: {where} has no {SUMMARY} yet (it is running, or was "
                              "interrupted: finish it with --resume), so no proposals to start from") from None
        inside = _experiments_in(fs, folder) if not where.endswith(".json") else []
        hint = (f" (it holds the experiments {', '.join(inside)}: pass one, e.g. {where.rstrip('/')}/{inside[0]})"
                if inside else "")
        raise ConfigError(f"search.start_from: cannot read {path}: {e}{hint}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"search.start_from: {path}, line {e.lineno}: not valid JSON: {e.msg}") from None
    proposals = (summary.get("surrogate") or {}).get("proposals") or []
    if not proposals:
        why = (summary.get("surrogate") or {}).get("error", "the summary has no surrogate")
        raise ConfigError(f"search.start_from: {path} proposes nothing ({why})")
    return [p["config"] for p in proposals]


class Interrupted(RuntimeError):
    """The search ended before its trials did (Ctrl-C): the experiment is saved, not summarized."""


def check_run(cfg: Config, *, resume: bool, source: str) -> tuple[pafs.FileSystem, str, str, str, Config]:
    """Every check of a run that needs no Ray. Returns the experiment's filesystem, path and name
    as shown, how the run starts: "new", "resume", or "finished" (``--resume`` of an experiment
    with a summary: nothing to run), and the config as the experiment runs it (a resumed one with
    the keys added since it started as it ran them). ``--resume`` with nothing to resume starts it."""
    try:
        fs, exp, shown = experiment_location(cfg)
    except (OSError, pa.ArrowException) as e:  # an unknown scheme, a bucket out of reach, no credentials
        raise ConfigError(f"{setting_location(cfg, source, ('storage_path',))}: cannot reach "
                          f"{cfg.storage_path}: {e}") from None
    # Never overwrite an experiment. --resume finishes one, or starts it if the driver died
    # before Tune wrote anything (so a retried job can always pass --resume).
    if not resume and _has_content(fs, exp):
        raise ConfigError(f"{shown}: {_existing(fs, exp, shown)}")
    if resume and not _exists(fs, f"{exp}/tuner.pkl"):
        log.info("nothing to resume at %s: starting the experiment", shown)
        resume = False
    if resume:
        check_not_running(fs, exp, shown)
        started = check_resumed_config(cfg, source)
        cfg = _as_started(cfg, started)
        if _exists(fs, f"{exp}/{SUMMARY}"):
            # A retried job's --resume: restoring Tune would only rewrite the summary, its own
            # seconds added, and need every input (the pool, the model) to be there still.
            return fs, exp, shown, "finished", cfg
        _check_limit_kept(started, shown, cfg, source)
    if cfg.search.study_storage:
        from search.study import expand_secrets

        expand_secrets(cfg.search.study_storage)  # a missing variable
    if cfg.search.start_from and not resume:
        previous_proposals(cfg)  # a missing or empty previous experiment
    check_inputs(cfg, source)  # a files corpus's missing files, an unloadable hub model, unwritable folders
    return fs, exp, shown, "resume" if resume else "new", cfg


def _as_started(cfg: Config, started: dict[str, Any] | None) -> Config:
    """``cfg`` with each key of ``ADDED_SINCE`` as the experiment ran it (``started``: its saved
    config, flattened; None if it saved none): Tune resumes it so, whatever the config says."""
    for key, before in ADDED_SINCE.items():
        section, leaf = key.split(".")
        part = getattr(cfg, section)
        cfg = cfg.model_copy(update={section: part.model_copy(update={leaf: (started or {}).get(key, before)})})
    return cfg


def check_against_pool(cfg: Config, pool: Path, source: str) -> tuple[Config, Manifest]:
    """The checks of a run that need its prepared pool (the space against its domains and
    instructions, the rows against max_length). Returns ``cfg`` with ``{simplex: all}`` spelt
    out as the pool's domains, and the pool's manifest."""
    from search.pool import Manifest

    manifest = Manifest.load(pool)
    cfg = with_pool_domains(cfg, manifest.domains, source)
    check_space_against_pool(cfg, manifest.rules(), source)
    check_rows_fit(cfg, pool, source)
    return cfg, manifest


def describe_run(cfg: Config, *, resume: bool = False, source: str = "config") -> str:
    """What ``run_search`` would do with this config (``mixsearch run --dry-run``), once its
    checks pass, and those against the pool too when the pool is already prepared. Starts no Ray
    and writes nothing."""
    from search.pool import MANIFEST, pool_path

    fs, exp, shown, start, cfg = check_run(cfg, resume=resume, source=source)
    if start == "finished":
        return f"experiment: {shown} ({_finished_text(shown)})"
    resume = start == "resume"
    pool = pool_path(cfg)
    lines = [f"experiment: {shown} ({'resumed: its unfinished trials run' if resume else 'new'})"]
    if cfg.corpus.source == "files":
        from search.ingest import count_files
        from search.pool import corpus_files

        notes: list[str] = []
        files = corpus_files(cfg, notes)
        lines.append(f"corpus: {count_files(len(files))}" + "".join(f"\n  {n}" for n in notes))
    if (pool / MANIFEST).exists():
        cfg, manifest = check_against_pool(cfg, pool, source)
        lines.append(f"pool: {pool} (prepared: {sum(manifest.rules().values())} training instructions "
                     f"in {len(manifest.domains)} domains)")
    else:
        lines.append(f"pool: {pool} (not prepared: the run prepares it first; the space is checked against it then)")
    s, epochs = cfg.search, cfg.training.epochs
    if s.algorithm == "grid":
        trials, how = s.space.grid_points(), "grid: every combination once"
    else:
        trials, how = s.num_samples, f"TPE, seed {s.seed}"
    cost = {"budget": "the data budget", "compute": "the examples trained"}.get(s.pareto or "")
    objective = f"; two objectives: {METRIC} up, {cost} down" if cost else ""
    lines.append(f"search: {how}, {trials} trials, {s.max_concurrent} at a time{objective}")
    if s.start_from and not resume:
        lines.append(f"first: the {len(previous_proposals(cfg))} proposals of {s.start_from}")
    lines.append(f"training: at most {epochs} epochs a trial ({trials * epochs} in all); ASHA may stop a trial "
                 f"after {min(s.grace_period, epochs)}, reduction factor {s.reduction_factor:g}, "
                 f"ranking trials by {s.stop_by}")
    if s.time_limit is not None:
        spent = sum(read_runs(fs, f"{exp}/{RUNS}")[0]) if resume else 0.0
        left = f" ({duration_text(max(0.0, s.time_limit - spent))} left after the earlier runs)" if spent else ""
        lines.append(f"time limit: {duration_text(s.time_limit)}{left}; trials running then end where they are")
    r = cfg.resources_per_trial
    lines.append(f"each trial: {r.cpu:g} CPU, {r.gpu:g} GPU, on {cfg.ray.address or 'a local Ray cluster'}")
    return "\n".join(lines + ["space:"] + [f"  {line}" for line in s.space.describe()])


def _deadline(cfg: Config, started: float, earlier: list[float], source: str) -> float | None:
    """When this run must stop (a ``time.time()``): ``search.time_limit`` less the earlier runs'
    time, counted from this run's start; None without a limit."""
    limit = cfg.search.time_limit
    if limit is None:
        return None
    left = limit - sum(earlier)
    if left <= 0:
        log.warning("%s: the earlier runs took %s of the %s: the search ends now, with what it has; "
                    "raise it to run on", setting_location(cfg, source, ("search", "time_limit")),
                    duration_text(sum(earlier)), duration_text(limit))
    return started + left


def _driver_log(cfg: Config, exp: str, shown: str) -> str:
    """Where the driver's output goes once its terminal hangs up: beside the experiment's
    results, or for results in an object store, a local file named after the experiment."""
    if not is_uri(shown):
        return f"{exp}/driver.log"
    return os.path.join(tempfile.gettempdir(), f"mixsearch-{cfg.name}-{os.getpid()}.log")


def run_search(cfg: Config, *, resume: bool = False, source: str = "config") -> Summary:
    """Run (or, with resume, finish) the experiment of this config; return its summary (with
    resume, a finished experiment's as it was written: nothing runs and nothing is rewritten).

    Raises ``Interrupted`` when Tune was stopped (SIGINT) before every trial finished; then no
    ``summary.json`` is written, so the experiment reads as unfinished until ``--resume``. At
    ``search.time_limit`` the search ends and is summarized with what it found (``out_of_time``)."""
    from ray import tune

    from search import stopping
    from search.pool import prepare, reading

    fs, exp, shown, start, cfg = check_run(cfg, resume=resume, source=source)
    if start == "finished":
        log.info("%s: %s", shown, _finished_text(shown))
        return read_summary(fs, f"{exp}/{SUMMARY}")
    resume = start == "resume"
    started = time.time()
    clock = RunClock(fs, exp, started)
    clock.deadline = _deadline(cfg, started, clock.earlier, source)
    stopping.arm(clock.deadline)  # before the searcher exists (stopping.watch)
    # torch and transformers take seconds to import and the driver needs them only to hand Tune
    # the trainable: import them while the local cluster starts (about 1.7 s less per search).
    importer = threading.Thread(target=importlib.import_module, args=("trainables.train",), daemon=True)
    importer.start()
    with contextlib.ExitStack() as on_exit:
        try:
            init_ray(cfg)
            # After ray.init, which sets a handler of its own that exits mid-step without a word.
            on_exit.enter_context(stopping.signals_as_ctrl_c(log_path=_driver_log(cfg, exp, shown)))
            # A trial stopped for a NaN loss reports its unseen_loss as NaN; numpy warns when every
            # result at an ASHA rung is NaN (there is no cutoff yet, and the next trial goes on).
            on_exit.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
            _check_resources(cfg)
            pool = prepare(cfg)
            on_exit.enter_context(reading(pool, shown))  # so that prepare --force leaves it alone
            started_as = cfg
            cfg, _ = check_against_pool(cfg, pool, source)
        finally:  # also on an error: exiting mid-import (torch) would add a traceback to its one line
            if stopping.release_leaked_import_lock():  # else the import waits for it, and the join for ever
                log.debug("released the import lock an interrupt left held")
            importer.join()
        from trainables.train import trainable  # re-raises here if the import failed in the thread

        setup = trial_setup(cfg, pool)
        fn = tune.with_resources(tune.with_parameters(trainable, setup=setup), cfg.resources_per_trial.model_dump())
        if resume:
            tuner = tune.Tuner.restore(shown, trainable=fn, resume_errored=True)
        else:
            if cfg.search.grace_period >= cfg.training.epochs:  # legal (a quick run), but say what it means
                log.warning("%s: grace_period %d >= training.epochs %d: ASHA stops no trial early, every "
                            "trial trains all its epochs", key_location(source, ("search", "grace_period")),
                            cfg.search.grace_period, cfg.training.epochs)
            scheduler = asha_scheduler(cfg)
            search_alg, param_space, num_samples = _search_algorithm(cfg, exp)
            tuner = tune.Tuner(
                fn,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=search_alg,
                    scheduler=scheduler,
                    num_samples=num_samples,
                    trial_name_creator=trial_name,
                    trial_dirname_creator=trial_name,
                    # A new actor per trial costs a process and the torch/transformers imports,
                    # seconds each (benchmarks/search_overhead.py); a trial's state lives in its
                    # function, so the next trial can run in the same process.
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=cfg.name,
                    storage_path=storage_root(cfg.storage_path),
                    # Two, not one: with one, Tune snapshots the whole experiment after every checkpoint.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
                    # Always, limit or not: a resume may set one, and Tune restores what it started with.
                    stop=stopping.Deadline(),
                    callbacks=[stopping.TrialWatch()],
                    verbose=1,
                ),
            )
        if not resume:
            # As given ({simplex: all} unresolved), so that --resume compares like with like.
            _write_text(fs, f"{exp}/{CONFIG}", yaml.safe_dump(started_as.model_dump(mode="json"), sort_keys=False))
        with clock:
            results = tuner.fit()
            cut, unfinished = stopping.cut(), stopping.unfinished()
            # Tune returns normally after a Ctrl-C, with trials unfinished or not yet created; it shows
            # the running ones TERMINATED, so count those its last step had finished. Summarizing the
            # others would call them stopped early and the search done. At the time limit the search
            # is done, with what it found.
            if unfinished is None:  # Tune took no step: nothing was left to run, and nothing was stopped
                finished = results.num_terminated + results.num_errors
            else:
                finished = len(results) - len(unfinished)
            asked = max(len(results), cfg.search.num_samples if cfg.search.algorithm == "tpe" else 0)
            if cut is None and finished < asked:
                raise Interrupted(
                    f"{shown}: interrupted with {finished} of {asked} trials finished; the experiment is "
                    f"saved: {stopping.RESUME_ADVICE}"
                )
            summary = summarize(results, cfg, pool, clock.finish(), out_of_time=cut)
            _write_text(fs, f"{exp}/{SUMMARY}", summary.to_json())
        return summary
