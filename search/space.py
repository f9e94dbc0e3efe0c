"""The search space as an Optuna define-by-run function.

Domain weights live on the simplex. Optuna has no simplex type, so each domain gets a uniform
draw ``u`` and the weights are ``-log(u) / sum(-log(u))``: normalized exponentials, i.e. a flat
Dirichlet(1), uniform over the simplex when the sampler draws ``u`` uniformly. The raw draws are
what Optuna models (``simplex_u/<domain>``); the trial reads the normalized ``weights``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from search.config import Range, Simplex, SpaceConfig

# Keeps -log(u) finite; the chance of a draw below this is negligible.
_U_MIN = 1e-12


def weights_from_uniforms(u: dict[str, float]) -> dict[str, float]:
    """Map uniform draws in (0, 1] to a point on the simplex (flat Dirichlet)."""
    e = {d: -math.log(max(x, _U_MIN)) for d, x in u.items()}
    total = sum(e.values())
    if total == 0:  # every draw exactly 1: the centre is the only sensible answer
        return {d: 1 / len(e) for d in e}
    return {d: v / total for d, v in e.items()}


def _number(trial, name: str, spec: float | Range, integer: bool) -> float | int:
    if not isinstance(spec, Range):
        return int(round(spec)) if integer else float(spec)
    if integer:
        return trial.suggest_int(name, math.ceil(spec.low), math.floor(spec.high), log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, log=spec.log)


@dataclass(frozen=True)
class DefineByRun:
    """The callable for ``OptunaSearch(space=...)``: suggests the searched knobs of one trial.

    A class rather than a closure so that Tune can pickle the searcher with the experiment's
    state, which is what ``--resume`` restores.
    """

    space: SpaceConfig

    def __call__(self, trial) -> dict[str, Any]:
        space = self.space
        if isinstance(space.weights, Simplex):
            u = {d: trial.suggest_float(f"simplex_u/{d}", _U_MIN, 1.0) for d in space.weights.simplex}
            weights = weights_from_uniforms(u)
        else:
            weights = dict(space.weights)
        return {
            "weights": weights,
            "num_instructions": _number(trial, "num_instructions", space.num_instructions, True),
            "budget": _number(trial, "budget", space.budget, True),
            "learning_rate": _number(trial, "learning_rate", space.learning_rate, False),
        }
