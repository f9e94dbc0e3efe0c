"""Stage 1, corpus from files: the user's instruction data, read, cleaned and split by task.

Three passes, each streaming (no pass holds more than one chunk or one bucket in memory):

1. parse (Ray Data): files are cut into chunks (byte ranges of JSONL files, row groups of
   Parquet, whole CSV, JSON, Arrow and compressed files); each chunk becomes rows with
   normalized keys: the task (a task column, or the hash of the normalized instruction), a
   duplicate key, a bucket (a hash of the task). Faulty rows (malformed JSON, missing columns,
   wrong types, bytes that are not UTF-8) become fault records with their file and line. Rows
   are written by bucket.
2. clean (a Ray task per bucket): empty instructions or outputs dropped, exact duplicates
   (normalized instruction + input + output) dropped, rows tokenized with the trial model's
   tokenizer (too long: dropped, or truncated), each drop counted by reason; every task's rows
   counted. A task lives in one bucket, so this is exact and its memory is one bucket's.
3. place (a Ray task per bucket): once the driver has decided each task's domain, split and
   rule index from the (small) task table, rows are written to the pool's layout.

Row-level faults are skipped and counted (the first few logged with file and line) unless the
config says ``strict``; file-level faults (no such file, an unreadable file, a corrupt Parquet,
an empty corpus, a split that cannot be made) are errors that name the file.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import itertools
import json
import logging
import math
import os
import random
import re
import socket
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from search.config import ConfigError, FilesConfig

log = logging.getLogger(__name__)

# Small units of work: two cores stay busy, and a task holds little (tokenized rows are many
# Python ints, ~20x the bytes of the text).
CHUNK_BYTES = 4 << 20
BUCKET_BYTES = 4 << 20
TOKENIZE_ROWS = 20_000
FAULTS_LOGGED = 5
# A UTF-8 byte-order mark, which Excel's "CSV UTF-8" and Windows editors put first in a file:
# read as text it would rename a CSV's first column and spoil a JSONL file's first line.
BOM = b"\xef\xbb\xbf"
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
# Text formats may come compressed (train.jsonl.gz, as corpora on the Hub often are); Parquet and
# Arrow compress inside the file.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
TEXT_FORMATS = ("jsonl", "json", "csv")
# Rows a parse task hands on at a time: a CSV or a compressed file is read as one chunk.
PARSE_ROWS = 50_000

STAGE_SCHEMA = pa.schema([
    ("task", pa.string()), ("task_key", pa.string()), ("domain", pa.string()),
    ("instruction", pa.string()), ("input", pa.string()), ("output", pa.string()),
    ("references", pa.list_(pa.string())), ("dup_key", pa.string()), ("file", pa.int32()), ("line", pa.int64()),
    ("fault", pa.string()), ("bucket", pa.int32()),
])


class IngestError(ConfigError):
    """Input that cannot be prepared; the message names the file (and line), and ``key`` the
    config key to change when there is one (the run then adds its file and line)."""

    def __init__(self, message: str, key: tuple[str, ...] | None = None):
        super().__init__(message)
        self.key = key


SPLIT_KEY = ("corpus", "files", "split")


def normalize(text: str) -> str:
    """Case-folded text with runs of whitespace as one space: what makes two instructions one."""
    return " ".join(text.split()).casefold()


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


# ------------------------------------------------------------------ files and chunks

def list_files(cfg: FilesConfig, notes: list[str] | None = None, skip: tuple[Path, ...] = ()) -> list[tuple[str, str]]:
    """(path, format) of every input file, globs expanded, in a stable order; of a folder, the
    files of split ``cfg.split``; none under a folder of ``skip`` (absolute paths: the pool and
    results folders, which may lie inside a corpus folder but are not corpus). ``notes`` receives
    what the user should know: a folder's files of other splits, left out, and listed files
    whose names say they are another split. A file is listed once, however many patterns match it."""
    out: list[tuple[str, str]] = []
    for pattern in cfg.paths:
        path = Path(os.path.expanduser(pattern))
        if path.is_dir():
            files = _folder(path, cfg.split, notes, _inside(path, skip))
            out.extend((str(p.resolve()), file_format(str(p))) for p in files)
            continue
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise IngestError(f"{pattern}: no such file")
        fixed = Path(*itertools.takewhile(lambda part: not re.search(r"[*?[]", part), path.parts))
        skipped = _inside(fixed, skip)
        for m in matches:
            if _under(Path(m), skipped):
                continue
            fmt = file_format(m)
            if fmt is None:
                raise IngestError(f"{m}: unknown format (expected one of {sorted(FORMATS)}, "
                                  f"the text ones optionally compressed: {', '.join(COMPRESSIONS)})")
            named = _split_in_name(Path(m).name)
            if notes is not None and named not in (None, cfg.split):
                notes.append(f"{m}: its name says split {named!r}, but it is listed in corpus.files.paths, "
                             f"so its rows are read (give the folder to read only split {cfg.split!r})")
            out.append((str(Path(m).resolve()), fmt))
    return list(dict.fromkeys(out))  # a file two patterns match is read once


def _codec(path: str) -> str | None:
    """The compression of a file, from its name (``.gz``, ``.bz2``, ``.zst``), or None."""
    return COMPRESSIONS.get(Path(path).suffix.lower())


def file_format(path: str) -> str | None:
    """A data file's format from its name (``train.jsonl.gz`` is jsonl), or None if unknown."""
    name = Path(path)
    if _codec(path):
        fmt = FORMATS.get(name.with_suffix("").suffix.lower())
        return fmt if fmt in TEXT_FORMATS else None
    return FORMATS.get(name.suffix.lower())


