"""Stage 2, pool: a corpus prepared once, partitioned by domain, with an unseen split.

Layout of a pool directory::

    <pool_dir>/<source>-<hash12>/
        manifest.json              per domain: rows, distinct instructions; source parameters; hashes
        train/domain=<name>/*.parquet
        unseen/domain=<name>/*.parquet

Rows are ordered by ``rule_idx`` within each file (rules are generated in random order, so any
prefix of rule ids is a random subset); this is what lets :mod:`search.mixture` read only the row
groups a trial needs. A pool is written to a temporary folder and renamed when complete, so a
crashed prepare never leaves something a later run takes as a pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from search import corpus, liveness
from search.config import Config, is_uri, resolve

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SPLITS = ("train", "unseen")
SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("rule_idx", pa.int32()),
        ("example_idx", pa.int32()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
    ]
)


# File corpora also store every reference of a row that has several (null where the output is
# the only one), each row's token ids (``<bos> prompt answer <eos>``) and the length of its prompt
# part, made once by prepare with the trial model's tokenizer.
TOKEN_SCHEMA = pa.schema([*SCHEMA, ("references", pa.list_(pa.string())), ("ids", pa.list_(pa.int32())),
                          ("prompt_len", pa.int32())])


class PoolError(RuntimeError):
    """A pool that is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class DomainStats:
    """One domain of one split. ``instructions`` counts distinct tasks (for the built-in corpus a
    rule is a task); examples per task and the entropy (bits) of rows over tasks show how evenly
    the rows are spread."""

    rows: int
    instructions: int
    examples_min: int = 0
    examples_median: float = 0.0
    examples_max: int = 0
    entropy: float = 0.0


