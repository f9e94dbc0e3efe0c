"""Fault injection for testing how the search handles failing trials. Off unless asked.

``MIXSEARCH_FAULTS=raise,nan,oom`` and ``MIXSEARCH_FAULT_DIR=<dir>`` make each listed fault fire
once, in one trial each, after that trial's first epoch of training:

- ``raise``: an ordinary exception (Tune retries the trial, then records it as ERROR);
- ``nan``:   the weights become NaN, so the next loss is NaN (detected like a real divergence);
- ``oom``:   ``torch.OutOfMemoryError``, what torch raises when a device runs out of memory.

A fault is claimed by creating ``<dir>/<fault>`` exclusively, so each fires exactly once across
all trials and processes of a cluster sharing that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

KINDS = ("raise", "nan", "oom")


def _claim() -> str | None:
    kinds = [k for k in os.environ.get("MIXSEARCH_FAULTS", "").split(",") if k]
    folder = os.environ.get("MIXSEARCH_FAULT_DIR")
    if not kinds or not folder:
        return None
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"MIXSEARCH_FAULTS: unknown fault {kind!r} (known: {', '.join(KINDS)})")
        try:
            fd = os.open(Path(folder) / kind, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return kind
    return None


def maybe_inject(model) -> None:
    """Fire this trial's injected fault, if one is configured and still unclaimed."""
    kind = _claim()
    if kind == "raise":
        raise RuntimeError("injected fault: a trial that raises")
    if kind == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory (injected fault)")
    if kind == "nan":
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