class _Stream(io.RawIOBase):
    """A pyarrow stream as a Python raw file, so that it can be buffered and read by line."""

    def __init__(self, stream: pa.NativeFile):
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()


def _open(path: str) -> io.BufferedIOBase:
    """A data file for reading as bytes, decompressed as it is read when its name says so."""
    codec = _codec(path)
    if codec is None:
        return open(path, "rb")
    return io.BufferedReader(_Stream(pa.input_stream(path, compression=codec)), CHUNK_BYTES)


def _size(path: str) -> int:
    """A file's size in bytes once decompressed, estimated from its first few MB when it is
    compressed: what sizes the buckets of the parse pass."""
    codec = _codec(path)
    if codec is None:
        return os.path.getsize(path)
    try:
        with open(path, "rb") as raw:
            stream = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), codec)  # closes raw when freed
            out = len(stream.read(CHUNK_BYTES))
            read = raw.tell()
    except (OSError, pa.ArrowException) as e:
        raise IngestError(f"{path}: not readable as {codec}: {e}") from None
    return round(os.path.getsize(path) * out / read) if read else 0


# Beside the data, datasets' save_to_disk and Hub downloads keep metadata, never rows.
NOT_DATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json", "config.json"}
# Split names in a folder's file and subfolder names, read as Hugging Face datasets reads them: a
# Hub export's data/<split>-00000-of-00002.parquet; else a keyword between separators (-._ space,
# digits) in a subfolder's name, else in a file's name ("train.jsonl", "my_test_1.csv").
SHARDED = re.compile(r"(\w+(?:\.\w+)*)-\d{5}-of-\d{5}.*")
SPLIT_KEYWORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
                  "test": ("test", "testing", "eval", "evaluation")}
_KEYWORD = {split: re.compile(rf"(?:^|[-._ 0-9])(?:{'|'.join(words)})(?:[-._ 0-9]|$)")
            for split, words in SPLIT_KEYWORDS.items()}


def _split_in_name(name: str) -> str | None:
    """The split a file or folder name says (train, validation, test), if any."""
    return next((split for split, rx in _KEYWORD.items() if rx.search(name)), None)


def _splits(root: Path, files: list[Path]) -> dict[Path, str]:
    """The split of each file of a folder whose names give splits (others are in none); empty
    when the names give none, and then every file is the train split."""
    rel = {f: f.relative_to(root) for f in files}
    sharded = {f: m.group(1) for f, r in rel.items()
               if len(r.parts) == 2 and r.parts[0] == "data" and (m := SHARDED.fullmatch(r.name))}
    if sharded:
        return sharded
    for names in (lambda r: r.parts[:-1], lambda r: r.parts[-1:]):  # subfolders first, as datasets does
        found = {f: s for f, r in rel.items() if (s := next(filter(None, map(_split_in_name, names(r))), None))}
        if found:
            return found
    return {}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IngestError(f"{path}: not readable as the datasets library writes it: {e}") from None


def _saved(path: Path, split: str) -> list[Path]:
    """The Arrow files of a folder written by ``datasets.Dataset.save_to_disk``, which must hold
    split ``split``: its state.json names the split it was loaded as (``test``, ``train[:10%]``,
    ``train+test``), or none (then it is read whatever ``split`` says)."""
    state = _read_json(path / "state.json")
    saved_as = state.get("_split")
    names = sorted({re.sub(r"\[.*\]$", "", part) for part in str(saved_as).split("+")})
    if saved_as is not None and names != [split]:
        fix = (f"set corpus.files.split: {names[0]} to read it" if len(names) == 1 else
               f"its rows of {' and '.join(names)} cannot be told apart; list its Arrow files in corpus.files.paths "
               "to read them all")
        raise IngestError(f"{path}: a saved Dataset of split {saved_as!r}, not {split!r} (corpus.files.split); {fix}",
                          key=SPLIT_KEY)
    return [path / f["filename"] for f in state.get("_data_files", [])]


def count_files(n: int) -> str:
    """"1 file", "2 files"."""
    return f"{n} file{'s' * (n != 1)}"


def _under(path: Path, folders: tuple[Path, ...]) -> bool:
    return any(path.resolve().is_relative_to(f) for f in folders)


def _inside(base: Path, folders: tuple[Path, ...]) -> tuple[Path, ...]:
    """Those of ``folders`` strictly inside ``base`` (a pool_dir above the corpus skips nothing)."""
    base = base.resolve()
    return tuple(f for f in folders if f != base and f.is_relative_to(base))


