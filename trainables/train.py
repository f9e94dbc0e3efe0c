"""Stage 4, trial: fine-tune on one mixture, score unseen tasks after each epoch, report to Tune.

A trial's config has the searched values (``weights``, ``num_instructions`` or
``examples_per_instruction``, ``budget``, ``skew``, ``learning_rate``, optionally ``weight_decay``
and ``warmup_fraction``); everything fixed for the experiment comes as ``setup``::

    setup: {pool: <dir>, seed: 0, model: {...}, training: {...}, resources: {cpu: 1, gpu: 0}}

``run_epochs`` takes both in one dict (``config["setup"]``), which is handy in tests and scripts.

Read top to bottom: build data, build model, (resume), train epochs, evaluate, checkpoint.
Training is deterministic for a config (per-epoch shuffles seeded by epoch, RNG state in the
checkpoint), so a trial restored from its checkpoint continues on the trajectory it would have had.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import random
import tempfile
import threading
import time
import weakref
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import torch

from search.mixture import Mixture, materialize
from search.pool import Manifest, read_split
from trainables.data import IGNORE, Encoded, batch, encode, token_loss
from trainables.evaluate import evaluate
from trainables.faults import maybe_inject
from trainables.model import load, load_weights, save_weights

log = logging.getLogger(__name__)

STATE = "state.pt"


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
    """The trial's mixture, from its searched values and the experiment's seed.

    With ``examples_per_instruction`` instead of ``num_instructions``, the number of distinct
    instructions is what the budget affords: ``budget // examples_per_instruction``.
    """
    budget = int(round(config["budget"]))
    if "num_instructions" in config:
        n = int(round(config["num_instructions"]))
    else:
        n = max(1, budget // int(round(config["examples_per_instruction"])))
    return Mixture(weights=dict(config["weights"]), num_instructions=n, budget=budget,
                   seed=config["setup"]["seed"], skew=float(config.get("skew", 0.0)))


def device_for(resources: dict) -> torch.device:
    """The GPU Ray assigned (it sets CUDA_VISIBLE_DEVICES, so it is cuda:0), else the CPU."""
    if resources.get("gpu", 0) > 0:
        if not torch.cuda.is_available():
            raise RuntimeError("resources_per_trial.gpu > 0 but torch sees no CUDA device in this trial")
        return torch.device("cuda", 0)
    return torch.device("cpu")


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on GPUs that support it ('auto'), or when asked; fp32 otherwise."""
    bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext


def train_epoch(model, optimizer, scheduler, data: Encoded, order: torch.Tensor, *, batch_size: int,
                accum: int, pad_id: int, device: torch.device, autocast=nullcontext) -> tuple[float, int, int]:
    """One pass over data in the given order: (summed answer-token loss, answer tokens, all tokens).

    Each optimizer step sees ``batch_size`` rows in ``accum`` micro-batches; the loss is summed
    and divided by the step's answer tokens, so accumulation gives the same gradient as one batch.
    """
    loss_sum, answer_tokens, all_tokens = 0.0, 0, 0
    micro = batch_size // accum
    for s in range(0, len(data), batch_size):
        step = order[s : s + batch_size]
        parts = [batch(data, step[m : m + micro], pad_id) for m in range(0, len(step), micro)]
        n_step = sum(int((labels[:, 1:] != IGNORE).sum()) for _, labels in parts)
        for ids, labels in parts:
            ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast():
                logits = model(input_ids=ids).logits
            loss = token_loss(logits, labels, reduction="sum")
            value = loss.item()
            if not math.isfinite(value):  # diverged: every later step would be NaN too
                raise FloatingPointError(f"training loss became {value} at step {s // batch_size + 1} of the epoch")
            (loss / n_step).backward()
            loss_sum += value
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        answer_tokens += n_step
        all_tokens += sum(len(data.ids[i]) for i in step.tolist())  # real tokens, not padding
    return loss_sum, answer_tokens, all_tokens


def _save(path: Path, model, optimizer, scheduler, epoch: int, examples_seen: int) -> None:
    save_weights(model, path)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "epoch": epoch, "examples_seen": examples_seen, "rng": rng},
        path / STATE,
    )


def _restore(path: Path, model, optimizer, scheduler) -> tuple[int, int]:
    load_weights(model, path)
    state = torch.load(path / STATE, weights_only=True)  # plain tensors and numbers, no pickled code
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["epoch"], state["examples_seen"]


