"""Stage 6, report: a local copy of results stored at a URI (a cluster's ``s3://``, ``gs://``).

    from analysis.remote import fetch
    exp = fetch("s3://bucket/mixsearch_results/default")  # then trials(exp), curves(exp), ...

Reports, notebooks and export read local folders; ``fetch`` keeps a copy of an experiment (or of
every experiment of a storage path) up to date: each call copies only the files that are new or
changed since the last one, so calling it again and again follows a running search
(``mixsearch report URI --watch`` does). Checkpoints stay behind unless a trial's are asked for
(they hold model weights; only export needs them).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger(__name__)

CACHE_ENV = "MIXSEARCH_CACHE"
MARKER = ".mixsearch-fetch.json"  # in a copy: the URI it is a copy of
# Experiments are recognized as analysis.results does: by their summary or Tune's state.
EXPERIMENT_FILES = ("summary.json", "tuner.pkl")


def cache_dir() -> Path:
    """Where copies go by default: ``$MIXSEARCH_CACHE``, else ``$XDG_CACHE_HOME/mixsearch``, else
    ``~/.cache/mixsearch``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mixsearch"


def default_copy(uri: str) -> Path:
    """The folder ``fetch`` copies ``uri`` into by default: ``s3://b/x/y`` to ``<cache_dir>/s3/b/x/y``."""
    scheme, rest = uri.split("://", 1)
    parts = [p for p in rest.split("?", 1)[0].split("/") if p not in ("", ".", "..")]
    return cache_dir().joinpath(scheme, *parts)


def _open(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, pa.ArrowException) as e:  # an unknown scheme, no credentials, no such bucket
        raise ValueError(f"{uri}: cannot reach it ({e})") from None
    return fs, path.rstrip("/") or "/"


def _is_experiment(fs: pafs.FileSystem, path: str) -> bool:
    return any(i.type == pafs.FileType.File for i in fs.get_file_info([f"{path}/{n}" for n in EXPERIMENT_FILES]))


def _claim(dest: Path, uri: str) -> None:
    """Make ``dest`` a copy of ``uri``, refusing a folder that holds anything else: a copy
    overwrites files, and must not overwrite someone's own."""
    marker = dest / MARKER
    if marker.exists():
        try:
            of = json.loads(marker.read_text()).get("uri")
        except (ValueError, AttributeError):
            of = None
        if of != uri:
            raise ValueError(f"{dest}: a copy of {of or 'something else'}, not of {uri}; give another folder")
        return
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest}: exists and is not a copy made by fetch; give a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"uri": uri}) + "\n")


def _wanted(relative: str, trial: str | None) -> bool:
    """Everything but checkpoints, except those of ``trial`` (a trial folder's name)."""
    parts = relative.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("checkpoint_"):
            return trial is not None and i > 0 and parts[i - 1] == trial
    return True


def _up_to_date(local: Path, remote: pafs.FileInfo) -> bool:
    # Without a modification time (some stores) a file of the same size may still have changed
    # (runs.json is rewritten in place every 10 s): copy it again.
    if remote.mtime_ns is None:
        return False
    try:
        st = local.stat()
    except FileNotFoundError:
        return False
    return st.st_size == remote.size and st.st_mtime_ns == remote.mtime_ns


def _copy(fs: pafs.FileSystem, remote: pafs.FileInfo, local: Path) -> None:
    """One file, written beside its place and moved into it: a notebook reading the copy while
    it is refreshed sees the old file or the new one, never half of one."""
    local.parent.mkdir(parents=True, exist_ok=True)
    part = local.with_name(f".{local.name}.part")
    try:
        with fs.open_input_stream(remote.path) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except FileNotFoundError:  # gone since the listing (Tune keeps only a trial's last checkpoints)
        part.unlink(missing_ok=True)
        return
    if remote.mtime_ns is not None:  # what _up_to_date compares the next time
        os.utime(part, ns=(remote.mtime_ns, remote.mtime_ns))
    os.replace(part, local)


def _listing(fs: pafs.FileSystem, base: str, uri: str) -> list[pafs.FileInfo]:
    """The files of the experiment at ``base``, or of the experiments of the storage path there."""
    kind = fs.get_file_info(base).type
    if kind == pafs.FileType.NotFound:
        raise ValueError(f"{uri}: no such folder")
    if kind != pafs.FileType.Directory:
        raise ValueError(f"{uri}: not a folder")
    if _is_experiment(fs, base):
        roots = [base]
    else:  # a storage path: its experiments
        subs = fs.get_file_info(pafs.FileSelector(base))
        roots = [s.path for s in subs if s.type == pafs.FileType.Directory and _is_experiment(fs, s.path)]
        if not roots:
            raise ValueError(f"{uri}: neither an experiment nor a storage path of experiments "
                             "(mixsearch run writes <storage_path>/<name>/)")
    return [f for root in roots for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if f.type == pafs.FileType.File]


def fetch(uri: str, dest: str | Path | None = None, trial: str | None = None) -> Path:
    """A local, up-to-date copy of the experiment at ``uri``, or of every experiment of a storage
    path there (each ``<uri>/<name>/``), for reports, notebooks and export; returns its folder.

    ``dest`` is the folder to copy into: by default ``default_copy(uri)``, under ``cache_dir()``;
    else a new or empty folder, or an earlier copy of the same URI. A copy is brought up to date
    by copying only the files that are new or changed there (files gone from the URI stay).
    Checkpoints are left out, except those of ``trial`` (a trial folder's name, ``trial_...``).

    Raises ValueError for a URI that cannot be reached or is not an experiment or a storage path
    of experiments (or does not exist), or for a ``dest`` that holds something else."""
    from search.config import is_uri, not_empty

    not_empty(uri)
    if not is_uri(uri):
        raise ValueError(f"{uri}: not a URI (a local folder is read where it is)")
    fs, base = _open(uri)
    try:
        files = _listing(fs, base, uri)
    except OSError as e:  # a network error, no permission
        raise ValueError(f"{uri}: cannot read it ({e})") from None

    if dest is None:
        # The cache mirrors each store's paths, so the copies of a storage path and of an
        # experiment in it share their files; it holds nothing else.
        dest = default_copy(uri)
        dest.mkdir(parents=True, exist_ok=True)
    else:
        dest = Path(dest)
        _claim(dest, uri)
    prefix = len(base.rstrip("/")) + 1
    todo = []
    for f in files:
        relative = f.path[prefix:]
        if _wanted(relative, trial) and not _up_to_date(dest / relative, f):
            todo.append((f, dest / relative))
    try:
        # Object stores answer each request in tens of milliseconds: ask for several files at once.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda job: _copy(fs, *job), todo))
    except OSError as e:
        raise ValueError(f"{uri}: cannot copy it to {dest} ({e})") from None
    log.debug("%s: copy in %s (%d of %d files new or changed)", uri, dest, len(todo), len(files))
    return dest