def _folder(path: Path, split: str, notes: list[str] | None, skip: tuple[Path, ...]) -> list[Path]:
    """The data files of a folder: a saved ``datasets`` Dataset or DatasetDict (its ``split``), or
    a folder of data files (a Hub download): those of ``split`` when their names give splits.
    Hidden files and folders and the metadata in ``NOT_DATA`` are not data."""
    if (path / "state.json").is_file():
        return _saved(path, split)
    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():
        names = _read_json(dict_file).get("splits", [])
        if split not in names:
            raise IngestError(f"{path}: a saved DatasetDict with the splits {', '.join(names)}, none of them "
                              f"{split!r}; choose one with corpus.files.split", key=SPLIT_KEY)
        if notes is not None and len(names) > 1:
            notes.append(f"{path}: reading its split {split!r} (corpus.files.split); left out: "
                         f"{', '.join(n for n in names if n != split)}")
        return _saved(path / split, split)
    found = sorted(p for p in path.rglob("*") if p.is_file() and file_format(str(p)) and p.name not in NOT_DATA
                   and not any(part.startswith((".", "__")) for part in p.relative_to(path).parts)
                   and not _under(p, skip))
    if not found:
        raise IngestError(f"{path}: a folder with no data files (and no datasets state.json)")
    splits = _splits(path, found)
    if not splits:
        if split != "train":
            raise IngestError(f"{path}: its file names give no splits, so all its files ({count_files(len(found))}) are "
                              f"split 'train', not {split!r} (corpus.files.split)", key=SPLIT_KEY)
        return found
    chosen = [p for p in found if splits.get(p) == split]
    others = Counter(splits.get(p, "none") for p in found if splits.get(p) != split)
    described = ", ".join(f"{s} ({count_files(n)})" for s, n in sorted(others.items()))
    if not chosen:
        raise IngestError(f"{path}: no file of split {split!r} (corpus.files.split); its files are of the splits "
                          f"{described}", key=SPLIT_KEY)
    if notes is not None and others:
        notes.append(f"{path}: reading the {count_files(len(chosen))} of its split {split!r} (corpus.files.split); "
                     f"left out: {described}")
    return chosen


def chunks(files: list[tuple[str, str]]) -> list[dict]:
    """Work items for the parse pass: byte ranges cut at line ends, row groups, whole files."""
    out = []
    for index, (path, fmt) in enumerate(files):
        if fmt in ("jsonl", "csv"):
            size = os.path.getsize(path)
            # Quoted fields may hold newlines, and a compressed stream has no byte offsets to cut
            # at: a CSV, or a compressed file, is one chunk.
            if fmt == "csv" or _codec(path):
                out.append({"file": index, "path": path, "fmt": fmt, "start": 0, "end": size, "line": 1})
                continue
            start, line = 0, 1
            with open(path, "rb") as f:
                while start < size:
                    f.seek(min(start + CHUNK_BYTES, size))
                    f.readline()  # to the end of the line the cut fell in
                    end = min(f.tell(), size)
                    out.append({"file": index, "path": path, "fmt": fmt, "start": start, "end": end, "line": line})
                    f.seek(start)
                    line += f.read(end - start).count(b"\n")
                    start = end
        elif fmt == "parquet":
            try:
                groups = pq.ParquetFile(path).num_row_groups
            except Exception as e:
                raise IngestError(f"{path}: not a readable Parquet file: {e}") from None
            out.extend({"file": index, "path": path, "fmt": fmt, "start": g, "end": g + 1, "line": 0}
                       for g in range(groups))
        else:
            out.append({"file": index, "path": path, "fmt": fmt, "start": 0, "end": 0, "line": 1})
    return out


def first_columns(path: str, fmt: str) -> list[str] | None:
    """The column names of a data file's first row (None if it cannot be read), for errors."""
    try:
        if fmt == "csv":
            with io.TextIOWrapper(_open(path), encoding="utf-8-sig", errors="replace", newline="") as f:
                return next(csv.reader(f), None)
        if fmt == "parquet":
            return pq.ParquetFile(path).schema_arrow.names
        if fmt == "arrow":
            with pa.memory_map(path) as source:
                return pa.ipc.open_stream(source).schema.names
        end = min(os.path.getsize(path), CHUNK_BYTES)
        for _, record in _records({"path": path, "fmt": fmt, "start": 0, "end": end, "line": 1}):
            if isinstance(record, dict):
                return list(record)
    except (OSError, ValueError, pa.ArrowException, IngestError):
        return None
    return None


def _columns_hint(files: list[tuple[str, str]], faults: list[dict], dropped: dict[str, int]) -> str:
    """For rows dropped for a missing column: the columns of the file of the first such row, and
    where to map them (a corpus whose answers are in "response" otherwise reads as bad rows only)."""
    missing = sorted(k.split(":", 1)[1] for k in dropped if k.startswith("missing_column:"))
    if not missing:
        return ""
    index = next((f["file"] for f in faults if f["fault"].startswith("missing_column:")), 0)
    have = first_columns(*files[index])
    if not have:
        return ""
    return (f"; rows lack the column {', '.join(missing)}, and {files[index][0]} has {', '.join(have)}: "
            "name yours in corpus.files.columns (instruction, input, output, domain, task, messages)")


