"""Throughput of the trainable's training loop against a bare torch loop, in the same run.

Both train the same model (same initial weights) on the same batches of the built-in corpus:

- baseline: a bare loop over pre-padded batches (forward, cross-entropy, backward, AdamW step);
- project:  ``trainables.train.train_epoch``, the exact loop trials run (batching, loss on answer
            tokens, accumulation-ready scaling, gradient clipping, one-cycle schedule).

Runs alternate (bare, project, bare, project, ...) so drift on the machine hits both alike; the
median of the repeats is reported. Tokens are real tokens (padding excluded).

With a CUDA device present it also trains a ~0.5B-parameter GPT-2 built from a config in bf16
autocast and reports tokens/s and model FLOPs utilization (6 * params * tokens/s over the GPU's
peak dense bf16 FLOP/s).

    python benchmarks/trainable_throughput.py           # full
    python benchmarks/trainable_throughput.py --quick   # smaller

The last line printed is one JSON object; ``ratio`` is project tokens/s over baseline tokens/s.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import corpus  # noqa: E402
from search.config import StringRewriteConfig  # noqa: E402
from trainables.data import IGNORE, batch, encode  # noqa: E402
from trainables.model import build_model  # noqa: E402
from trainables.tokenizer import char_tokenizer  # noqa: E402
from trainables.train import train_epoch  # noqa: E402

# Peak dense bf16 tensor FLOP/s by device name (vendor data sheets, SXM parts).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def rows(n: int) -> pa.Table:
    params = StringRewriteConfig(input_length=8).params()
    out = []
    for rule in corpus.generate_rules(params):
        if rule.split == "train":
            out.extend(corpus.generate_examples(rule, 10, params))
        if len(out) >= n:
            break
    return pa.Table.from_pylist(out[:n])


def bare_loop(model, batches, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for ids, labels in batches:
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def project_loop(model, data, order, batch_size: int, pad: int, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = -(-len(data) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    train_epoch(model, opt, sched, data, order, batch_size=batch_size, accum=1, pad_id=pad,
                device=torch.device("cpu"))


def cpu_figures(n_rows: int, repeats: int, batch_size: int = 64) -> dict:
    torch.set_num_threads(1)  # as a trial with resources_per_trial.cpu = 1 runs
    tok = char_tokenizer()
    data = encode(rows(n_rows), tok, 64)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    batches = [batch(data, order[s : s + batch_size], tok.pad_token_id) for s in range(0, len(data), batch_size)]
    tokens = sum(len(t) for t in data.ids)
    torch.manual_seed(0)
    init = build_model({"n_layer": 2, "n_embd": 96, "n_head": 4}, 64, tok)
    # Warm up both paths once (allocator, kernels) before timing.
    bare_loop(copy.deepcopy(init), batches[:5], 3e-3)
    project_loop(copy.deepcopy(init), data, order[: 5 * batch_size], batch_size, tok.pad_token_id, 3e-3)
    times = {"bare": [], "project": []}
    for _ in range(repeats):
        for name in ("bare", "project"):
            model = copy.deepcopy(init)
            began = time.perf_counter()
            if name == "bare":
                bare_loop(model, batches, 3e-3)
            else:
                project_loop(model, data, order, batch_size, tok.pad_token_id, 3e-3)
            times[name].append(time.perf_counter() - began)
    bare, project = (tokens / statistics.median(times[k]) for k in ("bare", "project"))
    return {"cpu_rows": n_rows, "cpu_repeats": repeats, "baseline_tokens_per_s": round(bare),
            "trainable_tokens_per_s": round(project), "ratio": round(project / bare, 3)}


def gpu_figures(steps: int) -> dict:
    """~0.5B-parameter GPT-2 from a config, bf16 autocast, the trainable's loop, on the GPU."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainables.data import Encoded

    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    cfg = GPT2Config(n_layer=24, n_embd=1280, n_head=20, n_positions=1024, vocab_size=50304)
    model = GPT2LMHeadModel(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    seq, bs = 1024, 16
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, cfg.vocab_size, (seq,), generator=g) for _ in range(bs * steps)]
    labels = [torch.cat([torch.full((seq // 2,), IGNORE), t[seq // 2 :]]) for t in ids]
    data = Encoded(ids, labels, ["x"] * len(ids), [""] * len(ids))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=steps + 2)
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    order = torch.arange(len(data))
    train_epoch(model, opt, sched, data, order[: 2 * bs], batch_size=bs, accum=1, pad_id=0, device=device, autocast=autocast)
    torch.cuda.synchronize()
    began = time.perf_counter()
    train_epoch(model, opt, sched, data, order, batch_size=bs, accum=1, pad_id=0, device=device, autocast=autocast)
    torch.cuda.synchronize()
    tps = bs * steps * seq / (time.perf_counter() - began)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"gpu": name, "gpu_params": params, "gpu_tokens_per_s": round(tps),
            "gpu_mfu": round(6 * params * tps / peak, 3) if peak else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smaller run")
    args = p.parse_args()
    figures = cpu_figures(n_rows=1280 if args.quick else 6400, repeats=3 if args.quick else 5)
    figures.update(gpu_figures(steps=10 if args.quick else 40) if torch.cuda.is_available() else {"gpu": None})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
