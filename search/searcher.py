"""Multi-fidelity done right: trials the scheduler stops early are PRUNED in the Optuna study.

Ray's ``OptunaSearch`` reports each epoch's value to its Optuna trial, but when ASHA stops a trial
it tells Optuna the trial is COMPLETE with its last, low-fidelity value, so TPE ranks a
half-trained score as if it were final. Here such a trial is told as PRUNED instead: Optuna keeps
its intermediate values and TPE ranks it as it ranks trials pruned by Optuna's own pruners.
"""

from __future__ import annotations

from typing import Optional

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch


class MultiFidelityOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records early-stopped trials as PRUNED (and Tune's trial id)."""

    def __init__(self, *args, max_epochs: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        # Tune passes a trial's last result to on_trial_complete only, never to on_trial_result:
        # report it too, so the study holds every epoch and a pruned trial is ranked by its last.
        if result and not error and not result.get("stopped") and self.metric in result:
            step = result.get("training_iteration")
            if step is not None and step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
                ot_trial.report(result[self.metric], step)
        stopped_early = (
            not error and result and not result.get("stopped")
            and 0 < result.get("epoch", 0) < self._max_epochs
        )
        if not stopped_early:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
