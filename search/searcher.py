"""Multi-fidelity done right: trials the scheduler stops early are PRUNED in the Optuna study.

Ray's ``OptunaSearch`` reports each epoch's value to its Optuna trial, but when ASHA stops a trial
it tells Optuna the trial is COMPLETE with its last, low-fidelity value, so TPE ranks a
half-trained score as if it were final. Here such a trial is told as PRUNED instead: Optuna keeps
its intermediate values and TPE ranks it as it ranks trials pruned by Optuna's own pruners.

With ``pareto`` the study has two objectives, unseen accuracy (max) and a cost (min): the data
budget, or the examples a trial actually trained on (``compute``). Optuna keeps no intermediate
values for such studies. An early-stopped trial is PRUNED when the cost is the budget (its
accuracy is not what that budget buys) and COMPLETE when the cost is compute (it is a true point:
that much training bought that much accuracy).
"""

from __future__ import annotations

import json
from typing import Optional

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search import stopping

# The reported metric that measures each Pareto cost.
COST_METRIC = {"budget": "budget", "compute": "examples_seen"}
# How many repeats of finished configs to answer from the study before training one anyway.
REPEATS = 50


class MultiFidelityOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records early-stopped trials as PRUNED (and Tune's trial id)."""

    def __init__(self, *args, max_epochs: int, pareto: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._pareto = pareto
        self._finished: dict[str, int] = {}  # config -> number of the Optuna trial that trained it
        self._pending: dict[str, str] = {}  # Tune trial id -> its config
        stopping.watch(self)

    def suggest(self, trial_id: str) -> Optional[dict]:
        """TPE's next config; one it has already trained is not trained again.

        Training is deterministic for a config, so on discrete spaces (choices, grids) a repeat
        would spend the compute to learn what the study already holds: the repeat's Optuna trial
        gets the earlier trial's values and state, and TPE is asked again.
        """
        for attempt in range(REPEATS):
            config = super().suggest(trial_id)
            key = json.dumps(config, sort_keys=True, default=str)
            done = self._finished.get(key)
            if done is None or attempt == REPEATS - 1:  # a space this small, mostly tried: train it
                break
            ot_trial = self._ot_trials.pop(trial_id)
            earlier = self._ot_study.get_trials(deepcopy=False)[done]
            if not self._pareto:
                for step, value in earlier.intermediate_values.items():
                    ot_trial.report(value, step)
            values = earlier.values if earlier.state == TrialState.COMPLETE else None
            self._ot_study.tell(ot_trial, values, state=earlier.state)
        self._pending[trial_id] = key
        return config

    def restore(self, checkpoint_path: str) -> None:
        """Tune's snapshot of the searcher, reconciled with the study, which is newer.

        A driver killed between telling the study a trial's end (ASHA stopped it, say) and Tune's
        next snapshot leaves that trial live in the snapshot; Tune then runs it on, and writing to
        its finished Optuna trial would fail the resumed search. Such trials count as completed
        here, so their further results are ignored, as Ray's searcher does for finished trials.

        A driver killed between asking the study for a trial's config and that snapshot leaves
        an Optuna trial no Tune trial knows: nothing will ever report to it, and TPE (a constant
        liar) would count it as running for good. It is told as FAILED.
        """
        super().restore(checkpoint_path)
        stopping.watch(self)
        states = {t.number: t.state for t in self._ot_study.get_trials(deepcopy=False)}
        for trial_id, ot_trial in self._ot_trials.items():
            if trial_id not in self._completed_trials and states[ot_trial.number].is_finished():
                self._completed_trials.add(trial_id)
                self._pending.pop(trial_id, None)
        known = {ot_trial.number for ot_trial in self._ot_trials.values()}
        for number in sorted(n for n, state in states.items() if state == TrialState.RUNNING and n not in known):
            self._ot_study.tell(number, state=TrialState.FAIL)

    def on_time_up(self, trials: list[tuple[str, dict]]) -> None:
        """Tell the study how the trials that ``search.time_limit`` ended stand, given as (Tune
        trial id, last result): as if stopped early at their last epoch; one that reported none
        is PRUNED with no value (it did not fail, as a Pareto study would record it)."""
        for trial_id, result in trials:
            if trial_id in self._ot_trials and trial_id not in self._completed_trials:
                # Without an epoch it holds only what Tune fills in for a trial that reported nothing.
                self.on_trial_complete(trial_id, result if "epoch" in result else None)

    @staticmethod
    def _reported_steps(ot_trial) -> dict[int, float]:
        return ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if (not self._pareto and ot_trial is not None and trial_id not in self._completed_trials
                and result.get("training_iteration") in self._reported_steps(ot_trial)):
            return  # an epoch delivered again (Tune delivers at least once; a resume): Optuna would warn
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        key = self._pending.pop(trial_id, None)
        if key is not None and not error and result and not result.get("stopped"):
            self._finished[key] = ot_trial.number  # an error may not repeat: those are tried again
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        stopped_early = bool(
            not error and result and not result.get("stopped")
            and 0 < result.get("epoch", 0) < self._max_epochs
        )
        if self._pareto:
            return self._complete_pareto(trial_id, ot_trial, result, error, stopped_early)
        # Tune passes a trial's last result to on_trial_complete only, never to on_trial_result:
        # report it too, so the study holds every epoch and a pruned trial is ranked by its last.
        if result and not error and not result.get("stopped") and self.metric in result:
            step = result.get("training_iteration")
            if step is not None and step not in self._reported_steps(ot_trial):
                ot_trial.report(result[self.metric], step)
        if not stopped_early:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _complete_pareto(self, trial_id: str, ot_trial, result: Optional[dict], error: bool, stopped_early: bool) -> None:
        values = [result.get(m) for m in self.metric] if result else [None]
        if not result and not error:  # ended before it reported (the time limit, say): it did not fail
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        elif error or result.get("stopped") or None in values:
            # Errors, NaN or out of memory: no point on the front, nothing for TPE to rank.
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif stopped_early and self._pareto == "budget":
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, [float(v) for v in values])
        self._completed_trials.add(trial_id)
