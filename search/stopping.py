"""How a search ended: done, interrupted (Ctrl-C, or SIGTERM), or at ``search.time_limit``.

Tune cannot say. After a Ctrl-C it stops the running trials as it stops finished ones, so its
results show them TERMINATED, and a search interrupted with its last trials running looked
done. ``TrialWatch`` records which trials were unfinished at the end of Tune's last step.

The time limit counts every run of an experiment (``runs.json``): a search interrupted after an
hour of a two-hour limit and resumed gets one more hour. When it is reached ``Deadline`` stops
the search: trials running then end at their last reported epoch (``OUT_OF_TIME`` in the
summary), trials not yet started never run, and the driver summarizes what it found.

Tune pickles its stopper and callbacks with the experiment and ``Tuner.restore`` brings back
those it started with, so the state is kept here, per driver process, and set by the driver for
each run (``arm``): a resume uses its own config's limit and the time already spent.

SIGTERM (``kill``, ``ray job stop``, a batch scheduler's notice before it kills a job) ends the
search as Ctrl-C does (``signals_as_ctrl_c``): Tune saves the experiment and the driver says how to
resume. Ray's own handler (set by ``ray.init``) exits at once, mid-step, without a word. The
line that says so is written by a thread of its own (``_listen``) as the signal arrives: Python
runs handlers in the main thread only, which may be waiting in Ray's C++ when Ray ends the process.

So does SIGHUP, a closed terminal or a dropped SSH session, which the shell sends to the driver's
whole process group: the local cluster's processes ignore it (``cluster_ignores_hangup``, around
``ray.init``), so that they outlive it and Tune can stop its trials and save; before, every process
died at once, without a word. The terminal is gone, so what the driver prints from then on goes to
a file (``driver.log`` in the experiment). Under ``nohup`` the hangup stays ignored: the search runs on.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.stopper import Stopper


@dataclass
class _State:
    deadline: float | None = None  # time.time() at which the search stops; None: no limit
    trials: list | None = None  # Tune's list of trials (it grows in place)
    unfinished: frozenset[str] | None = None  # at the end of Tune's last step; None: it took none
    cut: frozenset[str] | None = None  # unfinished when time ran out; None: it did not
    searcher: Any = None  # told how the trials the deadline ends stand (``watch``)
    ended_by: int | None = None  # the signal (SIGTERM, SIGHUP) that ended it (``signals_as_ctrl_c``)
    detached: bool = False  # output moved off the terminal after a SIGHUP


_state = _State()


def arm(deadline: float | None) -> None:
    """Start this run's record with its deadline (a ``time.time()``; None for no limit), before
    its searcher exists: the last run's end and searcher are forgotten."""
    global _state
    _state = _State(deadline=deadline)


def watch(searcher: Any) -> None:
    """The searcher that the deadline tells of the trials it ends (its ``on_time_up``, given each
    one's id and last result): Tune's stop of a whole search tells the searcher nothing, so their
    Optuna trials would stay RUNNING. Searchers call this when built and when restored, in the
    driver's process."""
    _state.searcher = searcher


def unfinished() -> frozenset[str] | None:
    """The trials not finished (running, waiting to, paused) when Tune's loop ended: empty when
    the search is done or its time ran out; None when Tune took no step (nothing was left to run)."""
    return _state.unfinished


def cut() -> frozenset[str] | None:
    """The trials unfinished when this run's time ran out, or None if the run ended otherwise."""
    return _state.cut


# What every way a run can be stopped says to do next.
RESUME_ADVICE = "run the same command with --resume to finish it"


def exit_status() -> int:
    """The shell's status for how this run was interrupted: 128 + the signal, 130 for Ctrl-C
    (SIGINT), 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (_state.ended_by or signal.SIGINT)


# How long a driver ended by a signal may take to stop (Tune saves within a second and gives its
# trials at most 5 s to stop). A SIGTERM sent to the driver's whole process group (a batch scheduler
# cancelling the job, `kill -- -PGID`) also ends the local cluster's own processes: then either
# Ray ends the driver at once (status 1) or Tune waits a minute for them before Ray gives up;
# schedulers send SIGKILL sooner (Slurm after 30 s). 20 s, not 10: on a loaded machine (the suite
# beside other work) a run SIGTERM'd while preparing its pool once took longer than 10 s to unwind;
# such a run first waits for the trainable's import (torch, transformers), which takes 5 s on an
# idle 2-core machine and 15 s beside four busy processes.
SIGTERM_GRACE_SECONDS = 20.0


def _main_thread_at() -> str:
    """Where the main thread is: its innermost frame and, if elsewhere, the innermost of this
    project's, e.g. "ray/util/placement_group.py:237 in remove_placement_group, from
    search/driver.py:867 in run_search" (a driver whose local cluster got the SIGTERM too)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return "unknown"

    def where(f) -> str:
        path = f.f_code.co_filename
        if _is_ours(path):
            short = os.path.relpath(path, _ROOT)
        elif "site-packages" + os.sep in path:  # ray/util/placement_group.py
            short = path.rsplit("site-packages" + os.sep, 1)[1]
        else:
            short = "/".join(path.split(os.sep)[-3:])
        return f"{short}:{f.f_lineno} in {f.f_code.co_name}"

    f = frame
    while f is not None and not _is_ours(f.f_code.co_filename):
        f = f.f_back
    return where(frame) if f is None or f is frame else f"{where(frame)}, from {where(f)}"


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_ours(path: str) -> bool:
    """Whether a source file is this project's (not a library's, even one in a .venv inside it)."""
    return path.startswith(_ROOT + os.sep) and "site-packages" + os.sep not in path