# ------------------------------------------------------------------ pass 1: parse

@dataclass
class _Rows:
    cols: dict[str, list] = field(default_factory=lambda: {n: [] for n in STAGE_SCHEMA.names})

    def fault(self, file: int, line: int, reason: str, buckets: int) -> None:
        for n in STAGE_SCHEMA.names:
            self.cols[n].append(None)
        self.cols["file"][-1], self.cols["line"][-1], self.cols["fault"][-1] = file, line, reason
        self.cols["bucket"][-1] = line % buckets  # counted by whichever clean task reads that bucket

    def add(self, record, file: int, line: int, columns, buckets: int) -> None:
        if not isinstance(record, dict):
            return self.fault(file, line, "not_an_object", buckets)
        if columns.instruction not in record:
            chat = _chat_column(record, columns)
            if chat is not None:
                turns = from_chat(record[chat], chat)
                if isinstance(turns, str):
                    return self.fault(file, line, turns, buckets)
                record = {**record, columns.instruction: turns[0], columns.input: "", columns.output: turns[1]}
        values = {"references": None}
        for role in ("instruction", "input", "output", "domain", "task"):
            name = getattr(columns, role)
            v = record.get(name)
            if v is None and role == "domain" and name == "domain":
                v = record.get("category")  # only for the default name: a named column is meant
            if v is None:
                if role in ("instruction", "output"):
                    return self.fault(file, line, f"missing_column:{name}", buckets)
                v = "" if role == "input" else None
            elif role == "output" and isinstance(v, list):
                answers = references(v)
                if answers is None:
                    return self.fault(file, line, f"wrong_type:{name}", buckets)
                v, values["references"] = answers
            elif _is_number(v) and role in ("input", "output"):
                v = str(v)  # a numeric answer is still an answer
            elif not isinstance(v, str):
                return self.fault(file, line, f"wrong_type:{name}", buckets)
            values[role] = v
        key = _digest(normalize(values["instruction"]))
        task = values["task"] if values["task"] is not None else key
        dup = _digest("\x1f".join(normalize(values[r]) for r in ("instruction", "input", "output")))
        row = {**values, "task": task, "task_key": key, "dup_key": dup, "file": file, "line": line, "fault": None,
               "bucket": int(_digest(task)[:8], 16) % buckets}
        for n in STAGE_SCHEMA.names:
            self.cols[n].append(row[n])

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self.cols, schema=STAGE_SCHEMA)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def references(outputs: list) -> tuple[str, list[str] | None] | None:
    """An output given as a list of references (as Super-NaturalInstructions gives its
    instances'): the first, which the row trains on, and all of them, each once, when there are
    several (unseen rows are scored against each). Blank ones are left out; none left is an
    empty output. None when an item is not text (or a number)."""
    if not all(isinstance(r, str) or _is_number(r) for r in outputs):
        return None
    texts = list(dict.fromkeys(str(r) for r in outputs if str(r).strip()))
    return (texts[0] if texts else ""), (texts if len(texts) > 1 else None)


# Role names of the chat formats in use: OpenAI's messages (role, content) and ShareGPT's
# conversations (from, value).
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def _chat_column(record: dict, columns) -> str | None:
    if columns.messages in record:
        return columns.messages
    # only for the default name: a named column is meant
    return "conversations" if columns.messages == "messages" and "conversations" in record else None


def from_chat(turns, column: str) -> tuple[str, str] | str:
    """(instruction, output) of a chat: system turns (joined before the user's), one user turn,
    one assistant answer. Otherwise the fault: ``multi_turn`` for a longer conversation (a trial
    trains on one prompt and its answer), ``wrong_type:<column>`` for anything else."""
    wrong = f"wrong_type:{column}"
    if not isinstance(turns, list):
        return wrong
    roles, texts = [], []
    for turn in turns:
        if not isinstance(turn, dict):
            return wrong
        role = ROLES.get(turn.get("role", turn.get("from")))
        text = turn.get("content", turn.get("value"))
        if role is None or not isinstance(text, str):
            return wrong
        roles.append(role)
        texts.append(text)
    system = 0
    while system < len(roles) and roles[system] == "system":
        system += 1
    if roles[system:] == ["user", "assistant"]:
        return "\n".join(texts[:system + 1]), texts[-1]
    if roles[system:system + 2] == ["user", "assistant"]:
        return "multi_turn"
    return wrong


def _records(chunk: dict):
    """(line, record or a fault reason) of one chunk."""
    path, fmt = chunk["path"], chunk["fmt"]
    try:
        yield from _text_records(chunk) if fmt in TEXT_FORMATS else _table_records(chunk)
    except FileNotFoundError:  # the driver listed it: this task runs on a node that lacks it
        raise IngestError(f"{path}: no such file on {socket.gethostname()}, where a prepare task ran; on a "
                          "cluster, corpus files must be in a folder every node mounts, as corpus.pool_dir") from None
    except (OSError, EOFError, pa.ArrowException) as e:  # a truncated or corrupt compressed file
        raise IngestError(f"{path}: not readable as {_codec(path) or fmt}: {e}") from None


