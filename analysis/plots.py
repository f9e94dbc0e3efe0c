"""Plots of a search, from the tables of ``analysis.results``: each function returns a matplotlib
Figure (shown inline in a notebook; ``fig.savefig(path)`` elsewhere).

    from analysis.results import curves, progress, front
    from analysis import plots
    plots.curves_figure(curves(exp))        # unseen accuracy and loss by epoch, one line per trial
    plots.knobs_figure(progress(exp))       # last accuracy against each searched knob
    plots.front_figure(front(exp), "budget")
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.results import METRIC

# Columns of progress() that are results, not knobs.
RESULTS = {"trial_id", "epochs", METRIC, "best_unseen_accuracy", "stopped"}


def curves_figure(cv: pd.DataFrame, metrics: tuple[str, ...] = (METRIC, "unseen_loss")) -> Figure:
    """Each of ``metrics`` the logs hold by epoch, a panel each, one line per trial; trials that
    stopped early end early. The default pair shows what the search is judged by and what ASHA
    ranks trials by (``search.stop_by``, the unseen loss by default; on a log scale): early on
    the loss already ranks trials whose exact match is still near zero. The trial with the best
    last ``unseen_accuracy`` is drawn on top, in black."""
    shown = [m for m in metrics if m in cv and cv[m].notna().any()] or [METRIC]
    fig = Figure(figsize=(6 * len(shown), 4), layout="constrained")
    by_trial = dict(tuple(cv.sort_values("epoch").groupby("trial_id", sort=True)))
    last = {trial: rows[METRIC].iloc[-1] for trial, rows in by_trial.items() if pd.notna(rows[METRIC].iloc[-1])}
    best = max(last, key=last.get) if last else None
    for i, metric in enumerate(shown, 1):
        ax = fig.add_subplot(1, len(shown), i)
        for trial, rows in by_trial.items():
            if trial != best:
                ax.plot(rows["epoch"], rows[metric], marker=".", alpha=0.5, linewidth=1, label=trial)
        if best is not None:  # drawn last, on top
            rows = by_trial[best]
            ax.plot(rows["epoch"], rows[metric], marker="o", color="black", linewidth=2, label=f"{best} (best)")
        ax.set(xlabel="epoch", ylabel=metric)
        if metric.endswith("_loss"):
            ax.set_yscale("log")  # from about 2 to 0.01: on a linear scale the late epochs are flat
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{cv['trial_id'].nunique()} trials")
    return fig


def searched_knobs(prog: pd.DataFrame) -> list[str]:
    """The numeric config columns of ``progress()`` that differ among trials, weights last."""
    knobs = [c for c in prog.columns if c not in RESULTS and pd.api.types.is_numeric_dtype(prog[c])
             and prog[c].nunique(dropna=True) > 1]
    return sorted(knobs, key=lambda c: c.startswith("weights."))


def knobs_figure(prog: pd.DataFrame) -> Figure:
    """Each trial's last ``unseen_accuracy`` against each searched knob (one panel per knob).

    Filled points ran the most epochs of any trial; hollow ones stopped earlier (their value is a
    low-fidelity one). Domain weights span [0, 1]; another knob spanning more than a factor of 10
    is drawn on a log scale."""
    knobs = searched_knobs(prog)
    cols = min(3, max(1, len(knobs)))
    rows = max(1, math.ceil(len(knobs) / cols))
    fig = Figure(figsize=(4 * cols, 3.2 * rows), layout="constrained")
    full = prog["epochs"] == prog["epochs"].max()
    for i, knob in enumerate(knobs):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.scatter(prog.loc[full, knob], prog.loc[full, METRIC], color="C0", label="ran to the end")
        ax.scatter(prog.loc[~full, knob], prog.loc[~full, METRIC], facecolors="none", edgecolors="C0",
                   label="stopped early")
        values = prog[knob].dropna()
        if knob.startswith("weights."):
            ax.set_xlim(0, 1)
        elif len(values) and values.min() > 0 and values.max() / values.min() > 10:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(5))  # long labels (0.0025) would overlap
        ax.set(xlabel=knob, ylabel=METRIC if i % cols == 0 else None)
    if not knobs:
        fig.add_subplot().text(0.5, 0.5, "no knob varies among the trials", ha="center", va="center")
    else:
        fig.axes[0].legend(fontsize="small")
    return fig


def front_figure(pf: pd.DataFrame, against: str) -> Figure:
    """The Pareto front of ``unseen_accuracy`` against the searched cost, by rising cost."""
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.step(pf[against], pf[METRIC], where="post", marker="o")
    for _, p in pf.iterrows():
        ax.annotate(p["trial_id"], (p[against], p[METRIC]), fontsize="x-small", xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlabel=against, ylabel=METRIC, title="Pareto front")
    return fig