def run_epochs(config: dict, resume_from: Path | None = None) -> Iterator[tuple[dict, Callable[[Path], None]]]:
    """Train epoch by epoch; yield each epoch's metrics and a function that saves a checkpoint."""
    setup, tcfg = config["setup"], config["setup"]["training"]
    resources = setup.get("resources", {"cpu": 1, "gpu": 0})
    torch.set_num_threads(max(1, int(resources["cpu"])))
    torch.manual_seed(_seed("init", setup["seed"]))
    device = device_for(resources)
    autocast = autocast_for(tcfg["precision"], device)
    pool = Path(setup["pool"])
    manifest = Manifest.load(pool)
    max_length = setup["model"]["max_length"]

    # Model and tokenizer: tiny from a config, or pretrained (optionally with LoRA adapters).
    model, tokenizer = load(setup["model"])
    model.to(device)
    pad = tokenizer.pad_token_id
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log.info("trial runs on %s (%s), autocast %s", device, where, autocast is not nullcontext)

    # Data: the mixture's rows and the experiment's fixed unseen items, tokenized once.
    train = encode(materialize(pool, mixture_of(config), manifest), tokenizer, max_length)
    unseen = encode(eval_rows(pool, tcfg["eval_examples"], setup["seed"]), tokenizer, max_length)

    # Optimizer: AdamW on the trained parameters, one-cycle schedule over the whole run.
    # Searched optimizer knobs override the experiment's training settings.
    lr, bs, epochs = config["learning_rate"], tcfg["batch_size"], tcfg["epochs"]
    decay = config.get("weight_decay", tcfg["weight_decay"])
    warmup = config.get("warmup_fraction", tcfg["warmup_fraction"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    steps_per_epoch = math.ceil(len(train) / bs)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=warmup
    )

    start, examples_seen = 0, 0
    if resume_from is not None:
        start, examples_seen = _restore(resume_from, model, optimizer, scheduler)

    model.train()
    for epoch in range(start, epochs):
        began = time.perf_counter()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(_seed("epoch", setup["seed"], epoch)))
        loss_sum, answer_tokens, all_tokens = train_epoch(
            model, optimizer, scheduler, train, order, batch_size=bs, accum=tcfg["grad_accum_steps"],
            pad_id=pad, device=device, autocast=autocast,
        )
        seconds = time.perf_counter() - began
        examples_seen += len(train)
        scores = evaluate(model, tokenizer, unseen, metric=tcfg["metric"], max_length=max_length,
                          batch_size=tcfg["eval_batch_size"], device=device, autocast=autocast,
                          max_new_tokens=tcfg["max_new_tokens"])
        # Order matters for the eye: Tune's live table shows the first few metrics.
        metrics = {
            "unseen_accuracy": scores.pop("unseen_accuracy"),
            "train_loss": loss_sum / answer_tokens,
            "epoch": epoch + 1,
            "examples_seen": examples_seen,
            "budget": len(train),
            "epoch_seconds": seconds,
            "tokens_per_second": all_tokens / seconds,
            "device": str(device),
            **scores,
        }
        yield metrics, partial(_save, model=model, optimizer=optimizer, scheduler=scheduler,
                               epoch=epoch + 1, examples_seen=examples_seen)
        maybe_inject(model)  # no-op unless fault injection is configured (tests of failure handling)


# Tune stops a trial by raising SystemExit in the trial's (daemon) thread and may end the actor's
# process right after. If the interpreter finalizes while that thread is still freeing the trial's
# tensors, the thread is ended by pthread_exit inside torch's deallocator, whose C++ frames turn
# the unwinding into std::terminate: the worker aborts ("Fatal Python error: Aborted" and a long
# stack in the search's output). At exit, give trial threads a few seconds to finish.
_trial_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
THREAD_EXIT_WAIT_S = 5.0


def wait_for_at_exit(thread: threading.Thread) -> None:
    """Make this process's exit wait (up to ``THREAD_EXIT_WAIT_S`` in all) for ``thread``."""
    _trial_threads.add(thread)


@atexit.register
def _join_trial_threads() -> None:
    deadline = time.monotonic() + THREAD_EXIT_WAIT_S
    for thread in list(_trial_threads):
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


# Failures that a retry would only repeat: the trial stops with the reason instead of erroring.
DETERMINISTIC = {FloatingPointError: "nan_loss", torch.OutOfMemoryError: "out_of_memory"}


def trainable(config: dict, setup: dict) -> None:
    """The Tune function trainable: resumes from Tune's checkpoint, reports every epoch.

    ``config`` holds the searched values; ``setup``, the same for every trial, comes through
    ``tune.with_parameters`` so it stays out of trial names, tables and the searcher's view.
    A NaN loss or running out of memory ends the trial with a final report naming the reason
    (``stopped``), scored 0; any other exception is left to Tune (retried, then ERROR).
    """
    import ray
    from ray import tune

    wait_for_at_exit(threading.current_thread())
    # Ray logs every checkpoint it persists, an INFO line per trial and epoch in the driver's
    # output; the summary names the best trial's checkpoint.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # transformers draws a "Loading weights" bar for each pretrained model it loads: one per
    # trial in the driver's output, between Tune's tables.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = {**config, "setup": setup}
    every = setup["training"]["checkpoint_every"]
    epochs = setup["training"]["epochs"]
    node = ray.get_runtime_context().get_node_id()
    checkpoint = tune.get_checkpoint()
    # What a Pareto search ranks by, as last reported: a stopped trial's final result needs them.
    costs = {"examples_seen": 0, "budget": int(round(config["budget"]))}
    with tempfile.TemporaryDirectory() as restored:
        resume_from = None
        if checkpoint is not None:
            checkpoint.to_directory(restored)
            resume_from = Path(restored)
        try:
            for metrics, save in run_epochs(config, resume_from):
                metrics["node_id"] = node
                costs = {k: metrics[k] for k in costs}
                if metrics["epoch"] % every == 0 or metrics["epoch"] == epochs:
                    with tempfile.TemporaryDirectory() as out:
                        save(Path(out))
                        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(out))
                else:
                    tune.report(metrics)
        except tuple(DETERMINISTIC) as e:
            reason = next(v for k, v in DETERMINISTIC.items() if isinstance(e, k))
            log.warning("trial stopped: %s: %s", reason, e)
            # With the costs and a loss: Tune fails the whole search on a result that lacks a
            # metric its searcher (a Pareto search's is given a cost) or scheduler was given.
            # NaN: there is no loss to rank by, and ASHA leaves NaN out of its cutoffs.
            tune.report({"unseen_accuracy": 0.0, "unseen_loss": math.nan, "stopped": reason,
                         "reason": f"{type(e).__name__}: {e}", "node_id": node, **costs})
