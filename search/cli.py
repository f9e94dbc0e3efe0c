"""The ``mixsearch`` command: one verb per stage.

    mixsearch config              print the default config (copy it, edit it)
    mixsearch prepare [CONFIG]    write (or reuse) the pool of a config
    mixsearch run [CONFIG]        prepare if needed, search, write summary.json (--dry-run: the plan)
    mixsearch report EXPERIMENT   what a search found (or, while it runs, has found), and plots
                                  (given a storage path: its experiments, a line each; --watch:
                                  again every 30 s while the search runs; at a URI, s3://...:
                                  from a local copy brought up to date)
    mixsearch export EXPERIMENT OUT   the best trial's model as a transformers model directory
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from search.config import (DEFAULT_CONFIG, ConfigError, duration_text, is_uri, load_config, not_empty,
                           parse_duration)


def versions() -> str:
    """mixsearch's version and those of the libraries whose APIs it depends on, read from the
    installed packages' metadata (importing torch would take seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{p} {of(p)}" for p in ("ray", "optuna", "transformers", "torch", "pyarrow", "pydantic"))
    return f"mixsearch {of('mixsearch')} (Python {sys.version.split()[0]}; {libraries})"


def _path(value: str) -> str:
    # `mixsearch report "$EXP"` with EXP unset would read the working directory (and `--out ""`
    # write there). --storage-path and --start-from are checked with the rest of the config.
    try:
        return not_empty(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _interval(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixsearch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=versions(),
                   help="print the versions of mixsearch and the libraries it runs on (for a bug report)")
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("config", help="print the default config")

    prep = verbs.add_parser("prepare", help="write (or reuse) the pool of a config")
    prep.add_argument("config", nargs="?", type=_path, help="YAML config (default: the built-in one)")
    prep.add_argument("--force", action="store_true", help="rewrite the pool even if it exists")

    run = verbs.add_parser("run", help="search mixtures; prepares the pool if needed")
    run.add_argument("config", nargs="?", type=_path, help="YAML config (default: the built-in one)")
    run.add_argument("--name", help="experiment name (results in STORAGE_PATH/NAME)")
    run.add_argument("--storage-path", help="where experiments are stored (a folder)")
    run.add_argument("--num-samples", type=int, help="number of trials")
    run.add_argument("--time-limit", metavar="DURATION",
                     help="stop the search after this long, every --resume counted (seconds, or 90m, 2h, 1h30m)")
    run.add_argument("--resume", action="store_true", help="finish an interrupted experiment")
    run.add_argument("--start-from", metavar="EXPERIMENT",
                     help="a previous experiment (folder or summary.json): try its surrogate's proposals first")
    run.add_argument("--dry-run", action="store_true",
                     help="check the config and its inputs and print what the run would do; start nothing")

    rep = verbs.add_parser("report", help="summarize an experiment, finished or running, and plot it; "
                                          "or list a storage path's experiments")
    rep.add_argument("experiment", type=_path,
                     help="the experiment's folder (STORAGE_PATH/NAME), or a STORAGE_PATH to list its experiments; "
                          "either may be a URI (s3://...): copied down, into $MIXSEARCH_CACHE or ~/.cache/mixsearch")
    rep.add_argument("--out", type=_path, help="where the plots go (default: EXPERIMENT/report)")
    rep.add_argument("--watch", nargs="?", const="30", metavar="INTERVAL", type=_interval,
                     help="report again every INTERVAL (default 30 s; or 10s, 2m) while the search runs; "
                          "exit 0 once it has finished, 1 if it ended unfinished")

    exp = verbs.add_parser("export", help="save a trial's trained model (the best by default) for transformers")
    exp.add_argument("experiment", type=_path, help="the experiment's folder (STORAGE_PATH/NAME), or its URI")
    exp.add_argument("out", type=_path, help="a new folder: the model, its tokenizer and mixsearch.json")
    exp.add_argument("--trial", help="a trial id (default: the best trial)")
    exp.add_argument("--model", metavar="PATH", type=_path, help="the pretrained model the trials fine-tuned, where it is "
                     "here (default: where config.yaml says; for an experiment copied from a cluster)")
    return p


# What to do after a prepare is stopped: it writes the pool elsewhere and moves it into place when done.
PREPARE_ADVICE = "nothing half-written is kept: run the same command again"


def _report(experiment: str, out: str | None, every: float | None) -> int:
    """``mixsearch report``; with ``every`` (seconds), again and again while the search runs. An
    experiment (or storage path) at a URI is copied down first, and again before each report."""
    from analysis.remote import fetch
    from analysis.report import ReportError, report
    from analysis.results import experiment_folders, is_storage_path, state

    remote = is_uri(experiment)
    local, fetched_at = experiment, None

    def refresh() -> str | None:  # the local copy brought up to date; a warning if it could not be
        nonlocal local, fetched_at
        if not remote:
            return None
        try:
            local, fetched_at = fetch(experiment), time.strftime("%H:%M:%S")
        except ValueError as e:
            if fetched_at is None:  # nothing to show
                raise ReportError(str(e)) from None
            return f"(could not copy it again: {e}; showing the copy of {fetched_at})"
        return None

    def now() -> str:  # a storage path "runs" while any of its experiments does (no trial log read)
        if is_storage_path(local):
            return "running" if any(state(e) == "running" for e in experiment_folders(local)) else "finished"
        return state(local)

    try:
        while True:
            try:
                stale = refresh()
                # Read before the report, so that the last report shown is of the search as it ended.
                standing = now() if every is not None else None
                if stale and standing != "finished":  # its runs.json is old here, not necessarily there
                    standing = "running"
                text, written = report(local, out, shown=experiment)
            except ReportError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            if every is not None and sys.stdout.isatty():  # a screen that updates in place, as watch(1)
                print("\033[H\033[2J", end="")
            elif every is not None:  # a log: each report under its time
                print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}")
            print(text)
            if written:
                print("plots: " + ", ".join(str(p) for p in written))
            if remote:
                print(stale or f"(a copy of {experiment} in {local}, made at {fetched_at})")
            if every is None:
                return 0
            if standing != "running":
                if standing == "unknown":
                    print("(no runs.json: whether a driver runs this search is unknown; stopped watching)")
                return 0 if standing == "finished" else 1
            print(f"(again every {duration_text(every)} while the search runs; Ctrl-C stops watching, not the search)",
                  flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        if every is None:
            raise
        print("\nstopped watching; the search goes on", file=sys.stderr)
        return 130


def _fetched_for_export(uri: str, trial: str | None) -> Path:
    """A local copy of the experiment at ``uri`` with the checkpoints of the trial to export."""
    from analysis.model import trial_folder
    from analysis.remote import fetch
    from analysis.results import experiment_folders, is_storage_path

    local = fetch(uri)
    if is_storage_path(local):  # named by its URI: the copy's folder is not what to pass
        names = [e.name for e in experiment_folders(local)]
        raise ValueError(f"{uri}: a storage path; it holds the experiments {', '.join(names)}: pass one, "
                         f"e.g. {uri.rstrip('/')}/{names[0]}")
    return fetch(uri, trial=trial_folder(local, trial).name)


def _overrides(args: argparse.Namespace) -> dict:
    return {"name": args.name, "storage_path": args.storage_path, "search.num_samples": args.num_samples,
            "search.start_from": args.start_from, "search.time_limit": args.time_limit}


def _unraisable_hook(previous):
    """An unraisable-exception hook (an exception in a ``__del__`` or a weakref callback, which
    Python prints and drops) for two cases, the rest passed on to ``previous``:

    - A KeyboardInterrupt (Ctrl-C, or the SIGTERM/SIGHUP handler outside Tune) raised while such a
      callback ran is delivered to the main thread again: dropped, a `mixsearch prepare` so
      interrupted (inside importlib's module-lock callback) finished its pool and exited 0.
    - ``Dataset.__del__`` reads ``_current_executor``, which ``__init__`` sets last: a Ctrl-C inside
      ``ray.data.from_items`` leaves a half-built Dataset, whose collection printed a traceback
      after the run's "interrupted" line. That error is dropped.
    """
    def hook(unraisable) -> None:
        if unraisable.exc_type is KeyboardInterrupt:
            import _thread

            # As a SIGINT, from another thread, which runs once this one lets go of the GIL, out of
            # the callback: interrupted from here, the handler would raise inside this hook, dropped
            # too (and threading.Thread.start would wait here for the thread).
            try:
                _thread.start_new_thread(_thread.interrupt_main, ())
                return
            except RuntimeError:  # the interpreter is shutting down: nothing left to interrupt
                pass
        if (isinstance(unraisable.exc_value, AttributeError) and "_current_executor" in str(unraisable.exc_value)
                and getattr(unraisable.object, "__qualname__", None) == "Dataset.__del__"):
            return
        previous(unraisable)

    hook.mixsearch = True
    return hook


def main(argv: list[str] | None = None) -> int:
    """The ``mixsearch`` command; returns its exit status (2 for bad input)."""
    if not getattr(sys.unraisablehook, "mixsearch", False):  # (main may run many times in one process)
        sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
    stopping = sys.modules.get("search.stopping")  # loaded only by verbs that start Ray
    if stopping:
        stopping.forget_interrupt()
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C in prepare, report or export: they write into place only when done
        return _interrupted()
    except BrokenPipeError:
        # The reader went away (`mixsearch report ... | head`): not an error worth a traceback.
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception:
        stopping = sys.modules.get("search.stopping")
        if stopping and stopping.interrupted():  # a library's error for the KeyboardInterrupt it caught
            return _interrupted()
        raise


def _interrupted(said: str = "interrupted") -> int:
    """Say that a verb was interrupted; the shell's status for how: 130 after Ctrl-C (SIGINT), 143
    after SIGTERM, 129 after SIGHUP."""
    print(f"\n{said}", file=sys.stderr)
    stopping = sys.modules.get("search.stopping")  # loaded only by verbs that start Ray
    if stopping:
        stopping.release_leaked_import_lock()  # Ray's threads still import while it shuts down
    return stopping.exit_status() if stopping else 130


def configure_logging() -> None:
    """This project's progress at INFO; other libraries' warnings only. Their INFO lines can
    flood a run: tensorboardX logs one per metric whose name holds a space (a SuperNI domain)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("search", "analysis", "trainables"):
        logging.getLogger(name).setLevel(logging.INFO)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    if args.verb == "config":
        sys.stdout.write(DEFAULT_CONFIG.read_text())
        return 0
    if args.verb == "report":
        return _report(args.experiment, args.out, args.watch)
    if args.verb == "export":
        from analysis.model import export

        try:
            experiment = _fetched_for_export(args.experiment, args.trial) if is_uri(args.experiment) else args.experiment
            info = export(experiment, args.out, args.trial, args.model).info
        except (ValueError, OSError) as e:  # not an experiment, no such trial, OUT taken, a model gone
            print(f"error: {e}", file=sys.stderr)
            return 2
        score = "no result logged" if info["unseen_accuracy"] is None else f"unseen_accuracy {info['unseen_accuracy']:.3f}"
        print(f"trial {info['trial_id']}, epoch {info['epoch']} ({score}): {args.out}")
        print(f"prompt: {info['prompt']!r}" + (", after the tokenizer's BOS token" if info["bos"] else ""))
        return 0
    try:
        if args.verb == "prepare":
            cfg = load_config(args.config)
            from search.driver import check_inputs, init_ray
            from search.pool import Manifest, PoolError, check_unread, pool_path, prepare

            check_inputs(cfg, args.config or str(DEFAULT_CONFIG), run=False)  # before Ray
            try:
                if args.force and pool_path(cfg).exists():
                    check_unread(pool_path(cfg))  # before Ray too
                init_ray(cfg)
                from search import stopping

                # Ray's handler would exit at once with status 15, without a word.
                with stopping.signals_as_ctrl_c("the pool's preparation", PREPARE_ADVICE):
                    pool = prepare(cfg, force=args.force)
            except PoolError as e:  # a search reads the pool; one of another spec is in its place
                print(f"error: {e}", file=sys.stderr)
                return 2
            m = Manifest.load(pool)
            print(f"pool: {pool}")
            for split in ("train", "unseen"):
                stats = getattr(m, split)
                several = m.several_references.get(split)
                print(f"{split}: {sum(s.rows for s in stats.values())} rows, "
                      f"{sum(s.instructions for s in stats.values())} instructions in {len(stats)} domains"
                      + (f"; {several} rows with several references" if several else ""))
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
        from search.driver import Interrupted, describe_run, run_search

        if args.dry_run:
            print(describe_run(cfg, resume=args.resume, source=args.config or str(DEFAULT_CONFIG)))
            return 0

        try:
            summary = run_search(cfg, resume=args.resume, source=args.config or str(DEFAULT_CONFIG))
        except (KeyboardInterrupt, Exception) as e:  # a second Ctrl-C skips Tune's last save
            from search import stopping

            if not isinstance(e, (Interrupted, KeyboardInterrupt)) and not stopping.interrupted():
                raise
            said = str(e) if isinstance(e, Interrupted) else ""  # (not a library's error: see interrupted())
            return _interrupted(said or f"interrupted: {stopping.RESUME_ADVICE}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from analysis.report import summary_text

    print("\n" + summary_text(asdict(summary)))
    return 0 if summary.best else 1  # every trial failed: nothing found, and scripts should know


if __name__ == "__main__":
    sys.exit(main())