def _text_records(chunk: dict):
    path, fmt = chunk["path"], chunk["fmt"]
    if fmt == "jsonl":
        with _open(path) as f:
            if _codec(path):  # the whole file, streamed line by line
                lines = iter(f)
            else:
                f.seek(chunk["start"])
                lines = iter(f.read(chunk["end"] - chunk["start"]).split(b"\n"))
            for i, raw in enumerate(lines, chunk["line"]):
                if i == 1:
                    raw = raw.removeprefix(BOM)
                if not raw.strip():
                    continue
                try:
                    yield i, json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield i, "not_utf8"
                except json.JSONDecodeError:
                    yield i, "malformed_json"
    elif fmt == "csv":
        with _open(path) as f:
            text = f.read().decode("utf-8-sig", errors="surrogateescape")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for record in reader:
            line = reader.line_num
            if any(isinstance(v, str) and re.search("[\udc80-\udcff]", v) for v in record.values()):
                yield line, "not_utf8"
            elif None in record:  # more fields than the header names
                yield line, "malformed_csv"
            else:
                yield line, record
    else:
        try:
            with _open(path) as f:
                items = json.loads(f.read().decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IngestError(f"{path}: not a JSON array: {e}") from None
        if not isinstance(items, list):
            raise IngestError(f"{path}: expected a JSON array of objects, got {type(items).__name__}")
        for i, record in enumerate(items, 1):
            yield i, record  # the item's position stands for its line


def _table_records(chunk: dict):
    path, fmt = chunk["path"], chunk["fmt"]
    try:
        if fmt == "parquet":
            parquet = pq.ParquetFile(path)
            table = parquet.read_row_group(chunk["start"])
            offset = sum(parquet.metadata.row_group(g).num_rows for g in range(chunk["start"]))
        else:
            with pa.memory_map(path) as source:
                table = pa.ipc.open_stream(source).read_all()
            offset = 0
    except FileNotFoundError:
        raise
    except Exception as e:
        raise IngestError(f"{path}: not readable as {fmt}: {e}") from None
    for i, record in enumerate(table.to_pylist(), offset + 1):
        yield i, record  # the row's number stands for its line


def parse(batch: dict, columns, buckets: int):
    """Ray Data batch function: chunk descriptors in, stage rows (and fault records) out, in
    tables of at most ``PARSE_ROWS`` rows (a whole CSV or compressed file is one chunk)."""
    rows = _Rows()
    for i in range(len(batch["path"])):
        chunk = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
        for line, record in _records(chunk):
            if isinstance(record, str):
                rows.fault(chunk["file"], line, record, buckets)
            else:
                rows.add(record, chunk["file"], line, columns, buckets)
            if len(rows.cols["file"]) >= PARSE_ROWS:
                yield rows.table()
                rows = _Rows()
    yield rows.table()


# ------------------------------------------------------------------ pass 2: clean

def clean(stage: str, bucket: int, out: str, tokens: dict) -> dict:
    """Drop faults, empty rows and duplicates of one bucket, tokenize it (dropping or truncating
    rows longer than the model takes), write it; return the counts and its tasks.

    ``tokens``: ``model`` (the config's model section), ``prompt``, ``truncate``.
    """
    path = Path(stage) / f"bucket={bucket}"
    if not path.exists():
        return {"dropped": {}, "faults": [], "tasks": []}
    table = pads.dataset(path, format="parquet").to_table()
    table = table.sort_by([("file", "ascending"), ("line", "ascending")])
    dropped: Counter = Counter()
    is_fault = pc.is_valid(table["fault"])
    faults = table.filter(is_fault)
    dropped.update(faults["fault"].to_pylist())
    first_faults = faults.select(["file", "line", "fault"]).slice(0, FAULTS_LOGGED).to_pylist()
    table = table.filter(pc.invert(is_fault))
    for col in ("instruction", "output"):
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table[col])), 0)
        dropped[f"empty_{col}"] += pc.sum(empty).as_py() or 0
        table = table.filter(pc.invert(empty))
    seen, keep = set(), []
    for key in table["dup_key"].to_pylist():
        keep.append(key not in seen)
        seen.add(key)
    dropped["duplicate"] += keep.count(False)
    table = table.filter(pa.array(keep, pa.bool_()))
    table, too_long = _tokens(table, tokens)
    dropped["too_long"] += too_long
    pq.write_table(table, f"{out}/bucket-{bucket:05d}.parquet")
    # "count" counts non-null values: rows with several references.
    tasks = table.group_by("task").aggregate([("task_key", "min"), ("domain", "min"), ("instruction", "min"),
                                              ("file", "count"), ("references", "count")])
    return {"dropped": {k: v for k, v in dropped.items() if v}, "faults": first_faults,
            "tasks": tasks.rename_columns(["task", "task_key", "domain", "instruction", "rows", "several"]).to_pylist()}


