"""Prepare on real Ray Data: partitions, manifest, unseen split, hashes, atomic writes."""

import json
import os

import pyarrow.parquet as pq
import pytest

from search.config import load_config
from search.pool import MANIFEST, Manifest, PoolError, prepare, read_split
from tests.conftest import write_config


def test_pool_is_partitioned_by_domain_with_a_matching_manifest(small_pool):
    cfg, pool = small_pool
    sr = cfg.corpus.string_rewrite
    m = Manifest.load(pool)
    assert sorted(os.listdir(pool / "train")) == sorted(f"domain={d}" for d in sr.domains)
    assert m.params == sr.model_dump(mode="json")
    for d in sr.domains:
        files = list((pool / "train" / f"domain={d}").glob("*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        assert m.train[d].rows == rows == sr.rules_per_domain * sr.examples_per_rule
        assert m.train[d].instructions == sr.rules_per_domain
        assert m.unseen[d].instructions == sr.unseen_rules_per_domain


def test_unseen_split_is_disjoint_from_the_pool(small_pool):
    _, pool = small_pool
    train = set(read_split(pool, "train")["instruction"].to_pylist())
    unseen = read_split(pool, "unseen")
    assert unseen.num_rows > 0
    assert not train & set(unseen["instruction"].to_pylist())


def test_same_config_same_hash_and_reuse(small_pool, tmp_path):
    cfg, pool = small_pool
    m = Manifest.load(pool)
    stamp = (pool / MANIFEST).stat().st_mtime_ns
    assert prepare(cfg) == pool and (pool / MANIFEST).stat().st_mtime_ns == stamp  # reused, not rewritten
    # The same config prepared elsewhere from scratch yields the same content.
    again = prepare(load_config(write_config(tmp_path)))
    assert again != pool
    m2 = Manifest.load(again)
    assert (m2.spec_hash, m2.content_hash) == (m.spec_hash, m.content_hash)
    # A different seed is a different pool.
    other = load_config(write_config(tmp_path, {"corpus": {"string_rewrite": {"seed": 7}}}, "other.yaml"))
    assert prepare(other).name != pool.name


def test_a_failed_prepare_leaves_no_pool(ray_cluster, tmp_path, monkeypatch):
    from search import pool as pool_mod

    cfg = load_config(write_config(tmp_path))

    def broken(tables):
        raise RuntimeError("disk full")

    # Fail after the data is written but before the manifest: the worst moment.
    monkeypatch.setattr(pool_mod, "_content_hash", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(cfg)
    assert list((tmp_path / "pools").iterdir()) == []
    monkeypatch.undo()
    assert Manifest.load(prepare(cfg)).train  # and a later prepare builds it whole


def test_a_pool_written_meanwhile_by_another_prepare_is_kept(ray_cluster, tmp_path, monkeypatch):
    from search import pool as pool_mod

    cfg = load_config(write_config(tmp_path))
    theirs = prepare(cfg)
    (theirs / "their-trials-read-this").touch()
    aside = theirs.with_name("aside")
    theirs.rename(aside)
    write = pool_mod._write_string_rewrite

    def slower_than_the_other_search(*args):
        manifest = write(*args)
        aside.rename(theirs)  # the other search finishes first and its trials start reading
        return manifest

    monkeypatch.setattr(pool_mod, "_write_string_rewrite", slower_than_the_other_search)
    assert prepare(cfg) == theirs
    assert (theirs / "their-trials-read-this").exists()  # not deleted and replaced under them
    assert [p.name for p in (tmp_path / "pools").iterdir()] == [theirs.name]  # our copy removed


def test_manifest_is_json_and_a_non_pool_is_refused(small_pool, tmp_path):
    _, pool = small_pool
    raw = json.loads((pool / MANIFEST).read_text())
    assert set(raw) >= {"source", "params", "spec_hash", "content_hash", "train", "unseen"}
    with pytest.raises(PoolError, match="not a prepared pool"):
        Manifest.load(tmp_path)


def test_a_pool_a_running_search_reads_is_not_rewritten_by_prepare_force(tmp_path, capsys):
    # The record a search keeps in its pool, seen from another process as `mixsearch prepare --force` would.
    import socket
    import subprocess
    import sys
    import time

    from search.cli import main
    from search.pool import READERS, pool_path, reading, readers

    path = write_config(tmp_path)
    pool = pool_path(load_config(path))
    pool.mkdir(parents=True)
    (pool / MANIFEST).write_text("{}")
    seen = [sys.executable, "-c", f"from search.pool import readers; print(len(readers(__import__('pathlib').Path({str(pool)!r}))))"]
    with reading(pool, "results/t", every=0.1):
        assert subprocess.run(seen, capture_output=True, text=True, check=True).stdout.strip() == "1"
        assert readers(pool) == []  # a search does not count itself
        time.sleep(0.3)  # rewritten meanwhile: still one record, this process's
        assert [f.name for f in (pool / READERS).iterdir()] == [f"{socket.gethostname()}-{os.getpid()}.json"]
    assert subprocess.run(seen, capture_output=True, text=True, check=True).stdout.strip() == "0"
    assert not list((pool / READERS).iterdir())

    # A live search of another process (a sleeping child stands for it) stops prepare --force.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"host": socket.gethostname(), "pid": other.pid, "at": time.time(), "experiment": "results/t"}
        (pool / READERS / "other.json").write_text(json.dumps(record))
        assert main(["prepare", str(path), "--force"]) == 2
        err = capsys.readouterr().err
        assert f"error: {pool}: a running search reads this pool: results/t (process {other.pid} on " in err
        assert "let it finish or stop it before rewriting the pool" in err
        assert (pool / MANIFEST).read_text() == "{}"
        # Not rewritten for 30 s, or of a process that is gone: not a reader.
        (pool / READERS / "other.json").write_text(json.dumps({**record, "at": time.time() - 31}))
        assert readers(pool) == []
    finally:
        other.kill()
        other.wait()
    (pool / READERS / "other.json").write_text(json.dumps(record))
    assert readers(pool) == []
