"""Rows to tensors: the prompt format, tokenization and padded batches.

A row becomes ``<bos> prompt answer <eos>``; labels mask everything but the answer and
``<eos>``, so the loss is on output tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch

PROMPT = "{instruction}|{input}="
IGNORE = -100


@dataclass
class Encoded:
    """Token ids and loss labels of a set of rows, ragged (one tensor per row)."""

    ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    domains: list[str]
    answers: list[str]  # the reference outputs, for metrics on generated text

    def __len__(self) -> int:
        return len(self.ids)


def encode(rows: pa.Table, tokenizer, max_length: int) -> Encoded:
    """Tokenize rows once; rows longer than max_length raise (the config must fit its corpus)."""
    instructions = rows["instruction"].to_pylist()
    inputs = rows["input"].to_pylist()
    prompts = [PROMPT.format(instruction=i, input=x) for i, x in zip(instructions, inputs)]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(rows["output"].to_pylist(), add_special_tokens=False)["input_ids"]
    # Tokenizers without a BOS token (many pretrained ones) start at the prompt.
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    eos = tokenizer.eos_token_id
    ids, labels = [], []
    for p, a in zip(p_ids, a_ids):
        seq = [*bos, *p, *a, eos]
        if len(seq) > max_length:
            raise ValueError(f"a row of {len(seq)} tokens exceeds model.max_length={max_length}")
        ids.append(torch.tensor(seq))
        labels.append(torch.tensor([IGNORE] * (len(bos) + len(p)) + [*a, eos]))
    return Encoded(ids, labels, rows["domain"].to_pylist(), rows["output"].to_pylist())


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
