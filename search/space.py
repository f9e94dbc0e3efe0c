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

from search.config import INTEGER_KNOBS, Choices, Range, Simplex, SpaceConfig, WeightChoices

# Keeps -log(u) finite; the chance of a draw below this is negligible.
_U_MIN = 1e-12


def weights_from_uniforms(u: dict[str, float], min_weight: float = 0.0,
                          kept: dict[str, bool] | None = None) -> dict[str, float]:
    """Map uniform draws in (0, 1] to a point on the simplex (flat Dirichlet).

    With ``kept``, dropped domains get 0 (if every domain is dropped, the one with the largest
    share is kept); ``min_weight`` is then given to each kept domain and the rest shared by the
    Dirichlet draw, so the result is uniform over the part of the simplex that respects it.
    """
    e = {d: -math.log(max(x, _U_MIN)) for d, x in u.items()}
    if kept is not None:
        live = [d for d in e if kept[d]] or [max(e, key=e.get)]
        e = {d: (v if d in live else 0.0) for d, v in e.items()}
    live = [d for d, v in e.items() if v > 0] or list(e)
    total = sum(e[d] for d in live)
    rest = 1 - min_weight * len(live)
    if total == 0:  # every draw exactly 1: the centre is the only sensible answer
        return {d: (1 / len(live) if d in live else 0.0) for d in e}
    return {d: (min_weight + rest * e[d] / total if d in live else 0.0) for d in e}


def _value(x: float, integer: bool) -> float | int:
    return int(round(x)) if integer else float(x)


def _number(trial, name: str, spec: float | Range | Choices, integer: bool) -> float | int:
    if isinstance(spec, Choices):
        return trial.suggest_categorical(name, [_value(x, integer) for x in spec.choices])
    if not isinstance(spec, Range):
        return _value(spec, integer)
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
            simplex = space.weights
            u = {d: trial.suggest_float(f"simplex_u/{d}", _U_MIN, 1.0) for d in simplex.simplex}
            kept = None
            if simplex.dropout:
                kept = {d: trial.suggest_categorical(f"keep/{d}", [True, False]) for d in simplex.simplex}
            weights = weights_from_uniforms(u, simplex.min_weight, kept)
        elif isinstance(space.weights, WeightChoices):
            index = trial.suggest_categorical("weights_choice", list(range(len(space.weights.choices))))
            weights = dict(space.weights.choices[index])
        else:
            weights = dict(space.weights)
        knobs = {k: _number(trial, k, spec, k in INTEGER_KNOBS) for k, spec in space.knobs().items()}
        return {"weights": weights, **knobs}


def grid(space: SpaceConfig) -> dict[str, Any]:
    """Tune's param_space for a grid: every combination of the choices, fixed values as they are."""
    from ray import tune

    def axis(spec: float | Choices, integer: bool):
        if isinstance(spec, Choices):
            return tune.grid_search([_value(x, integer) for x in spec.choices])
        return _value(spec, integer)

    weights = space.weights
    return {
        "weights": tune.grid_search([dict(w) for w in weights.choices]) if isinstance(weights, WeightChoices) else dict(weights),
        **{k: axis(spec, k in INTEGER_KNOBS) for k, spec in space.knobs().items()},
    }


def adaptations(config: dict[str, Any], space: SpaceConfig) -> list[str]:
    """How :func:`to_params` moves ``config`` into ``space``, one phrase per change (none when
    the config is a point of the space): a search started from another experiment's proposals
    says what it changed rather than silently trying something else."""
    notes = []
    weights = {d: x for d, x in (config.get("weights") or {}).items() if x > 0}
    outside = sorted(set(weights) - set(space.weight_domains()))
    if outside:
        notes.append(f"weights on {', '.join(outside)} dropped (not in this space)")
    if isinstance(space.weights, WeightChoices) and weights and weights not in space.weights.choices:
        notes.append("weights snapped to the nearest listed mixture")
    elif isinstance(space.weights, dict) and weights and weights != space.weights:
        notes.append("weights replaced by this space's fixed weights")
    knobs = space.knobs()
    for k, x in config.items():
        if k == "weights":
            continue
        spec = knobs.get(k)
        if spec is None:
            notes.append(f"{k} dropped (not in this space)")
        elif isinstance(spec, Range) and not spec.low <= x <= spec.high:
            notes.append(f"{k} {x:g} clipped into [{spec.low:g}, {spec.high:g}]")
        elif isinstance(spec, Choices) and x not in spec.choices:
            notes.append(f"{k} {x:g} snapped to the nearest of {spec.choices}")
        elif not isinstance(spec, (Range, Choices)) and x != spec:
            notes.append(f"{k} {x:g} replaced by this space's fixed {spec:g}")
    return notes


def to_params(config: dict[str, Any], space: SpaceConfig) -> dict[str, Any]:
    """The Optuna parameters under which :class:`DefineByRun` suggests ``config`` (or its nearest
    point in ``space``): for ``points_to_evaluate``, so a search can start from known configs.

    Weights map back to uniform draws: with the weights' excess over ``min_weight`` as the
    exponentials, ``u = exp(-e)`` gives them back exactly. Numbers are clipped into their range or
    snapped to the nearest choice; knobs the space fixes are left out.
    """
    params: dict[str, Any] = {}
    weights = dict(config.get("weights", {}))
    w = space.weights
    if isinstance(w, Simplex):
        live = [d for d in w.simplex if weights.get(d, 0.0) > 0] or list(w.simplex)
        rest = 1 - w.min_weight * len(live)
        for d in w.simplex:
            excess = max(weights.get(d, 0.0) - w.min_weight, 0.0) / rest if rest > 0 and d in live else 0.0
            # weights_from_uniforms needs some positive draw among the kept domains
            params[f"simplex_u/{d}"] = min(1.0, max(_U_MIN, math.exp(-excess))) if excess > 0 else (1.0 if d in live else 0.5)
            if w.dropout:
                params[f"keep/{d}"] = d in live
        if all(params[f"simplex_u/{d}"] == 1.0 for d in live):  # all-equal weights: any common draw
            for d in live:
                params[f"simplex_u/{d}"] = math.exp(-1.0)
    elif isinstance(w, WeightChoices):
        def distance(choice: dict[str, float]) -> float:
            return sum(abs(choice.get(d, 0.0) - weights.get(d, 0.0)) for d in set(choice) | set(weights))

        params["weights_choice"] = min(range(len(w.choices)), key=lambda i: distance(w.choices[i]))
    for k, spec in space.knobs().items():
        if k not in config or not isinstance(spec, (Range, Choices)):
            continue
        integer = k in INTEGER_KNOBS
        x = float(config[k])
        if isinstance(spec, Range):
            x = min(max(x, spec.low), spec.high)
            x = min(max(_value(x, integer), math.ceil(spec.low)), math.floor(spec.high)) if integer else x
        else:
            x = min(spec.choices, key=lambda c: abs(c - x))
        params[k] = _value(x, integer)
    return params