def _tokens(table: pa.Table, tokens: dict) -> tuple[pa.Table, int]:
    """Append ``ids`` and ``prompt_len``; drop rows over max_length, or cut their prompts to fit
    (keeping its start, and a chat template's end) when ``truncate`` is set and the answer fits."""
    from trainables.tokenizer import load_tokenizer, prompt_tail, tokenize

    model = tokens["model"]
    limit = model["max_length"]
    # One thread per task: Ray already runs a task per core, and the tokenizer's own thread pool
    # on top of that only makes them fight (set before the pool first starts in this process).
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    tokenizer = load_tokenizer(model)
    tail = prompt_tail(tokenizer, tokens["prompt"])
    parts, dropped = [], 0
    # In slices (Python lists of ids are big); an empty table is one empty slice.
    for start in range(0, max(table.num_rows, 1), TOKENIZE_ROWS):
        part = table.slice(start, TOKENIZE_ROWS)
        seqs, prompt_lens = tokenize(part["instruction"].to_pylist(), part["input"].to_pylist(),
                                     part["output"].to_pylist(), tokenizer, tokens["prompt"])
        keep = []
        for i, (seq, n) in enumerate(zip(seqs, prompt_lens)):
            over = len(seq) - limit
            if over > 0 and tokens["truncate"] and n - over - tail >= 1:
                seqs[i], prompt_lens[i] = seq[: n - over - tail] + seq[n - tail:], n - over
                over = 0
            keep.append(over <= 0)
        part = part.append_column("ids", pa.array(seqs, pa.list_(pa.int32())))
        part = part.append_column("prompt_len", pa.array(prompt_lens, pa.int32()))
        parts.append(part.filter(pa.array(keep, pa.bool_())))
        dropped += keep.count(False)
    return pa.concat_tables(parts), dropped


# ------------------------------------------------------------------ the task table: domains and split

def cluster_domains(instructions: list[str], k: int, seed: int) -> tuple[list[str], dict[str, list[str]]]:
    """TF-IDF + k-means over instructions: each one's domain, and each domain's top terms."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(instructions) < k:
        raise IngestError(f"corpus.files.domains.clusters = {k}, but the corpus has only {len(instructions)} tasks")
    vec = TfidfVectorizer(stop_words="english", max_features=20000, sublinear_tf=True)
    x = vec.fit_transform(instructions)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    terms = vec.get_feature_names_out()
    names = [f"cluster{i}" for i in range(k)]
    top = {names[i]: [str(terms[j]) for j in km.cluster_centers_[i].argsort()[::-1][:8]] for i in range(k)}
    return [names[c] for c in km.labels_], top


def unseen_tasks(cfg: FilesConfig, tasks: list[dict]) -> set[str]:
    """The names of the tasks held out, by the configured rule."""
    rule = cfg.unseen
    names = {t["task"] for t in tasks}
    if rule.tasks is not None or rule.tasks_file is not None:
        if rule.tasks is not None:
            wanted, where = list(rule.tasks), "corpus.files.unseen.tasks"
        else:
            try:
                text = Path(os.path.expanduser(rule.tasks_file)).read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as e:
                raise IngestError(f"{rule.tasks_file}: cannot read the unseen task list: {e}") from None
            wanted = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
            where = rule.tasks_file
        missing = [t for t in wanted if t not in names]
        if len(missing) == len(wanted):
            raise IngestError(f"{where}: none of its {len(wanted)} tasks is in the corpus (e.g. {missing[:3]})")
        if missing:
            log.warning("%s: %d listed tasks are not in the corpus, e.g. %s", where, len(missing), missing[:3])
        return set(wanted) & names
    by_domain: dict[str, list[str]] = {}
    for t in sorted(tasks, key=lambda t: t["task"]):
        by_domain.setdefault(t["domain"], []).append(t["task"])
    if rule.domains is not None:
        missing = [d for d in rule.domains if d not in by_domain]
        if missing:
            raise IngestError(f"corpus.files.unseen.domains: {missing} are not domains of the corpus ({sorted(by_domain)})")
        return {t for d in rule.domains for t in by_domain[d]}
    out = set()
    rng = random.Random(cfg.seed)
    for domain, names_ in sorted(by_domain.items()):
        n = round(rule.fraction * len(names_))
        if n < 1 or n >= len(names_):
            raise IngestError(
                f"corpus.files.unseen.fraction = {rule.fraction}: domain {domain!r} has {len(names_)} tasks, "
                "too few to hold out a fraction and keep some for training"
            )
        out.update(rng.sample(names_, n))
    return out


def entropy(counts: list[int]) -> float:
    """Shannon entropy (bits) of the distribution of rows over tasks."""
    total = sum(counts)
    return max(0.0, -sum(c / total * math.log2(c / total) for c in counts if c)) if total else 0.0


def task_stats(counts: list[int]) -> dict:
    """A domain's figures from its rows per task: rows, tasks, examples per task, entropy."""
    return {"rows": sum(counts), "instructions": len(counts), "examples_min": min(counts),
            "examples_median": float(statistics.median(counts)), "examples_max": max(counts),
            "entropy": round(entropy(counts), 4)}


# ------------------------------------------------------------------ pass 3: place

