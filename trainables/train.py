"""Stage 4, trial: fine-tune on one mixture, score unseen tasks after each epoch, report to Tune.

The trial config has the searched values at the top level (``weights``, ``num_instructions``,
``budget``, ``learning_rate``) and everything fixed for the experiment under ``setup``::

    setup: {pool: <dir>, seed: 0, model: {...ModelConfig}, training: {...TrainingConfig}}

Read top to bottom: build data, build model, (resume), train epochs, evaluate, checkpoint.
Training is deterministic for a config (no dropout, per-epoch shuffles seeded by epoch), so a
trial restored from its checkpoint continues on the trajectory it would have had.
"""

from __future__ import annotations

import hashlib
import math
import random
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import torch
from safetensors.torch import load_model, save_model

from search.mixture import Mixture, materialize
from search.pool import Manifest, read_split
from trainables.data import batch, encode, token_loss
from trainables.evaluate import exact_match
from trainables.model import build_model, char_tokenizer

STATE = "state.pt"
WEIGHTS = "model.safetensors"


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def eval_rows(pool: Path, size: int, seed: int) -> pa.Table:
    """The unseen items every trial of an experiment is scored on: one fixed subsample."""
    rows = read_split(pool, "unseen")
    if size >= rows.num_rows:
        return rows
    index = sorted(random.Random(_seed("eval", seed)).sample(range(rows.num_rows), size))
    return rows.take(pa.array(index, pa.int64()))


def mixture_of(config: dict) -> Mixture:
    """The trial's mixture, from its searched values and the experiment's seed."""
    return Mixture(
        weights=dict(config["weights"]),
        num_instructions=int(round(config["num_instructions"])),
        budget=int(round(config["budget"])),
        seed=config["setup"]["seed"],
    )


def _save(path: Path, model, optimizer, scheduler, epoch: int, examples_seen: int) -> None:
    save_model(model, str(path / WEIGHTS))  # handles GPT-2's tied embedding/head weights
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "epoch": epoch, "examples_seen": examples_seen},
        path / STATE,
    )


def run_epochs(config: dict, resume_from: Path | None = None) -> Iterator[tuple[dict, Callable[[Path], None]]]:
    """Train epoch by epoch; yield each epoch's metrics and a function that saves a checkpoint."""
    setup, tcfg = config["setup"], config["setup"]["training"]
    torch.set_num_threads(max(1, int(tcfg["cpus_per_trial"])))
    torch.manual_seed(_seed("init", setup["seed"]))
    pool = Path(setup["pool"])
    manifest = Manifest.load(pool)
    tokenizer = char_tokenizer()
    pad = tokenizer.pad_token_id
    max_length = setup["model"]["max_length"]

    # Data: the mixture's rows and the experiment's fixed unseen items, tokenized once.
    train = encode(materialize(pool, mixture_of(config), manifest), tokenizer, max_length)
    unseen = encode(eval_rows(pool, tcfg["eval_examples"], setup["seed"]), tokenizer, max_length)

    # Model and optimizer: AdamW with a one-cycle schedule over the whole run.
    model = build_model(setup["model"], tokenizer)
    lr, bs, epochs = config["learning_rate"], tcfg["batch_size"], tcfg["epochs"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tcfg["weight_decay"])
    steps_per_epoch = math.ceil(len(train) / bs)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)

    start, examples_seen = 0, 0
    if resume_from is not None:
        load_model(model, str(resume_from / WEIGHTS))
        state = torch.load(resume_from / STATE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, examples_seen = state["epoch"], state["examples_seen"]

    model.train()
    for epoch in range(start, epochs):
        began = time.perf_counter()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(_seed("epoch", setup["seed"], epoch)))
        loss_sum, tokens = 0.0, 0
        for s in range(0, len(train), bs):
            ids, labels = batch(train, order[s : s + bs], pad)
            loss = token_loss(model(input_ids=ids).logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            n = int((labels[:, 1:] != -100).sum())
            loss_sum += loss.item() * n
            tokens += n
        examples_seen += len(train)
        scores = exact_match(model, unseen, pad)
        # Order matters for the eye: Tune's live table shows the first few metrics.
        metrics = {
            "unseen_accuracy": scores.pop("unseen_accuracy"),
            "train_loss": loss_sum / tokens,
            "epoch": epoch + 1,
            "examples_seen": examples_seen,
            "epoch_seconds": time.perf_counter() - began,
            **scores,
        }
        yield metrics, partial(_save, model=model, optimizer=optimizer, scheduler=scheduler,
                               epoch=epoch + 1, examples_seen=examples_seen)


def trainable(config: dict) -> None:
    """The Tune function trainable: resumes from Tune's checkpoint, reports every epoch."""
    from ray import tune

    every = config["setup"]["training"]["checkpoint_every"]
    epochs = config["setup"]["training"]["epochs"]
    checkpoint = tune.get_checkpoint()
    with tempfile.TemporaryDirectory() as restored:
        resume_from = None
        if checkpoint is not None:
            checkpoint.to_directory(restored)
            resume_from = Path(restored)
        for metrics, save in run_epochs(config, resume_from):
            if metrics["epoch"] % every == 0 or metrics["epoch"] == epochs:
                with tempfile.TemporaryDirectory() as out:
                    save(Path(out))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(out))
            else:
                tune.report(metrics)