# What the signal lines name: the work being ended, what to do next, and where the output goes
# after a hangup (set by signals_as_ctrl_c).
_ending = ("the search", RESUME_ADVICE, os.devnull)


def _exit_if_still_running(seconds: float) -> None:
    time.sleep(seconds)
    what, advice, _ = _ending
    # Where it was stuck: a hang after SIGTERM is otherwise hard to place (and to report).
    print(f"\n{signal.Signals(_state.ended_by).name}: {what} did not end within {seconds:g} s (was its "
          f"local Ray cluster stopped too?); exiting: {advice} (it was at {_main_thread_at()})",
          file=sys.stderr, flush=True)
    sys.stdout.flush()  # os._exit skips it
    os._exit(exit_status())


def _away_from_the_terminal(path: str) -> None:
    """Point stdout and stderr, unless they are files already, at ``path``: after a hangup a
    write to the terminal fails (EIO), and Tune's next line would raise mid-save."""
    fd = None
    for std in (1, 2):
        try:
            if stat.S_ISREG(os.fstat(std).st_mode):  # `> log`: it outlives the terminal
                continue
        except OSError:
            pass
        if fd is None:
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError:  # unwritable: lose the last lines rather than fail mid-save
                path, fd = os.devnull, os.open(os.devnull, os.O_WRONLY)
            try:  # the terminal may still be there (`kill -HUP`): say where the rest goes
                os.write(2, f"\nSIGHUP: what follows is in {path}\n".encode())
            except OSError:
                pass
        os.dup2(fd, std)
    if fd is not None:
        os.close(fd)


_announcing = threading.RLock()  # re-entrant: a second signal can land inside the first's handler


def _announce(signum: int) -> None:
    """What a SIGTERM or SIGHUP does at once, once: after a hangup, move the output off the
    terminal; record the signal, say that the run ends and how to finish it, and start the clock
    after which the process exits whatever it is doing. Called from the signal listener's thread
    (``_listen``) and from the handler in the main thread, whichever comes first."""
    with _announcing:
        what, advice, log_path = _ending
        if signum == signal.SIGHUP and not _state.detached:  # (a second SIGHUP finds it done)
            _state.detached = True
            _away_from_the_terminal(log_path)
        if _state.ended_by is None:
            _state.ended_by = signum
            # os.write: a print here could land inside one to the same stream (a reentrant call).
            os.write(2, f"\n{signal.Signals(signum).name}: ending {what} as Ctrl-C does; {advice}\n".encode())
            threading.Thread(target=_exit_if_still_running, args=(SIGTERM_GRACE_SECONDS,), daemon=True).start()


def _listen(read_fd: int, signums: frozenset[int], forward_fd: int) -> None:
    """Announce each of ``signums`` as it arrives, from this thread. Python runs a signal's
    handler in the main thread, at its next bytecode; a driver's main thread waits in Ray's C++
    (``ray.wait``, placement groups) with the GIL released, and when the signal went to the whole
    process group, Ray may end the process (status 1) before it returns: the CI suite once saw the
    driver end that way without a word. The C-level handler writes each signal's number to the
    wakeup fd at once, and this thread, which needs only the GIL, reads it."""
    while True:
        try:
            data = os.read(read_fd, 64)  # (retried by Python when a signal interrupts it)
        except OSError:
            break
        if not data:  # the write end closed: the block was left
            break
        if forward_fd >= 0:  # whoever had the wakeup fd before (an event loop) still hears of them
            try:
                os.write(forward_fd, data)
            except OSError:
                pass
        for signum in data:
            if signum in signums:
                _announce(signum)
    os.close(read_fd)


