"""How a search ended: done, or interrupted (Ctrl-C).

Tune cannot say. After a Ctrl-C it stops the running trials as it stops finished ones, so its
results show them TERMINATED, and a search interrupted with its last trials running looked
done. ``TrialWatch`` records which trials were unfinished at the end of Tune's last step.

Tune pickles its callbacks with the experiment and ``Tuner.restore`` brings back those it
started with, so the record is kept here, per driver process, and started by the driver for
each run (``arm``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.tune import Callback
from ray.tune.experiment import Trial


@dataclass
class _State:
    unfinished: frozenset[str] | None = None  # at the end of Tune's last step; None: it took none


_state = _State()


def arm() -> None:
    """Start this run's record: the last run's end is forgotten."""
    global _state
    _state = _State()


def unfinished() -> frozenset[str] | None:
    """The trials not finished (running, waiting to, paused) when Tune's loop ended: empty when
    the search is done; None when Tune took no step (nothing was left to run)."""
    return _state.unfinished


class TrialWatch(Callback):
    """Records which trials are unfinished after each of Tune's steps."""

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        _state.unfinished = frozenset(t.trial_id for t in trials if not t.is_finished())
