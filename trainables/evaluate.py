"""Scoring unseen tasks: exact match, token accuracy and loss in one forward pass per batch.

With teacher forcing, if the argmax at every answer position (``<eos>`` included) equals the
target, greedy decoding returns exactly the target, and only then: so exact match of greedy
generation costs a single forward pass (and one more for the other references of rows that have
several). Free-text metrics (normalized exact match, ROUGE-L) need the generated text and decode
greedily, batched.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from trainables.data import IGNORE, Encoded, batch
from trainables.tokenizer import answer_ids


@dataclass(frozen=True)
class ItemScore:
    exact: bool  # greedy decoding reproduces the answer and stops right after it
    correct_tokens: int
    answer_tokens: int
    loss_sum: float  # summed cross-entropy over answer tokens


@torch.no_grad()
def teacher_forced(model, data: Encoded, pad_id: int, batch_size: int = 256,
                   device: torch.device | str = "cpu", autocast=nullcontext) -> list[ItemScore]:
    """Per row: exact match, token accuracy and loss, from one forward pass per batch."""
    was_training = model.training
    model.eval()
    out: list[ItemScore] = []
    for start in range(0, len(data), batch_size):
        index = list(range(start, min(start + batch_size, len(data))))
        ids, labels = (t.to(device) for t in batch(data, index, pad_id))
        with autocast():
            logits = model(input_ids=ids).logits[:, :-1].float()
        target = labels[:, 1:]
        answer = target != IGNORE
        hit = (logits.argmax(-1) == target) & answer
        loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none"
        ).sum(dim=1)
        n_answer, n_hit = answer.sum(dim=1), hit.sum(dim=1)
        for a, h, l in zip(n_answer.tolist(), n_hit.tolist(), loss.tolist()):
            out.append(ItemScore(exact=a == h, correct_tokens=h, answer_tokens=a, loss_sum=l))
    model.train(was_training)
    return out


def exact_match_items(model, data: Encoded, pad_id: int, batch_size: int = 256) -> list[bool]:
    """Per row: would greedy decoding reproduce the answer and stop (``<eos>``) right after it?"""
    return [s.exact for s in teacher_forced(model, data, pad_id, batch_size)]


@torch.no_grad()
def generate_answers(model, tokenizer, data: Encoded, max_length: int, batch_size: int = 64,
                     device: torch.device | str = "cpu", max_new_tokens: int | None = None) -> list[str]:
    """Greedy answers to each row's prompt (left-padded batches, stopped at ``<eos>`` or after
    ``max_new_tokens``, and within ``max_length`` tokens with the prompt)."""
    was_training = model.training
    model.eval()
    answers: list[str] = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(data), batch_size):
        prompts = [ids[: int((lab == IGNORE).sum())] for ids, lab in
                   zip(data.ids[start:start + batch_size], data.labels[start:start + batch_size])]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = 1
        new_tokens = max(1, min(max_length - width, max_new_tokens or max_length))
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        answers.extend(tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
    model.train(was_training)
    return answers


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalization)."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens of the normalized texts (longest common subsequence)."""
    p, r = normalize(prediction).split(), normalize(reference).split()
    if not p or not r:
        return float(p == r)
    prev = [0] * (len(r) + 1)
    for x in p:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _by_domain(domains: list[str], values: list[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for d, v in zip(domains, values):
        groups[d].append(v)
    return {d: sum(v) / len(v) for d, v in sorted(groups.items())}


def other_references(data: Encoded, tokenizer, max_length: int) -> tuple[Encoded, list[int]]:
    """Each row's accepted answers beyond its own, after the row's prompt ids, and the row each
    belongs to. One that does not fit in ``max_length`` is left out: greedy decoding within
    ``max_length`` cannot produce it."""
    pairs = [(i, r) for i, refs in enumerate(data.references or []) for r in refs[1:]]
    ids, labels, rows, texts = [], [], [], []
    for (i, text), answer in zip(pairs, answer_ids(tokenizer, [r for _, r in pairs])):
        n = int((data.labels[i] == IGNORE).sum())
        if n + len(answer) <= max_length:
            ids.append(torch.cat([data.ids[i][:n], torch.tensor(answer, dtype=data.ids[i].dtype)]))
            labels.append(torch.tensor([IGNORE] * n + answer))
            rows.append(i)
            texts.append(text)
    return Encoded(ids, labels, [data.domains[i] for i in rows], texts), rows


def default_max_new_tokens(data: Encoded, *more: Encoded) -> int:
    """Twice the longest reference answer in tokens (of ``data`` and of ``more``, its rows' other
    references), end-of-sequence included. Generation stops
    there rather than at ``max_length``: an untrained model rarely emits ``<eos>``, and on the
    SuperNI sample (prompts up to 1,586 characters, answers up to 255) generating to
    ``max_length`` 4096 made one evaluation of 40 items take 196-209 s (7-8 s with this cap).
    An answer that long is wrong under exact match anyway; the factor leaves room for
    normalization and ROUGE-L."""
    return 2 * max((int((lab != IGNORE).sum()) for d in (data, *more) for lab in d.labels), default=1)


def evaluate(model, tokenizer, data: Encoded, *, metric: str = "exact_match", max_length: int,
             batch_size: int = 256, device: torch.device | str = "cpu", autocast=nullcontext,
             max_new_tokens: int | None = None) -> dict[str, float]:
    """Metrics of one evaluation, overall and per domain.

    ``unseen_accuracy`` is the configured metric; ``unseen_exact_match``, ``unseen_token_accuracy``
    and ``unseen_loss`` (per answer token) are always reported too. Per-domain keys are
    ``<metric>/<domain>``. The text metrics generate up to ``max_new_tokens`` per answer
    (default: ``default_max_new_tokens``).

    A row with several references (``data.references``) is scored against the one its answer
    matches best, as Super-NaturalInstructions scores its tasks: exact match if greedy decoding
    gives any of them, the best normalized match or ROUGE-L over them. Token accuracy and loss
    stay those of the row's own output, the answer it trains on.
    """
    pad = tokenizer.pad_token_id
    scores = teacher_forced(model, data, pad, batch_size, device, autocast)
    exact = [float(s.exact) for s in scores]
    others, rows = other_references(data, tokenizer, max_length)  # none without references
    for i, s in zip(rows, teacher_forced(model, others, pad, batch_size, device, autocast)):
        exact[i] = max(exact[i], float(s.exact))
    if metric == "exact_match":
        primary = exact
    else:
        answers = generate_answers(model, tokenizer, data, max_length, batch_size, device,
                                   max_new_tokens or default_max_new_tokens(data, others))
        score = {"normalized_exact_match": lambda a, r: float(normalize(a) == normalize(r)), "rouge_l": rouge_l}.get(metric)
        if score is None:
            raise ValueError(f"unknown metric {metric!r}")
        references = data.references or [[r] for r in data.answers]
        primary = [max(score(a, r) for r in refs) for a, refs in zip(answers, references)]
    out: dict[str, float] = {}
    series = {"unseen_accuracy": primary, "unseen_exact_match": exact}
    for name, values in series.items():
        out[name] = sum(values) / max(len(values), 1)
        out.update({f"{name}/{d}": v for d, v in _by_domain(data.domains, values).items()})
    # Token-level figures are ratios of sums, so long answers weigh by their length.
    groups: dict[str, list[ItemScore]] = defaultdict(list)
    for d, s in zip(data.domains, scores):
        groups[d].append(s)
    for key, items in [("", scores), *sorted(groups.items())]:
        suffix = f"/{key}" if key else ""
        tokens = sum(s.answer_tokens for s in items) or 1
        out[f"unseen_token_accuracy{suffix}"] = sum(s.correct_tokens for s in items) / tokens
        out[f"unseen_loss{suffix}"] = sum(s.loss_sum for s in items) / tokens
    return out
