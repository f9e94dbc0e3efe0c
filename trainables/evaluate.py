"""Exact match on unseen tasks in one forward pass per batch.

With teacher forcing, if the argmax at every answer position (``<eos>`` included) equals the
target, greedy decoding returns exactly the target, and only then: so this is exact match of
greedy generation, at the cost of a single forward pass.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from trainables.data import IGNORE, Encoded, batch


@torch.no_grad()
def exact_match_items(model, data: Encoded, pad_id: int, batch_size: int = 512) -> list[bool]:
    """Per row: would greedy decoding reproduce the answer and stop (``<eos>``) right after it?"""
    was_training = model.training
    model.eval()
    out: list[bool] = []
    for start in range(0, len(data), batch_size):
        index = list(range(start, min(start + batch_size, len(data))))
        ids, labels = batch(data, index, pad_id)
        pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        out.extend(((pred == target) | (target == IGNORE)).all(dim=1).tolist())
    model.train(was_training)
    return out


def exact_match(model, data: Encoded, pad_id: int, batch_size: int = 512) -> dict[str, float]:
    """``unseen_accuracy`` overall and ``unseen_accuracy/<domain>`` per domain."""
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for domain, ok in zip(data.domains, exact_match_items(model, data, pad_id, batch_size)):
        hits[domain][0] += ok
        hits[domain][1] += 1
    total = sum(h[1] for h in hits.values())
    out = {"unseen_accuracy": sum(h[0] for h in hits.values()) / max(total, 1)}
    out.update({f"unseen_accuracy/{d}": h[0] / h[1] for d, h in sorted(hits.items())})
    return out
