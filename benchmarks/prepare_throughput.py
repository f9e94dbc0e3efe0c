"""Prepare throughput: the Ray Data pipeline against a single-process pyarrow baseline, same work.

A synthetic JSONL corpus (``--rows`` rows over 4 domains, 100 rows per task, 1% exact duplicates
and 0.1% malformed lines) is prepared twice, each in a fresh process:

- baseline: the same steps (parse, normalize and hash, write by bucket, clean, deduplicate,
  tokenize, split, write the pool) run one after the other in one process, with pyarrow;
- pipeline: ``search.pool.prepare`` on a local Ray cluster of 2 CPUs (Ray Data for the parse,
  a Ray task per bucket for the rest), timed once the cluster is up (as on a ``ray up`` cluster or
  inside ``mixsearch run``); the cluster's start is reported apart, and a rate including it.

Both produce the same pool (checked: same manifest counts). Peak RSS is sampled every 0.1 s over
the process and all its children (Ray's workers included), so shared memory counts more than once.

    python benchmarks/prepare_throughput.py                      # 1M rows
    python benchmarks/prepare_throughput.py --quick              # 200k rows
    python benchmarks/prepare_throughput.py --rows 5000000 --only pipeline

The last line printed is one JSON object; ``ratio`` is pipeline rows/s over baseline rows/s.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DOMAINS = ["math", "code", "text", "dialogue"]
WORDS = "add count sort reverse translate summarize classify extract answer rewrite list find".split()


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    """n JSONL rows: tasks of 100 rows, each task an instruction of a few words."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        line = ""
        for i in range(n):
            task = i // 100
            words = " ".join(WORDS[(task * k) % len(WORDS)] for k in range(1, 6))
            if i % 1000 == 999:
                f.write('{"instruction": "broken\n')
                continue
            if i % 100 != 50:  # else 1% exact duplicates: the previous row again
                row = {"instruction": f"Task {task}: {words} the items.", "input": f"item {i % 97} {i % 13}",
                       "output": f"{rng.choice(WORDS)} {i % 89}", "domain": DOMAINS[task % len(DOMAINS)]}
                line = json.dumps(row) + "\n"
            f.write(line)


def config(tmp: Path, corpus: Path):
    from search.config import Config

    return Config.model_validate({
        "corpus": {"source": "files", "pool_dir": str(tmp / "pools"),
                   "files": {"paths": [str(corpus)], "unseen": {"fraction": 0.1}}},
        "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "max_length": 96},
        "ray": {"num_cpus": 2},
    })


def run_baseline(cfg) -> dict:
    """The pipeline's steps, in this process, one after the other."""
    import pyarrow.dataset as pads

    from search import ingest
    from search.pool import TOKEN_SCHEMA

    fc = cfg.corpus.files
    tmp = Path(tempfile.mkdtemp(dir=Path(fc.paths[0]).parent))
    files = ingest.list_files(fc)
    import math
    import os

    buckets = max(2, math.ceil(sum(os.path.getsize(p) for p, _ in files) / ingest.BUCKET_BYTES))
    stage = tmp / "_stage"
    for i, chunk in enumerate(ingest.chunks(files)):
        for j, table in enumerate(ingest.parse({k: [v] for k, v in chunk.items()}, fc.columns, buckets)):
            pads.write_dataset(table, stage, format="parquet", partitioning=["bucket"], partitioning_flavor="hive",
                               basename_template=f"part-{i}-{j}-{{i}}.parquet", existing_data_behavior="overwrite_or_ignore")
    (tmp / "_clean").mkdir()
    tokens = {"model": cfg.model.model_dump(), "prompt": fc.prompt, "truncate": fc.truncate}
    results = [ingest.clean(str(stage), b, str(tmp / "_clean"), tokens) for b in range(buckets)]
    tasks = [t for r in results for t in r["tasks"]]
    assign = ingest.plan_tasks(fc, tasks, fc.paths[0]).assign
    for f in sorted((tmp / "_clean").glob("*.parquet")):
        ingest.place(str(f), assign, str(tmp), TOKEN_SCHEMA)
    return {"rows": sum(t["rows"] for t in tasks), "tasks": len(tasks)}


def run_pipeline(cfg) -> dict:
    from search.pool import Manifest, prepare

    m = Manifest.load(prepare(cfg))
    return {"rows": sum(s.rows for s in (*m.train.values(), *m.unseen.values())),
            "tasks": sum(s.instructions for s in (*m.train.values(), *m.unseen.values()))}


def child(which: str, corpus: str, tmp: str) -> None:
    """Run one method in this (fresh) process; print its figures as JSON.

    The pipeline is timed on a running cluster, as prepare runs on a `ray up` cluster or inside
    `mixsearch run`; starting the local cluster is timed apart (``cluster_start_s``)."""
    cfg = config(Path(tmp), Path(corpus))
    out = {}
    if which == "pipeline":
        from search.driver import init_ray

        began = time.perf_counter()
        init_ray(cfg)
        out["cluster_start_s"] = round(time.perf_counter() - began, 2)
    began = time.perf_counter()
    out.update(run_baseline(cfg) if which == "baseline" else run_pipeline(cfg))
    out["seconds"] = time.perf_counter() - began
    print(json.dumps(out))


def measure(which: str, corpus: Path, tmp: Path) -> dict:
    """Run a method in a subprocess, sampling the RSS of it and its children."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, "--child", which, str(corpus), str(tmp)],
                            stdout=subprocess.PIPE, text=True)
    peak, ps = 0, psutil.Process(proc.pid)

    def sample():
        nonlocal peak
        while proc.poll() is None:
            try:
                procs = [ps, *ps.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    out, _ = proc.communicate()
    t.join()
    if proc.returncode:
        raise SystemExit(f"{which} failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_gib"] = round(peak / 2**30, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200k rows")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--only", choices=["baseline", "pipeline"])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child)
    n = args.rows or (200_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, n)
        print(f"corpus: {n} rows, {corpus.stat().st_size / 2**20:.0f} MiB", flush=True)
        figures = {"rows": n}
        for which in ("baseline", "pipeline"):
            if args.only and which != args.only:
                continue
            r = measure(which, corpus, Path(tmp) / which)
            print(f"{which}: {r['rows']} rows kept in {r['seconds']:.1f} s, peak RSS {r['peak_rss_gib']} GiB", flush=True)
            figures[f"{which}_rows_per_s"] = round(n / r["seconds"])
            figures[f"{which}_peak_rss_gib"] = r["peak_rss_gib"]
            figures[f"{which}_kept"] = r["rows"]
            if "cluster_start_s" in r:
                figures["pipeline_cluster_start_s"] = r["cluster_start_s"]
                figures["pipeline_rows_per_s_with_cluster_start"] = round(n / (r["seconds"] + r["cluster_start_s"]))
        if not args.only:
            assert figures["baseline_kept"] == figures["pipeline_kept"], figures
            figures["ratio"] = round(figures["pipeline_rows_per_s"] / figures["baseline_rows_per_s"], 3)
            figures["ratio_with_cluster_start"] = round(
                figures["pipeline_rows_per_s_with_cluster_start"] / figures["baseline_rows_per_s"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