def _on_signal(signum: int, frame: Any) -> None:
    _announce(signum)  # (done already if the listener came first)
    # Whatever Ctrl-C does now: inside Tuner.fit, Tune's handler ends the search after its step and
    # saves the experiment (a second signal skips that); outside, KeyboardInterrupt.
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # SIG_IGN or SIG_DFL: none set by Python
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


_interrupted = False  # a Ctrl-C (or a signal taken as one) reached signals_as_ctrl_c's block


def interrupted() -> bool:
    """Whether a Ctrl-C, or a SIGTERM or SIGHUP taken as one, reached the last ``signals_as_ctrl_c``
    block. An error raised after it is taken for the interrupt: a library may catch the
    KeyboardInterrupt and raise its own (pydantic-core's SchemaError, "KeyboardInterrupt:" inside,
    when Ctrl-C landed while Ray Data imported its models in a run's first pipeline)."""
    return _interrupted


def forget_interrupt() -> None:
    """Start afresh (``mixsearch`` runs many verbs in one process in tests and notebooks)."""
    global _interrupted
    _interrupted = False


def _noting(previous: Any):
    """A SIGINT handler that records the interrupt (``interrupted``), then does as ``previous`` did."""
    def on_sigint(signum: int, frame: Any) -> None:
        global _interrupted
        _interrupted = True
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL: none set by Python
            raise KeyboardInterrupt

    return on_sigint


@contextmanager
def signals_as_ctrl_c(what: str = "the search", advice: str = RESUME_ADVICE,
                      log_path: str = os.devnull) -> Iterator[None]:
    """Within this block a SIGTERM or a SIGHUP ends the run as Ctrl-C would, saying that it ends
    ``what`` and to ``advice`` as soon as it arrives, even while the main thread waits in C code;
    after a SIGHUP, output that went to the terminal goes to ``log_path``. Any of them, Ctrl-C
    included, is recorded (``interrupted``). A SIGHUP ignored on
    entry (``nohup``) stays ignored. Enter it after ``ray.init``, which sets its own SIGTERM
    handler; the handlers (and the signal wakeup fd) before are put back on leaving."""
    global _ending
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set one
        yield
        return
    _ending = (what, advice, log_path)
    signums = [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else [])
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it: a signal handler must not block
    forward_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    listener = threading.Thread(target=_listen, args=(read_fd, frozenset(signums), forward_fd), daemon=True,
                                name="mixsearch-signals")
    listener.start()
    before = {signum: signal.signal(signum, _on_signal) for signum in signums}
    forget_interrupt()
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:  # (ignored: a background job; it stays so)
        before[signal.SIGINT] = signal.signal(signal.SIGINT, _noting(signal.getsignal(signal.SIGINT)))
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(forward_fd)
        os.close(write_fd)  # the listener reads the end and closes its side
        listener.join(timeout=5)


def release_leaked_import_lock() -> int:
    """Release Python's global import lock where this thread holds it, once an interrupt has
    unwound; call it outside any import. A KeyboardInterrupt raised just after importlib takes that
    lock (``_imp.acquire_lock()`` in ``_get_module_lock`` or in its weakref callback, before the
    ``try`` whose ``finally`` releases it) leaves it held by the main thread, and any other
    thread's next import then waits for ever: a run stopped by Ctrl-C while preparing its pool
    hung joining the thread that imports the trainable. Outside an import nothing holds it for
    long (imports take per-module locks), so what this thread holds here is such a leak. Returns
    the levels released."""
    import _imp

    released = 0
    while True:
        try:
            _imp.release_lock()
        except RuntimeError:  # not held by this thread
            return released
        released += 1


@contextmanager
def cluster_ignores_hangup() -> Iterator[None]:
    """Processes started within this block (a local Ray cluster's, by ``ray.init``) ignore
    SIGHUP: a disposition to ignore is inherited, across exec too. A closed terminal then ends
    the search through the driver (``signals_as_ctrl_c``), not by killing its cluster under it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, before)


class Deadline(Stopper):
    """Stops the whole search at the armed deadline; never a single trial."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if _state.deadline is None or time.time() < _state.deadline:
            return False
        if _state.cut is None:  # Tune stops every unfinished trial right after this returns
            ended = [t for t in _state.trials or () if not t.is_finished()]
            _state.cut = frozenset(t.trial_id for t in ended)
            if _state.searcher is not None:
                _state.searcher.on_time_up([(t.trial_id, t.last_result) for t in ended])
        return True


class TrialWatch(Callback):
    """Keeps Tune's trials where ``Deadline`` sees them (a stopper is not given them), and which
    are unfinished after each step."""

    def on_step_begin(self, iteration: int, trials: list[Trial], **info) -> None:
        _state.trials = trials

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        _state.unfinished = frozenset(t.trial_id for t in trials if not t.is_finished())
