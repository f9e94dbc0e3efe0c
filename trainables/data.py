"""Rows to tensors: the prompt format, tokenization and padded batches.

A row becomes ``<bos> prompt answer <eos>``; labels mask everything but the answer and
``<eos>``, so the loss is on output tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch

from trainables.tokenizer import PROMPT, tokenize

IGNORE = -100


@dataclass
class Encoded:
    """Token ids and loss labels of a set of rows, ragged (one tensor per row)."""

    ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    domains: list[str]
    answers: list[str]  # the outputs the ids hold, for metrics on generated text
    # Every accepted answer of each row, its own output first; None when each row has one answer.
    references: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def encode(rows: pa.Table, tokenizer, max_length: int, prompt: str = PROMPT) -> Encoded:
    """Token tensors of rows: the ids stored by prepare when the pool has them (``ids``,
    ``prompt_len``), else tokenized here. Rows longer than max_length raise (the config must fit
    its corpus; prepare drops or truncates them for file corpora)."""
    if "ids" in rows.column_names:
        seqs, prompt_lens = rows["ids"].to_pylist(), rows["prompt_len"].to_pylist()
    else:
        seqs, prompt_lens = tokenize(rows["instruction"].to_pylist(), rows["input"].to_pylist(),
                                     rows["output"].to_pylist(), tokenizer, prompt)
    ids, labels = [], []
    for seq, n in zip(seqs, prompt_lens):
        if len(seq) > max_length:
            raise ValueError(f"a row of {len(seq)} tokens exceeds model.max_length={max_length}")
        ids.append(torch.tensor(seq))
        labels.append(torch.tensor([IGNORE] * n + seq[n:]))
    answers = rows["output"].to_pylist()
    return Encoded(ids, labels, rows["domain"].to_pylist(), answers, references_of(rows, answers))


def references_of(rows: pa.Table, answers: list[str]) -> list[list[str]] | None:
    """Each row's accepted answers from the pool's ``references`` column, which prepare writes
    with the output first and each once (null where the output is the only one); None when no
    row has another."""
    if "references" not in rows.column_names or rows["references"].null_count == rows.num_rows:
        return None
    return [refs or [a] for a, refs in zip(answers, rows["references"].to_pylist())]


def batch(data: Encoded, index: list[int] | torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded on the right to the longest row of the batch (not to a global maximum).

    Right padding needs no attention mask for a causal model: real tokens never attend to the
    pads that follow them.
    """
    ids = torch.nn.utils.rnn.pad_sequence([data.ids[i] for i in index], batch_first=True, padding_value=pad_id)
    labels = torch.nn.utils.rnn.pad_sequence(
        [data.labels[i] for i in index], batch_first=True, padding_value=IGNORE
    )
    return ids, labels


def token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over answer positions (mean, or sum for accumulation)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
        ignore_index=IGNORE, reduction=reduction,
    )