def place(clean_file: str, assign: dict[str, tuple[str, str, int]], out: str, schema: pa.Schema) -> None:
    """Write one cleaned bucket into the pool layout: split/domain=<d>/, sorted by rule, example."""
    table = pq.read_table(clean_file)
    if table.num_rows == 0:
        return
    tasks = table["task"].to_pylist()
    split = [assign[t][0] for t in tasks]
    domain = [assign[t][1] for t in tasks]
    rule = [assign[t][2] for t in tasks]
    position: Counter = Counter()
    example = []
    for t in tasks:  # rows are in (file, line) order: examples numbered in reading order
        example.append(position[t])
        position[t] += 1
    table = pa.table({
        "task": table["task"], "rule_idx": pa.array(rule, pa.int32()), "example_idx": pa.array(example, pa.int32()),
        "instruction": table["instruction"], "input": table["input"], "output": table["output"],
        "references": table["references"], "ids": table["ids"], "prompt_len": table["prompt_len"],
        "split": split, "domain": domain,
    })
    name = Path(clean_file).stem
    for (s, d), part in _groups(table, ["split", "domain"]):
        part = part.sort_by([("rule_idx", "ascending"), ("example_idx", "ascending")]).select(schema.names)
        target = Path(out) / s / f"domain={d}"
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(part.cast(schema), target / f"{name}.parquet", row_group_size=2048)


def _groups(table: pa.Table, keys: list[str]):
    combos = table.select(keys).group_by(keys).aggregate([]).to_pylist()
    for combo in combos:
        mask = None
        for k in keys:
            m = pc.equal(table[k], combo[k])
            mask = m if mask is None else pc.and_(mask, m)
        yield tuple(combo[k] for k in keys), table.filter(mask)


@dataclass(frozen=True)
class TaskPlan:
    """Where every task goes: its (split, domain, rule index), the tasks held out, and the
    clustered domains' top terms."""

    held: set[str]
    assign: dict[str, tuple[str, str, int]]
    groups: dict[tuple[str, str], list[dict]]
    top_terms: dict[str, list[str]]


def plan_tasks(cfg: FilesConfig, tasks: list[dict], source: str) -> TaskPlan:
    """Domains (a column or clusters), the unseen split and its leak check, and rule indices
    (random within each split and domain), from the task table of the clean pass."""
    # A task column named in the config but in no row: tasks would silently become instructions.
    if cfg.columns.task != "task" and all(t["task"] == t["task_key"] for t in tasks):
        raise IngestError(f"{source}: no row has the task column {cfg.columns.task!r} "
                          "(corpus.files.columns.task); leave it out to make each distinct instruction a task")
    # Domains: from the column, or clustered from the instructions.
    tasks.sort(key=lambda t: t["task"])
    top_terms: dict[str, list[str]] = {}
    if cfg.domains.clusters:
        labels, top_terms = cluster_domains([t["instruction"] for t in tasks], cfg.domains.clusters, cfg.seed)
        for t, d in zip(tasks, labels):
            t["domain"] = d
    else:
        unlabelled = [t["task"] for t in tasks if t["domain"] is None]
        if unlabelled:
            also = " (or 'category')" if cfg.columns.domain == "domain" else ""
            raise IngestError(
                f"{source}: no domain in column {cfg.columns.domain!r}{also} for {len(unlabelled)} "
                f"tasks, e.g. {unlabelled[:3]}; name the column in corpus.files.columns.domain, or derive "
                "domains with corpus.files.domains.clusters: k"
            )
        for t in tasks:
            t["domain"] = _domain_name(t["domain"])

    # The split, by task; then the proof that no unseen instruction is in the pool.
    held = unseen_tasks(cfg, tasks)
    train_keys = {t["task_key"]: t["task"] for t in tasks if t["task"] not in held}
    if not train_keys:
        raise IngestError("the unseen split takes every task: nothing is left to train on")
    clash = [(t["task"], train_keys[t["task_key"]]) for t in tasks if t["task"] in held and t["task_key"] in train_keys]
    if clash:
        raise IngestError(
            f"unseen task {clash[0][0]!r} has the same normalized instruction as training task {clash[0][1]!r} "
            f"({len(clash)} such tasks): hold both out or neither"
        )
    rng = random.Random(cfg.seed)
    assign: dict[str, tuple[str, str, int]] = {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in tasks:
        groups.setdefault(("unseen" if t["task"] in held else "train", t["domain"]), []).append(t)
    for (split, domain), members in sorted(groups.items()):
        rng.shuffle(members)  # rule ids in random order: any prefix is a random subset
        for i, t in enumerate(members):
            assign[t["task"]] = (split, domain, i)

    return TaskPlan(held, assign, groups, top_terms)


# ------------------------------------------------------------------ the whole preparation

@dataclass(frozen=True)
class Prepared:
    """What the manifest records of a files corpus, beside the rows written under ``tmp``."""

    stats: dict[str, dict[str, dict]]  # split -> domain -> DomainStats fields
    dropped: dict[str, int]
    first_faults: list[str]
    unseen_tasks: list[str]
    top_terms: dict[str, list[str]]
    examples_per_task: int
    content_hash: str
    files: list[str]
    several_references: dict[str, int]  # split -> rows with more than one reference


def _user_error(e: BaseException) -> IngestError | None:
    """The IngestError a Ray task raised. Ray Data wraps a function's exception in ones of its
    own and keeps the original only as text in the traceback, so look there too."""
    seen, x = set(), e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, IngestError):
            return x
        x = getattr(x, "cause", None) or x.__cause__ or x.__context__
    found = re.search(r"IngestError: (.+)", str(e))
    return IngestError(found.group(1).strip()) if found else None