@dataclass(frozen=True)
class Manifest:
    """What a pool holds; stored as ``manifest.json`` beside the data."""

    source: str
    params: dict
    spec_hash: str  # hash of the source and its parameters: same config, same pool
    content_hash: str  # hash of the rows themselves, in a canonical order
    train: dict[str, DomainStats]
    unseen: dict[str, DomainStats]
    examples_per_rule: int  # the most examples any task has
    created: str
    dropped: dict[str, int] = field(default_factory=dict)  # rows dropped, by reason
    faults: list[str] = field(default_factory=list)  # the first bad rows, file:line: reason
    unseen_tasks: list[str] = field(default_factory=list)  # the tasks held out (files corpora)
    top_terms: dict[str, list[str]] = field(default_factory=dict)  # clustered domains' top terms
    files: list[str] = field(default_factory=list)
    several_references: dict[str, int] = field(default_factory=dict)  # rows with more than one, by split

    @property
    def domains(self) -> list[str]:
        return list(self.train)

    def rules(self) -> dict[str, int]:
        """Distinct training instructions per domain."""
        return {d: s.instructions for d, s in self.train.items()}

    @classmethod
    def load(cls, pool: Path) -> "Manifest":
        try:
            raw = json.loads((pool / MANIFEST).read_text())
        except FileNotFoundError:
            raise PoolError(f"{pool}: no {MANIFEST}; not a prepared pool") from None
        for split in SPLITS:
            raw[split] = {d: DomainStats(**s) for d, s in raw[split].items()}
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def spec_hash(cfg: Config) -> str:
    """Hash of everything that determines the pool's content (for files: their paths, sizes and
    modification times, so an edited file makes a new pool). A files corpus whose files or task
    list are missing fails here, with an ``IngestError``."""
    if cfg.corpus.source == "files":
        from search.ingest import IngestError

        fc = cfg.corpus.files
        stamps = [(p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p, _ in corpus_files(cfg)]
        if fc.unseen.tasks_file:
            t = os.path.expanduser(fc.unseen.tasks_file)
            if not os.path.isfile(t):
                raise IngestError(f"{fc.unseen.tasks_file}: no such file (corpus.files.unseen.tasks_file)")
            stamps.append((os.path.abspath(t), os.path.getsize(t), os.stat(t).st_mtime_ns))
        # Token ids are stored, so the tokenizer and the length limit are part of the spec.
        tokens = {"tokenizer": cfg.model.pretrained or "char", "max_length": cfg.model.max_length}
        # Version 2: a list of references is read (version 1 dropped such rows as bad).
        spec = {"source": "files", "params": fc.model_dump(mode="json"), "files": stamps, "tokens": tokens, "version": 2}
    else:
        spec = {
            "source": cfg.corpus.source,
            "params": cfg.corpus.string_rewrite.model_dump(mode="json"),
            "generator_version": corpus.GENERATOR_VERSION,
        }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def corpus_files(cfg: Config, notes: list[str] | None = None) -> list[tuple[str, str]]:
    """(path, format) of the files of a files corpus (``ingest.list_files``), never those under
    the pool_dir or a local storage_path: a pool or results written inside the corpus folder are
    not corpus."""
    from search.ingest import list_files

    skip = [resolve(cfg.corpus.pool_dir)] + ([] if is_uri(cfg.storage_path) else [resolve(cfg.storage_path)])
    return list_files(cfg.corpus.files, notes, tuple(skip))


def pool_path(cfg: Config) -> Path:
    """Where the pool of this config lives (one folder per spec hash)."""
    return resolve(cfg.corpus.pool_dir) / f"{cfg.corpus.source}-{spec_hash(cfg)[:12]}"


def _expand(batch: dict, params: corpus.StringRewriteParams) -> dict:
    """Ray Data batch function: rules in, their examples out (columns of SCHEMA plus domain)."""
    rows: list[dict] = []
    for domain, pattern, replacement, split, idx in zip(
        batch["domain"], batch["pattern"], batch["replacement"], batch["split"], batch["rule_idx"]
    ):
        rule = corpus.Rule(str(domain), str(pattern), str(replacement), str(split), int(idx))
        count = params.examples_per_rule if rule.split == "train" else params.unseen_examples_per_rule
        rows.extend(corpus.generate_examples(rule, count, params))
    return {k: [r[k] for r in rows] for k in ("domain", *SCHEMA.names)}


def longest_row_chars(pool: Path) -> int:
    """The most characters of instruction, input and output together in any row of the pool."""
    longest = 0
    for split in SPLITS:
        columns = ["instruction", "input", "output"]
        for b in pads.dataset(pool / split, format="parquet").to_batches(columns=columns):
            chars = pc.add(pc.add(pc.utf8_length(b["instruction"]), pc.utf8_length(b["input"])),
                           pc.utf8_length(b["output"]))
            longest = max(longest, pc.max(chars).as_py() or 0)
    return longest


def read_split(pool: Path, split: str, domain: str | None = None, filter=None) -> pa.Table:
    """Read a split (optionally one domain) with pyarrow, sorted by (domain, rule_idx, example_idx)."""
    base = pool / split
    if domain is not None:
        # Pools of file corpora also hold token ids; the files found once, read with the schema.
        found = pads.dataset(base / f"domain={domain}", format="parquet")
        ds = pads.dataset(found.files, format="parquet",
                          schema=TOKEN_SCHEMA if "ids" in found.schema.names else SCHEMA)
        table = ds.to_table(filter=filter)
        table = table.append_column("domain", pa.array([domain] * table.num_rows, pa.string()))
    else:
        ds = pads.dataset(base, format="parquet", partitioning="hive")
        table = ds.to_table(filter=filter)
        table = table.cast(pa.schema([(f.name, pa.string() if f.name == "domain" else f.type) for f in table.schema]))
    return table.sort_by([("domain", "ascending"), ("rule_idx", "ascending"), ("example_idx", "ascending")])


def domain_stats(table: pa.Table) -> dict[str, DomainStats]:
    """Per domain of a table with ``domain`` and ``instruction`` columns: rows, distinct
    instructions, examples per instruction (min, median, max) and their entropy."""
    from search.ingest import task_stats

    counts = table.group_by(["domain", "instruction"]).aggregate([("instruction", "count")]).to_pylist()
    per: dict[str, list[int]] = {}
    for row in counts:
        per.setdefault(row["domain"], []).append(row["instruction_count"])
    return {d: DomainStats(**task_stats(c)) for d, c in sorted(per.items())}


def _content_hash(tables: dict[str, pa.Table]) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        t = tables[split]
        for col in ("domain", "task", "instruction", "input", "output"):
            h.update(split.encode() + col.encode())
            h.update("\x1f".join(t[col].to_pylist()).encode())
    return h.hexdigest()


READERS = ".readers"  # in a pool: a record per search reading it (liveness), rewritten every 10 s


@contextlib.contextmanager
def reading(pool: Path, experiment: str, every: float = 10.0) -> Iterator[None]:
    """Mark ``pool`` as read by this process's search of ``experiment`` while the block runs, so
    that ``prepare(force=True)`` does not delete it under the search's trials. The record is
    rewritten every ``every`` seconds (one not rewritten for ``liveness.STALE_SECONDS`` is of a
    search that is gone) and removed at the end."""
    mine = pool / READERS / f"{socket.gethostname()}-{os.getpid()}.json"

    def write() -> None:
        mine.parent.mkdir(exist_ok=True)
        tmp = mine.with_suffix(".tmp")
        tmp.write_text(json.dumps({**liveness.stamp(), "experiment": experiment}))
        os.replace(tmp, mine)

    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            try:
                write()
            except OSError as e:  # the next tick writes it
                log.warning("could not mark pool %s as read: %s", pool, e)

    try:
        write()
    except OSError as e:  # a pool on a read-only disk, say: nobody can rewrite it either
        log.warning("could not mark pool %s as read (prepare --force will not know this search reads it): %s", pool, e)
        yield
        return
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        mine.unlink(missing_ok=True)


def readers(pool: Path) -> list[dict]:
    """The searches reading ``pool`` now (their records, ``reading``), live ones only."""
    found = []
    for path in sorted((pool / READERS).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):  # gone meanwhile, or caught mid-write on a shared disk
            continue
        if liveness.live(record):
            found.append(record)
    return found


def check_unread(pool: Path) -> None:
    """Refuse to replace a pool that a running search reads: its trials would fail mid-epoch."""
    live = readers(pool)
    if live:
        who = "; ".join(f"{r.get('experiment')} ({liveness.seen_text(r)})" for r in live)
        raise PoolError(f"{pool}: a running search reads this pool: {who}; let it finish or stop it before "
                        f"rewriting the pool{liveness.retry_text(live[0])}")


def prepare(cfg: Config, *, force: bool = False) -> Path:
    """Write the pool of this config with a Ray Data pipeline, or reuse a matching one.

    Requires Ray to be initialised. Returns the pool directory. With ``force`` it rewrites an
    existing pool, unless a running search reads it (``PoolError``, before any work).
    """
    final = pool_path(cfg)
    want = spec_hash(cfg)
    if force and final.exists():
        check_unread(final)
    if (final / MANIFEST).exists() and not force:
        manifest = Manifest.load(final)
        if manifest.spec_hash == want:
            log.info("reusing pool %s", final)
            return final
        raise PoolError(f"{final}: holds a pool of another spec ({manifest.spec_hash[:12]}); remove it")

    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        started = time.time()
        manifest = _write_files(cfg, tmp, want) if cfg.corpus.source == "files" else _write_string_rewrite(cfg, tmp, want)
        (tmp / MANIFEST).write_text(manifest.to_json())
        if not force and (final / MANIFEST).exists() and Manifest.load(final).spec_hash == want:
            # Another search (sharing pool_dir on a cluster) wrote the same pool meanwhile, and its
            # trials may be reading it: keep it, never delete it under them.
            log.info("pool %s was written meanwhile by another prepare: reusing it", final)
            return final
        if final.exists():
            check_unread(final)  # a search may have started on the old pool meanwhile
            shutil.rmtree(final)
        tmp.rename(final)
        log.info("prepared pool %s in %.1fs", final, time.time() - started)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_files(cfg: Config, tmp: Path, want: str) -> Manifest:
    from search.ingest import prepare_files

    fc = cfg.corpus.files
    notes: list[str] = []
    files = corpus_files(cfg, notes)
    for note in notes:
        log.warning("%s", note)
    done = prepare_files(fc, files, tmp, TOKEN_SCHEMA, cfg.model.model_dump())
    for scratch in ("_stage", "_clean"):
        shutil.rmtree(tmp / scratch, ignore_errors=True)
    for split in SPLITS:  # an empty split still has its folder, so readers find it
        (tmp / split).mkdir(exist_ok=True)
    return Manifest(
        source="files", params=fc.model_dump(mode="json"), spec_hash=want, content_hash=done.content_hash,
        train={d: DomainStats(**s) for d, s in done.stats["train"].items()},
        unseen={d: DomainStats(**s) for d, s in done.stats["unseen"].items()},
        examples_per_rule=done.examples_per_task, created=_now(), dropped=done.dropped,
        faults=done.first_faults, unseen_tasks=done.unseen_tasks, top_terms=done.top_terms, files=done.files,
        several_references=done.several_references,
    )


def _write_string_rewrite(cfg: Config, tmp: Path, want: str) -> Manifest:
    import ray

    params = cfg.corpus.string_rewrite.params()
    rules = corpus.generate_rules(params)
    for split in SPLITS:
        items = [
            {"domain": r.domain, "pattern": r.pattern, "replacement": r.replacement,
             "split": r.split, "rule_idx": r.rule_idx}
            for r in rules
            if r.split == split
        ]
        # Blocks are contiguous runs of rules in id order, so each written file holds a
        # contiguous rule_idx range of one domain: row-group statistics then prune reads.
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(16, len(items) // 500)))
        ds = ds.map_batches(_expand, fn_kwargs={"params": params}, batch_format="numpy")
        ds.write_parquet(str(tmp / split), partition_cols=["domain"], row_group_size=2048)
    tables = {split: read_split(tmp, split) for split in SPLITS}
    overlap = set(tables["train"]["instruction"].to_pylist()) & set(tables["unseen"]["instruction"].to_pylist())
    if overlap:
        raise PoolError(f"unseen instructions occur in the pool: {sorted(overlap)[:5]}")
    return Manifest(
        source=cfg.corpus.source,
        params=cfg.corpus.string_rewrite.model_dump(mode="json"),
        spec_hash=want,
        content_hash=_content_hash(tables),
        train=domain_stats(tables["train"]),
        unseen=domain_stats(tables["unseen"]),
        examples_per_rule=params.examples_per_rule,
        created=_now(),
    )
