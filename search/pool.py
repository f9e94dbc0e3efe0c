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

import hashlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from search import corpus
from search.config import Config, resolve

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


class PoolError(RuntimeError):
    """A pool that is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class DomainStats:
    rows: int
    instructions: int


@dataclass(frozen=True)
class Manifest:
    """What a pool holds; stored as ``manifest.json`` beside the data."""

    source: str
    params: dict
    spec_hash: str  # hash of the source and its parameters: same config, same pool
    content_hash: str  # hash of the rows themselves, in a canonical order
    train: dict[str, DomainStats]
    unseen: dict[str, DomainStats]
    examples_per_rule: int
    created: str

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
    """Hash of everything that determines the pool's content."""
    spec = {
        "source": cfg.corpus.source,
        "params": cfg.corpus.string_rewrite.model_dump(mode="json"),
        "generator_version": corpus.GENERATOR_VERSION,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


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


def read_split(pool: Path, split: str, domain: str | None = None, filter=None) -> pa.Table:
    """Read a split (optionally one domain) with pyarrow, sorted by (domain, rule_idx, example_idx)."""
    base = pool / split
    if domain is not None:
        ds = pads.dataset(base / f"domain={domain}", format="parquet", schema=SCHEMA)
        table = ds.to_table(filter=filter)
        table = table.append_column("domain", pa.array([domain] * table.num_rows, pa.string()))
    else:
        ds = pads.dataset(base, format="parquet", partitioning="hive")
        table = ds.to_table(filter=filter)
        table = table.cast(pa.schema([(f.name, pa.string() if f.name == "domain" else f.type) for f in table.schema]))
    return table.sort_by([("domain", "ascending"), ("rule_idx", "ascending"), ("example_idx", "ascending")])


def domain_stats(table: pa.Table) -> dict[str, DomainStats]:
    """Per domain: rows and distinct instructions of a table with a ``domain`` column."""
    out = {}
    for domain in sorted(set(table.column("domain").to_pylist())):
        rows = table.filter(pa.compute.equal(table["domain"], domain))
        out[domain] = DomainStats(rows=rows.num_rows, instructions=len(set(rows["instruction"].to_pylist())))
    return out


def _content_hash(tables: dict[str, pa.Table]) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        t = tables[split]
        for col in ("domain", "task", "instruction", "input", "output"):
            h.update(split.encode() + col.encode())
            h.update("\x1f".join(t[col].to_pylist()).encode())
    return h.hexdigest()


def prepare(cfg: Config, *, force: bool = False) -> Path:
    """Write the pool of this config with a Ray Data pipeline, or reuse a matching one.

    Requires Ray to be initialised. Returns the pool directory.
    """
    import ray

    final = pool_path(cfg)
    want = spec_hash(cfg)
    if (final / MANIFEST).exists() and not force:
        manifest = Manifest.load(final)
        if manifest.spec_hash == want:
            log.info("reusing pool %s", final)
            return final
        raise PoolError(f"{final}: holds a pool of another spec ({manifest.spec_hash[:12]}); remove it")

    params = cfg.corpus.string_rewrite.params()
    rules = corpus.generate_rules(params)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        started = time.time()
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
        manifest = Manifest(
            source=cfg.corpus.source,
            params=cfg.corpus.string_rewrite.model_dump(mode="json"),
            spec_hash=want,
            content_hash=_content_hash(tables),
            train=domain_stats(tables["train"]),
            unseen=domain_stats(tables["unseen"]),
            examples_per_rule=params.examples_per_rule,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        (tmp / MANIFEST).write_text(manifest.to_json())
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        log.info("prepared pool %s in %.1fs", final, time.time() - started)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