def _domain_name(name: str) -> str:
    # A domain is a folder name (domain=<name>): no path separators, no '='.
    return re.sub(r"[/\\=]", "-", name.strip()) or "none"


def prepare_files(cfg: FilesConfig, files: list[tuple[str, str]], tmp: Path, pool_schema: pa.Schema,
                  model: dict) -> Prepared:
    """Read, clean, tokenize (with ``model``'s tokenizer), split and write a files corpus (its
    ``files``, from ``list_files``) under ``tmp`` (train/ and unseen/)."""
    import ray

    total = sum(_size(p) for p, _ in files)
    if total == 0:
        raise IngestError(f"{', '.join(cfg.paths)}: the corpus is empty (0 bytes)")
    items = chunks(files)
    buckets = max(2, math.ceil(total / BUCKET_BYTES))
    stage, cleaned = tmp / "_stage", tmp / "_clean"
    cleaned.mkdir(parents=True)
    began = time.perf_counter()
    # The parse is a single operator (map, then write): Ray Data's per-operator reservation
    # would hold back half the cluster for operators that do not exist (measured: parse of 1M
    # rows on 2 CPUs 11.5 s with it, 8.6 s without). The user's setting is restored after.
    context = ray.data.DataContext.get_current()
    reserving = context.op_resource_reservation_enabled
    try:
        context.op_resource_reservation_enabled = False
        try:
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            ds = ds.map_batches(parse, fn_kwargs={"columns": cfg.columns, "buckets": buckets},
                                batch_size=1, batch_format="numpy")
            ds.write_parquet(str(stage), partition_cols=["bucket"])
        finally:
            context.op_resource_reservation_enabled = reserving
        log.info("parsed %d chunks into %d buckets in %.1fs", len(items), buckets, time.perf_counter() - began)
        clean_remote = ray.remote(clean)
        tokens = {"model": model, "prompt": cfg.prompt, "truncate": cfg.truncate}
        results = ray.get([clean_remote.remote(str(stage), b, str(cleaned), tokens) for b in range(buckets)])
    except Exception as e:
        user = _user_error(e)
        if user is not None:
            raise IngestError(str(user)) from None
        raise

    log.info("cleaned and tokenized in %.1fs", time.perf_counter() - began)
    dropped: Counter = Counter()
    faults, tasks = [], []
    for r in results:
        dropped.update(r["dropped"])
        faults.extend(r["faults"])
        tasks.extend(r["tasks"])
    names = [p for p, _ in files]
    faults.sort(key=lambda f: (f["file"], f["line"]))
    first = [f"{names[f['file']]}:{f['line']}: {f['fault']}" for f in faults[:FAULTS_LOGGED]]
    bad = {k: v for k, v in dropped.items() if not k.startswith(("empty_", "duplicate", "too_long"))}
    if bad and cfg.strict:
        raise IngestError(f"{first[0]} (and {sum(bad.values()) - 1} more bad rows; strict is on)"
                          f"{_columns_hint(files, faults, bad)}")
    if bad:
        log.warning("skipped %d bad rows (%s); first: %s%s", sum(bad.values()),
                    ", ".join(f"{k} {v}" for k, v in sorted(bad.items())), "; ".join(first), _columns_hint(files, faults, bad))
    if not tasks:
        raise IngestError(f"{', '.join(cfg.paths)}: no usable rows (dropped: {dict(dropped) or 'none'})"
                          f"{_columns_hint(files, faults, dropped)}")

    plan = plan_tasks(cfg, tasks, names[0])
    held, assign, groups = plan.held, plan.assign, plan.groups

    place_remote = ray.remote(place)
    ref = ray.put(assign)
    ray.get([place_remote.remote(str(f), ref, str(tmp), pool_schema) for f in sorted(cleaned.glob("*.parquet"))])
    log.info("wrote the pool in %.1fs", time.perf_counter() - began)

    stats: dict[str, dict[str, dict]] = {"train": {}, "unseen": {}}
    for (split, domain), members in sorted(groups.items()):
        stats[split][domain] = task_stats([t["rows"] for t in members])
    digest = hashlib.sha256(json.dumps(sorted((t["task"], t["task_key"], t["rows"], assign[t["task"]]) for t in tasks)).encode())
    several = Counter()
    for t in tasks:
        several[assign[t["task"]][0]] += t["several"]
    return Prepared(stats=stats, dropped=dict(sorted(dropped.items())), first_faults=first,
                    unseen_tasks=sorted(held), top_terms=plan.top_terms,
                    examples_per_task=max(t["rows"] for t in tasks), content_hash=digest.hexdigest(), files=names,
                    several_references={k: v for k, v in sorted(several.items()) if v})
