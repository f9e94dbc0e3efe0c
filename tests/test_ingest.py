"""Real corpora: files in every supported format, cleaned, split by task, tokenized, and bad input
either counted or refused with its file and line, never a half-written pool."""

import json
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from search.config import Config
from search.ingest import IngestError, normalize
from search.pool import Manifest, prepare, read_split

SUPERNI = Path(os.environ.get("MIXSEARCH_SUPERNI", Path(__file__).resolve().parents[2] / "shared/corpora/superni_sample"))


def config(tmp: Path, files: dict, max_length: int = 256) -> Config:
    return Config.model_validate({
        "corpus": {"source": "files", "pool_dir": str(tmp / "pools"), "files": files},
        "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "max_length": max_length},
    })


def rows(n_tasks: int, per_task: int, domains=("math", "text")) -> list[dict]:
    return [{"instruction": f"Task number {t}: do thing {t}.", "input": f"x{i}", "output": f"y{t}-{i}",
             "domain": domains[t % len(domains)]}
            for t in range(n_tasks) for i in range(per_task)]


def write_jsonl(path: Path, records: list, extra_lines: list[bytes] = ()) -> Path:
    with open(path, "wb") as f:
        for r in records:
            f.write(json.dumps(r).encode() + b"\n")
        for line in extra_lines:
            f.write(line + b"\n")
    return path


def save_to_disk(folder: Path, records: list, split: str | None = None) -> Path:
    """The layout datasets.Dataset.save_to_disk writes (checked against datasets 5.2): Arrow
    stream files named in state.json, beside dataset_info.json; state.json's ``_split`` is the
    split the Dataset was loaded as (``load_dataset(..., split="test[:10%]")``), None for one built
    in memory."""
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(records)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                   "_split": split}))
    (folder / "dataset_info.json").write_text("{}")
    return folder


def leftovers(tmp: Path) -> list[str]:
    pools = tmp / "pools"
    return sorted(p.name for p in pools.iterdir()) if pools.exists() else []


@pytest.mark.skipif(not SUPERNI.exists(), reason=f"the SuperNI sample is not at {SUPERNI}")
def test_superni_sample_with_categories_as_domains_and_its_unseen_tasks_held_out(ray_cluster, tmp_path):
    train = [json.loads(line) for line in open(SUPERNI / "train.jsonl", encoding="utf-8")]
    unseen = [json.loads(line) for line in open(SUPERNI / "unseen.jsonl", encoding="utf-8")]
    held = sorted({r["task"] for r in unseen})
    # As the recipe reads it: every reference of an instance, from "outputs".
    cfg = config(tmp_path, {"paths": [str(SUPERNI / "*.jsonl")], "columns": {"domain": "category", "output": "outputs"},
                            "unseen": {"tasks": held}}, max_length=4096)
    pool = prepare(cfg)
    m = Manifest.load(pool)
    # The manifest's counts are the files' counts, per category and split.
    for split, records in (("train", train), ("unseen", unseen)):
        by_cat = Counter(r["category"] for r in records)
        tasks_by_cat = {c: Counter(r["task"] for r in records if r["category"] == c) for c in by_cat}
        stats = getattr(m, split)
        assert set(stats) == set(by_cat)
        for cat, n in by_cat.items():
            s = stats[cat]
            assert (s.rows, s.instructions) == (n, len(tasks_by_cat[cat]))
            assert (s.examples_min, s.examples_max) == (min(tasks_by_cat[cat].values()), max(tasks_by_cat[cat].values()))
    assert m.unseen_tasks == held and m.dropped == {}
    # No unseen instruction occurs in the pool, and the rows on disk agree with the manifest.
    t, u = read_split(pool, "train"), read_split(pool, "unseen")
    assert t.num_rows == len(train) and u.num_rows == len(unseen)
    assert not {normalize(x) for x in t["instruction"].to_pylist()} & {normalize(x) for x in u["instruction"].to_pylist()}
    # Rows train on the first reference (the files' "output") and keep all of them.
    for split, records in (("train", train), ("unseen", unseen)):
        want = Counter((r["task"], r["input"], r["output"], tuple(dict.fromkeys(r["outputs"])) if len(set(r["outputs"])) > 1 else None)
                       for r in records)
        table = read_split(pool, split).select(["task", "input", "output", "references"]).to_pylist()
        assert Counter((r["task"], r["input"], r["output"], r["references"] and tuple(r["references"])) for r in table) == want
    assert m.several_references == {s: sum(len(set(r["outputs"])) > 1 for r in records)
                                    for s, records in (("train", train), ("unseen", unseen))}
    # Token ids were stored once, with the model's tokenizer and the configured prompt.
    for row in t.slice(0, 50).to_pylist():  # the character tokenizer: one id per character
        prompt = f"{row['instruction']}\n{row['input']}\n"
        assert row["prompt_len"] == len(prompt) + 1 and len(row["ids"]) == len(prompt) + len(row["output"]) + 2
    # Trials use the stored ids: a mixture of this pool encodes without tokenizing again.
    from search.mixture import Mixture, materialize
    from trainables.data import encode

    mix = materialize(pool, Mixture({"Program Execution": 0.5, "Mathematics": 0.5}, 6, budget=100, seed=0), m)
    data = encode(mix, tokenizer=None, max_length=4096)
    assert len(data) == 100 and all(len(x) == len(y) for x, y in zip(data.ids, data.labels))


def test_every_format_and_a_datasets_folder_give_the_same_pool(ray_cluster, tmp_path):
    records = rows(6, 4)
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", records[:10])
    (tmp_path / "in" / "b.json").write_text(json.dumps(records[10:14]))
    pq.write_table(pa.Table.from_pylist(records[14:18]), tmp_path / "in" / "c.parquet")
    import csv

    with open(tmp_path / "in" / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records[18:])
    by_format = prepare(config(tmp_path, {"paths": [str(tmp_path / "in" / "*")], "unseen": {"fraction": 0.34}}))
    hf = save_to_disk(tmp_path / "hf", records)
    from_hf = prepare(config(tmp_path / "x", {"paths": [str(hf)], "unseen": {"fraction": 0.34}}))
    a, b = Manifest.load(by_format), Manifest.load(from_hf)
    assert a.train == b.train and a.unseen == b.unseen and a.unseen_tasks == b.unseen_tasks
    assert sum(s.rows for s in a.train.values()) + sum(s.rows for s in a.unseen.values()) == 24
    assert sum(s.instructions for s in a.unseen.values()) == 2  # a third of each domain's 3 tasks


def test_a_folder_with_splits_gives_the_pool_of_its_train_split(ray_cluster, tmp_path):
    # What users download: a DatasetDict saved with save_to_disk, and a Hub dataset's folder
    # (data/<split>-00000-of-0000N.parquet, a README and the download cache's metadata). Their
    # test split (other tasks, other rows) must not reach the pool.
    train, test = rows(6, 4), [{**r, "instruction": "Held " + r["instruction"]} for r in rows(4, 2)]
    write_jsonl(tmp_path / "train.jsonl", train)
    want = Manifest.load(prepare(config(tmp_path / "j", {"paths": [str(tmp_path / "train.jsonl")],
                                                         "unseen": {"fraction": 0.34}})))
    saved = tmp_path / "saved"
    save_to_disk(saved / "train", train)
    save_to_disk(saved / "test", test)
    (saved / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    (hub / ".cache" / "huggingface").mkdir(parents=True)
    for i, part in enumerate((train[:10], train[10:])):
        pq.write_table(pa.Table.from_pylist(part), hub / "data" / f"train-0000{i}-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(test), hub / "data" / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(test), hub / ".cache" / "huggingface" / "test.parquet")
    (hub / "README.md").write_text("---\nlicense: mit\n---\n")
    for name, folder in (("s", saved), ("h", hub)):
        got = Manifest.load(prepare(config(tmp_path / name, {"paths": [str(folder)], "unseen": {"fraction": 0.34}})))
        assert (got.train, got.unseen, got.unseen_tasks) == (want.train, want.unseen, want.unseen_tasks), name


def _files(folder: Path, split: str = "train") -> tuple[list[str], list[str]]:
    from search.ingest import list_files

    notes: list[str] = []
    files = list_files(config(folder, {"paths": [str(folder)], "split": split, "unseen": {"fraction": 0.5}}).corpus.files,
                       notes)
    return [str(Path(p).relative_to(folder)) for p, _ in files], notes


@pytest.mark.parametrize("layout, split, read, left_out", [
    (["a.jsonl", "b/c.csv"], "train", ["a.jsonl", "b/c.csv"], None),  # no split names: all are train
    (["train.jsonl", "test.jsonl", "my_valid_1.jsonl", "extra.jsonl"], "train", ["train.jsonl"],
     "none (1 file), test (1 file), validation (1 file)"),
    (["train.jsonl", "test.jsonl", "my_valid_1.jsonl"], "validation", ["my_valid_1.jsonl"], "test (1 file), train (1 file)"),
    (["training/a.jsonl", "eval/train.jsonl"], "train", ["training/a.jsonl"], "test (1 file)"),  # folders first
    (["data/train_sft-00000-of-00001.parquet", "data/test_sft-00000-of-00001.parquet", "contest.jsonl"],
     "train_sft", ["data/train_sft-00000-of-00001.parquet"], "none (1 file), test_sft (1 file)"),
    ([".cache/x.jsonl", "__pycache__/y.json", "config.json", "a.jsonl"], "train", ["a.jsonl"], None),
])
def test_a_folder_reads_the_split_its_names_give(tmp_path, layout, split, read, left_out):
    for name in layout:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    files, notes = _files(tmp_path, split)
    assert files == read
    assert notes == ([] if left_out is None else
                     [f"{tmp_path}: reading the {len(read)} file{'s' * (len(read) > 1)} of its split {split!r} "
                      f"(corpus.files.split); left out: {left_out}"])


def test_the_pool_and_results_inside_a_corpus_folder_are_not_corpus(tmp_path):
    from search.pool import corpus_files

    for name in ("a.jsonl", "pools/files-0123/train/domain=math/bucket-00000.parquet", "results/x/progress.csv",
                 "results/x/params.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    cfg = config(tmp_path, {"paths": [str(tmp_path), str(tmp_path / "**" / "*.csv")], "unseen": {"fraction": 0.5}})
    assert corpus_files(cfg.model_copy(update={"storage_path": str(tmp_path / "results")})) == [
        (str(tmp_path / "a.jsonl"), "jsonl")]
    # A folder above the corpus (here the storage path) hides nothing of it.
    above = corpus_files(cfg.model_copy(update={"storage_path": str(tmp_path.parent)}))
    assert [Path(p).relative_to(tmp_path).as_posix() for p, _ in above] == [
        "a.jsonl", "results/x/params.json", "results/x/progress.csv"]  # once, though two patterns match it


def test_a_split_a_folder_lacks_is_an_error_naming_its_splits(tmp_path, capsys):
    from search import ingest

    (tmp_path / "hub" / "data").mkdir(parents=True)
    for name in ("train-00000-of-00001.parquet", "test-00000-of-00001.parquet"):
        (tmp_path / "hub" / "data" / name).write_text("")
    with pytest.raises(IngestError, match=r"hub: no file of split 'validation' \(corpus.files.split\); its files "
                                          r"are of the splits test \(1 file\), train \(1 file\)") as e:
        _files(tmp_path / "hub", "validation")
    assert e.value.key == ingest.SPLIT_KEY
    # A run or prepare says so before Ray, with the config's file, line and key.
    from search.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"corpus": {"source": "files", "pool_dir": str(tmp_path / "pools"), "files": {
        "paths": [str(tmp_path / "hub")], "split": "validation", "unseen": {"fraction": 0.5}}}}, sort_keys=False))
    line = cfg.read_text().splitlines().index("    split: validation") + 1
    assert main(["prepare", str(cfg)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {cfg}, line {line}, key corpus.files.split: {tmp_path / 'hub'}: "
                                              "no file of split 'validation'")
    assert not (tmp_path / "pools").exists()
    data = yaml.safe_load(cfg.read_text())
    data["corpus"]["files"]["split"] = "train"
    cfg.write_text(yaml.safe_dump({**data, "storage_path": str(tmp_path / "results")}))
    assert main(["run", str(cfg), "--dry-run"]) == 0
    assert (f"corpus: 1 file\n  {tmp_path / 'hub'}: reading the 1 file of its split 'train' (corpus.files.split); "
            "left out: test (1 file)\n") in capsys.readouterr().out
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.jsonl").write_text("")
    with pytest.raises(IngestError, match=r"plain: its file names give no splits, so all its files \(1 file\) are "
                                          "split 'train', not 'test'"):
        _files(tmp_path / "plain", "test")
    saved = tmp_path / "saved"
    save_to_disk(saved / "train", rows(1, 1))
    (saved / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    assert _files(saved) == (["train/data-00000-of-00001.arrow"], [])
    with pytest.raises(IngestError, match="saved: a saved DatasetDict with the splits train, none of them 'test'"):
        _files(saved, "test")
    # A single saved Dataset names the split it was loaded as: another is an error, not training data.
    for saved_as, fix in (("test", "set corpus.files.split: test to read it"),
                          ("train[:50%]+test", "its rows of test and train cannot be told apart; list its Arrow files")):
        one = save_to_disk(tmp_path / saved_as.replace("[:50%]", ""), rows(1, 1), split=saved_as)
        with pytest.raises(IngestError, match=re.escape(f"{one}: a saved Dataset of split {saved_as!r}, not 'train' "
                                                        f"(corpus.files.split); {fix}")) as e:
            _files(one)
        assert e.value.key == ingest.SPLIT_KEY
    assert _files(tmp_path / "test", "test") == (["data-00000-of-00001.arrow"], [])
    sliced = save_to_disk(tmp_path / "sliced", rows(1, 1), split="validation[10:20]")
    unnamed = save_to_disk(tmp_path / "unnamed", rows(1, 1))
    assert _files(sliced, "validation") == _files(unnamed, "validation") == (["data-00000-of-00001.arrow"], [])
    # Files listed or globbed are read as given; one named as another split is pointed out.
    from search.ingest import list_files

    notes: list[str] = []
    glob = str(tmp_path / "hub" / "data" / "*.parquet")
    listed = list_files(config(tmp_path, {"paths": [glob], "unseen": {"fraction": 0.5}}).corpus.files, notes)
    assert len(listed) == 2 and notes == [f"{tmp_path / 'hub/data/test-00000-of-00001.parquet'}: its name says split "
                                          "'test', but it is listed in corpus.files.paths, so its rows are read "
                                          "(give the folder to read only split 'train')"]


def test_bad_rows_are_counted_with_file_and_line_or_refused_when_strict(ray_cluster, tmp_path):
    good = rows(4, 3)
    path = write_jsonl(tmp_path / "c.jsonl", good + [good[0], {**good[1], "input": "  " + good[1]["input"].upper() + " "}], [
        b'{"instruction": "broken",',                                   # malformed JSON
        b'{"instruction": "caf\xe9", "output": "x", "domain": "math"}',  # not UTF-8
        b'{"input": "no instruction", "output": "x", "domain": "math"}',  # missing column
        b'{"instruction": ["a list"], "output": "x", "domain": "math"}',  # wrong type
        b'{"instruction": "empty answer", "output": "  ", "domain": "math"}',
        b'[1, 2]',                                                       # not an object
    ])
    files = {"paths": [str(path)], "unseen": {"fraction": 0.5}}
    m = Manifest.load(prepare(config(tmp_path, files)))
    assert m.dropped == {"duplicate": 2, "empty_output": 1, "malformed_json": 1, "missing_column:instruction": 1,
                         "not_an_object": 1, "not_utf8": 1, "wrong_type:instruction": 1}
    assert m.faults[0] == f"{path}:15: malformed_json" and m.faults[1] == f"{path}:16: not_utf8"
    assert sum(s.rows for s in m.train.values()) + sum(s.rows for s in m.unseen.values()) == 12
    # strict: the first bad row is an error naming its file and line; no pool, no temporary left.
    strict = config(tmp_path / "s", {**files, "strict": True})
    with pytest.raises(IngestError, match=f"{path}:15: malformed_json"):
        prepare(strict)
    assert leftovers(tmp_path / "s") == []


def test_a_list_of_references_trains_on_the_first_and_keeps_them_all(ray_cluster, tmp_path, capsys):
    # Super-NaturalInstructions gives each instance a list of references: a row trains on the
    # first, and the pool keeps them all to score unseen tasks against each (JSONL and Parquet).
    from trainables.data import encode

    records = rows(6, 4)
    expected = {}
    for i, r in enumerate(records):
        first = r["output"]
        several = i % 2 == 0  # a repeat and a blank one are left out
        r["output"] = [first, first + "-alt", first, "  "] if several else [first]
        expected[r["instruction"], r["input"]] = (first, [first, first + "-alt"] if several else None)
    for r in records[:12:4]:
        r["output"] = r["output"][0]  # plain text beside lists, in one file
        expected[r["instruction"], r["input"]] = (r["output"], None)
    folder = tmp_path / "in"
    folder.mkdir()
    task = records[0]["instruction"]
    write_jsonl(folder / "a.jsonl", records[:12], [json.dumps({"instruction": task, "input": k, "output": v,
                                                               "domain": "math"}).encode()
                                                   for k, v in [("none", []), ("blank", [" "]),
                                                                ("dict", [{"text": "y"}]), ("numbers", [7, 7.5])]])
    expected[task, "numbers"] = ("7", ["7", "7.5"])
    pq.write_table(pa.Table.from_pylist(records[12:]), folder / "b.parquet")
    files = {"paths": [str(folder)], "unseen": {"fraction": 0.34}}
    pool = prepare(config(tmp_path, files))
    m = Manifest.load(pool)
    assert m.dropped == {"empty_output": 2, "wrong_type:output": 1}
    assert m.several_references == {s: n for s in ("train", "unseen")
                                    if (n := sum(r is not None for r in read_split(pool, s)["references"].to_pylist()))}
    # mixsearch prepare says how many rows have several.
    from search.cli import main
    from tests.conftest import write_config

    assert main(["prepare", str(write_config(tmp_path, {"corpus": {"source": "files", "files": files},
                                                         "model": {"max_length": 256}}))]) == 0
    out = capsys.readouterr().out
    for split, n in m.several_references.items():
        assert re.search(rf"^{split}: .*; {n} rows with several references$", out, re.M), out
    got = {(r["instruction"], r["input"]): r for s in ("train", "unseen") for r in read_split(pool, s).to_pylist()}
    assert {k: (r["output"], r["references"]) for k, r in got.items()} == expected
    for r in got.values():  # the token ids hold the first (the character tokenizer: one id each)
        assert len(r["ids"]) == r["prompt_len"] + len(r["output"]) + 1
    # A trial's unseen items carry each row's references, its own output first.
    unseen = read_split(pool, "unseen")
    data = encode(unseen, None, 256)
    assert data.references == [refs or [out] for out, refs in
                               (expected[k] for k in zip(unseen["instruction"].to_pylist(), unseen["input"].to_pylist()))]


@pytest.mark.parametrize("case", ["missing_file", "empty_corpus", "nothing_usable", "few_tasks", "no_domain",
                                  "unknown_unseen", "bad_json_array", "shared_instruction"])
def test_file_level_faults_are_clear_errors_and_leave_no_pool(ray_cluster, tmp_path, case):
    src = tmp_path / "c.jsonl"
    files = {"paths": [str(src)], "unseen": {"fraction": 0.5}}
    if case == "missing_file":
        files["paths"] = [str(tmp_path / "nope.jsonl")]
        want = f"{tmp_path / 'nope.jsonl'}: no such file"
    elif case == "empty_corpus":
        src.write_bytes(b"")
        want = "the corpus is empty"
    elif case == "nothing_usable":
        write_jsonl(src, [], [b"not json", b"{}"])
        want = "no usable rows"
    elif case == "few_tasks":
        write_jsonl(src, rows(3, 2, domains=("math", "math", "tiny")))
        want = "domain 'tiny' has 1 tasks, too few"
    elif case == "no_domain":
        write_jsonl(src, [{k: v for k, v in r.items() if k != "domain"} for r in rows(4, 2)])
        want = "no domain in column 'domain'"
    elif case == "unknown_unseen":
        write_jsonl(src, rows(4, 2))
        files["unseen"] = {"tasks": ["task_x"]}
        want = "none of its 1 tasks is in the corpus"
    elif case == "bad_json_array":
        src = tmp_path / "c.json"
        src.write_text('[{"instruction": "a"')
        files["paths"] = [str(src)]
        want = f"{src}: not a JSON array"
    else:  # two task names, one instruction: holding out one would leak it
        recs = [{**r, "task": f"t{i % 4}"} for i, r in enumerate(rows(4, 2))]
        recs += [{**recs[0], "task": "copy", "input": "other"}]
        write_jsonl(src, recs)
        files["unseen"] = {"tasks": ["copy"]}
        want = "unseen task 'copy' has the same normalized instruction as training task"
    with pytest.raises(IngestError, match=want.replace("(", r"\(").replace(")", r"\)")):
        prepare(config(tmp_path, files))
    assert leftovers(tmp_path) == []
    # The parse turns Ray Data's operator reservation off for itself only, failing or not.
    import ray.data

    assert ray.data.DataContext.get_current().op_resource_reservation_enabled


def test_a_named_column_must_exist_and_category_stands_in_for_the_default_only(ray_cluster, tmp_path):
    recs = [{**{k: v for k, v in r.items() if k != "domain"}, "category": r["domain"]} for r in rows(4, 2)]
    files = {"paths": [str(write_jsonl(tmp_path / "c.jsonl", recs))], "unseen": {"fraction": 0.5}}
    m = Manifest.load(prepare(config(tmp_path / "default", files)))
    assert set(m.train) | set(m.unseen) == {"math", "text"}  # the default name: category stands in
    with pytest.raises(IngestError, match=r"no domain in column 'categry' for 4 tasks"):
        prepare(config(tmp_path / "typo", {**files, "columns": {"domain": "categry"}}))
    with pytest.raises(IngestError, match=r"no row has the task column 'task_name'"):
        prepare(config(tmp_path / "task", {**files, "columns": {"domain": "category", "task": "task_name"}}))
    assert leftovers(tmp_path / "typo") == [] and leftovers(tmp_path / "task") == []


def test_unseen_by_domain_and_by_task_file(ray_cluster, tmp_path):
    write_jsonl(tmp_path / "c.jsonl", rows(6, 2, domains=("math", "text", "code")))
    m = Manifest.load(prepare(config(tmp_path, {"paths": [str(tmp_path / "c.jsonl")], "unseen": {"domains": ["code"]}})))
    assert set(m.unseen) == {"code"} and set(m.train) == {"math", "text"}
    listed = tmp_path / "unseen.txt"
    # without a task column a task is its normalized instruction's hash; names come from a column here
    recs = [{**r, "task": f"task{r['instruction'].split()[2][:-1]}"} for r in rows(6, 2)]
    write_jsonl(tmp_path / "t.jsonl", recs)
    listed.write_text("# held out\ntask1\ntask4\n")
    m = Manifest.load(prepare(config(tmp_path / "f", {"paths": [str(tmp_path / "t.jsonl")], "unseen": {"tasks_file": str(listed)}})))
    assert m.unseen_tasks == ["task1", "task4"]


def test_a_byte_order_mark_is_read_as_nothing(ray_cluster, tmp_path):
    # Excel's "CSV UTF-8" and Windows editors start files with one: it used to rename a CSV's
    # first column (every row "missing_column:instruction") and spoil a JSONL file's first line.
    import csv
    import io

    recs = [{**r, "task": f"task{r['instruction'].split()[2][:-1]}"} for r in rows(6, 3)]
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(recs[0]), lineterminator="\r\n")
    w.writeheader()
    w.writerows(recs[:6])
    texts = {"a.csv": out.getvalue(), "b.jsonl": "\r\n".join(json.dumps(r) for r in recs[6:12]) + "\r\n",
             "c.json": json.dumps(recs[12:]), "unseen.txt": "task1\ntask4\n"}
    manifests = []
    for bom in (b"", b"\xef\xbb\xbf"):
        folder = tmp_path / f"bom{len(bom)}"
        folder.mkdir()
        for name, text in texts.items():
            (folder / name).write_bytes(bom + text.encode())
        files = {"paths": [str(folder / "*.csv"), str(folder / "*.json*")], "columns": {"task": "task"},
                 "unseen": {"tasks_file": str(folder / "unseen.txt")}, "strict": True}
        manifests.append(Manifest.load(prepare(config(folder, files))))
    plain, marked = manifests
    assert marked.unseen_tasks == plain.unseen_tasks == ["task1", "task4"]
    assert marked.train == plain.train and marked.unseen == plain.unseen and marked.dropped == {}
    assert sum(s.rows for s in marked.train.values()) + sum(s.rows for s in marked.unseen.values()) == 18


def test_compressed_files_give_the_same_pool_and_a_truncated_one_is_named(ray_cluster, tmp_path):
    import bz2
    import csv
    import gzip

    records = rows(6, 4)
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    write_jsonl(plain / "a.jsonl", records[:12], extra_lines=[b"{"])  # a bad row: its line is kept
    (plain / "b.json").write_text(json.dumps(records[12:18]))
    with open(plain / "c.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records[18:])
    packed.mkdir()
    (packed / "a.jsonl.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + (plain / "a.jsonl").read_bytes()))
    (packed / "b.json.bz2").write_bytes(bz2.compress((plain / "b.json").read_bytes()))
    with pa.CompressedOutputStream(str(packed / "c.csv.zst"), "zstd") as out:
        out.write((plain / "c.csv").read_bytes())
    a, b = (Manifest.load(prepare(config(tmp_path / f"{d.name}-out", {"paths": [str(d)], "unseen": {"fraction": 0.34}})))
            for d in (plain, packed))
    assert a.train == b.train and a.unseen == b.unseen and a.unseen_tasks == b.unseen_tasks
    assert sum(s.rows for s in b.train.values()) + sum(s.rows for s in b.unseen.values()) == 24
    assert b.dropped == {"malformed_json": 1} and b.faults == [f"{packed / 'a.jsonl.gz'}:13: malformed_json"]

    whole = (packed / "a.jsonl.gz").read_bytes()
    (packed / "a.jsonl.gz").write_bytes(whole[:len(whole) // 2])  # a download cut short
    with pytest.raises(IngestError, match=f"{packed / 'a.jsonl.gz'}: not readable as gzip"):
        prepare(config(tmp_path / "cut", {"paths": [str(packed)], "unseen": {"fraction": 0.34}}))
    assert leftovers(tmp_path / "cut") == []
    (packed / "d.parquet.gz").write_bytes(b"")  # Parquet compresses inside the file
    with pytest.raises(IngestError, match=r"d.parquet.gz: unknown format .* optionally compressed: .gz, .bz2, .zst"):
        prepare(config(tmp_path / "cut", {"paths": [str(packed / "*")], "unseen": {"fraction": 0.34}}))


def test_a_parse_task_hands_on_a_large_chunk_in_parts(tmp_path, monkeypatch):
    import gzip

    from search import ingest

    write_jsonl(tmp_path / "a.jsonl", rows(4, 5))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress((tmp_path / "a.jsonl").read_bytes()))
    cfg = config(tmp_path, {"paths": [str(tmp_path / "a.jsonl*")], "unseen": {"fraction": 0.5}}).corpus.files
    files = ingest.list_files(cfg)
    assert [fmt for _, fmt in files] == ["jsonl", "jsonl"]
    (plain,), (packed,) = (ingest.chunks([f]) for f in files)  # a compressed file is one chunk
    columns = cfg.columns
    monkeypatch.setattr(ingest, "PARSE_ROWS", 6)
    parts = list(ingest.parse({k: [v] for k, v in packed.items()}, columns, 4))
    assert [p.num_rows for p in parts] == [6, 6, 6, 2]
    whole = list(ingest.parse({k: [v] for k, v in plain.items()}, columns, 4))
    assert pa.concat_tables(parts).equals(pa.concat_tables(whole))
    assert ingest._size(str(tmp_path / "a.jsonl.gz")) == os.path.getsize(tmp_path / "a.jsonl")  # read to the end
    whole = (tmp_path / "a.jsonl.gz").read_bytes()
    (tmp_path / "a.jsonl.gz").write_bytes(whole[:-8])  # no checksum: the parse task names the file
    with pytest.raises(IngestError, match=f"{tmp_path / 'a.jsonl.gz'}: not readable as gzip"):
        list(ingest.parse({k: [v] for k, v in packed.items()}, columns, 4))


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.csv", "a.parquet"])
def test_a_file_a_prepare_task_cannot_find_says_where_files_must_be(tmp_path, name):
    # On a cluster the driver lists the files and the parse runs on other nodes: a file only on
    # the head is found by one and missing for the others.
    from search import ingest

    path = tmp_path / name
    pq.write_table(pa.table({"instruction": ["a"], "output": ["b"]}), path)
    cfg = config(tmp_path, {"paths": [str(path)], "unseen": {"fraction": 0.5}}).corpus.files
    (chunk,) = ingest.chunks(ingest.list_files(cfg))
    path.unlink()
    with pytest.raises(IngestError, match=f"{path}: no such file on .*, where a prepare task ran; on a cluster, "
                                          "corpus files must be in a folder every node mounts"):
        list(ingest.parse({k: [v] for k, v in chunk.items()}, cfg.columns, 2))


def test_chat_rows_give_the_pool_of_their_instruction_rows(ray_cluster, tmp_path):
    # OpenAI's messages (JSONL, Parquet) and ShareGPT's conversations (a JSON array), with and
    # without a system turn, against the same rows as instruction and output.
    records = [{**r, "input": ""} for r in rows(6, 4)]
    for r in records[::2]:
        r["instruction"] = "You are terse.\n" + r["instruction"]

    def chat(r, role="role", content="content", names=("system", "user", "assistant")):
        system, _, user = r["instruction"].rpartition("\n")
        turns = [{role: names[1], content: user}, {role: names[2], content: r["output"]}]
        return ([{role: names[0], content: system}] if system else []) + turns

    plain, chats = tmp_path / "plain", tmp_path / "chats"
    plain.mkdir()
    chats.mkdir()
    write_jsonl(plain / "a.jsonl", records)
    write_jsonl(chats / "a.jsonl", [{"messages": chat(r), "domain": r["domain"]} for r in records[:10]], extra_lines=[
        json.dumps({"messages": chat(records[0]) * 2, "domain": "math"}).encode(),  # two exchanges
        json.dumps({"messages": chat(records[0])[:-1], "domain": "math"}).encode(),  # no answer
        json.dumps({"messages": "hi", "domain": "math"}).encode(),
    ])
    (chats / "b.json").write_text(json.dumps([{"conversations": chat(r, "from", "value", ("system", "human", "gpt")),
                                               "category": r["domain"]} for r in records[10:16]]))
    pq.write_table(pa.Table.from_pylist([{"messages": chat(r), "domain": r["domain"]} for r in records[16:]]),
                   chats / "c.parquet")
    a, b = (Manifest.load(prepare(config(d, {"paths": [str(d)], "unseen": {"fraction": 0.34}}))) for d in (plain, chats))
    assert a.train == b.train and a.unseen == b.unseen and a.unseen_tasks == b.unseen_tasks
    assert sum(s.rows for s in b.train.values()) + sum(s.rows for s in b.unseen.values()) == 24
    assert b.dropped == {"multi_turn": 1, "wrong_type:messages": 2}
    assert b.faults[0] == f"{chats / 'a.jsonl'}:11: multi_turn"
    # A column named otherwise: named in the config, and only that name is read.
    write_jsonl(chats / "a.jsonl", [{"chat": chat(r), "domain": r["domain"]} for r in records[:10]])
    named = {"paths": [str(chats / "a.jsonl")], "unseen": {"fraction": 0.34}, "columns": {"messages": "chat"}}
    assert sum(s.rows for s in Manifest.load(prepare(config(tmp_path / "named", named))).train.values()) > 0
    conversations = {**named, "columns": {"messages": "conversations"}}
    with pytest.raises(IngestError, match="no usable rows.*missing_column:instruction"):
        prepare(config(tmp_path / "other", conversations))


def test_a_dry_run_checks_the_space_against_a_prepared_pool(ray_cluster, tmp_path, capsys):
    # A file corpus's domains and tasks are known once it is prepared: then a dry run checks the
    # space against them, as the run would after preparing it.
    import ray

    from search.cli import main
    from tests.conftest import write_config

    write_jsonl(tmp_path / "c.jsonl", rows(6, 4))
    files = {"source": "files", "files": {"paths": [str(tmp_path / "c.jsonl")], "unseen": {"fraction": 0.34}}}
    path = write_config(tmp_path, {"corpus": files, "model": {"max_length": 256}})
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(not prepared: " in out and "weights: uniform on the simplex over the pool's domains" in out
    assert "corpus: 1 file\n" in out
    assert main(["prepare", str(path)]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--dry-run"]) == 2
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.strip() == "high: 100")
    assert (f"{path}, line {line}, key search.space.num_instructions.high: up to 100 distinct instructions asked, "
            "but the weighted domains of the pool hold 4") in capsys.readouterr().err
    data = yaml.safe_load(path.read_text())
    data["search"]["space"]["num_instructions"] = {"low": 1, "high": 4}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(prepared: 4 training instructions in 2 domains)" in out
    assert "weights: uniform on the simplex over math, text\n" in out
    assert ray.is_initialized() and not (tmp_path / "results").exists()


def test_columns_named_otherwise_are_named_in_the_error_and_mapped_by_the_config(ray_cluster, tmp_path):
    # Dolly's layout: the answer is "response", the input "context". The error used to say only
    # "no usable rows (dropped: {'missing_column:output': 24})".
    dolly = [{"instruction": r["instruction"], "context": r["input"], "response": r["output"], "category": r["domain"]}
             for r in rows(6, 4)]
    data = write_jsonl(tmp_path / "dolly.jsonl", dolly)
    with pytest.raises(IngestError) as e:
        prepare(config(tmp_path, {"paths": [str(data)], "unseen": {"fraction": 0.34}}))
    assert (f"no usable rows (dropped: {{'missing_column:output': 24}}); rows lack the column output, and {data} "
            "has instruction, context, response, category: name yours in corpus.files.columns") in str(e.value)
    fine = write_jsonl(tmp_path / "a_fine.jsonl", rows(3, 2))  # listed first, and not the culprit
    strict = {"paths": [str(fine), str(data)], "unseen": {"fraction": 0.34}, "strict": True}
    with pytest.raises(IngestError) as e:
        prepare(config(tmp_path, strict))
    assert f"strict is on); rows lack the column output, and {data} has instruction, context" in str(e.value)
    mapped = {"paths": [str(data)], "columns": {"input": "context", "output": "response"}, "unseen": {"fraction": 0.34}}
    m = Manifest.load(prepare(config(tmp_path, mapped)))
    assert sum(s.rows for s in m.train.values()) + sum(s.rows for s in m.unseen.values()) == 24 and m.dropped == {}


def test_first_columns_of_each_format(tmp_path):
    from search.ingest import first_columns

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "completion": "c"}]), tmp_path / "a.parquet")
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbfprompt,completion\r\np,c\r\n")
    (tmp_path / "a.json").write_text(json.dumps([{"prompt": "p", "completion": "c"}]))
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "completion": "c"}], extra_lines=[b"{"])
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([("prompt", pa.string()), ("completion", pa.string())])):
        pass
    for fmt in ("parquet", "csv", "json", "jsonl", "arrow"):
        assert first_columns(str(tmp_path / f"a.{fmt}"), fmt) == ["prompt", "completion"], fmt
    assert first_columns(str(tmp_path / "missing.jsonl"), "jsonl") is None


def test_unlabelled_corpus_gets_domains_by_clustering(ray_cluster, tmp_path):
    topics = {"math": "add the numbers and compute the sum arithmetic", "poem": "write a poem with rhyme and verse"}
    recs = [{"instruction": f"{topics[t]} variant {i}", "input": "", "output": "ok"}
            for t in topics for i in range(6)]
    write_jsonl(tmp_path / "c.jsonl", recs)
    m = Manifest.load(prepare(config(tmp_path, {"paths": [str(tmp_path / "c.jsonl")], "domains": {"clusters": 2},
                                                "unseen": {"fraction": 0.34}})))
    assert sorted(m.top_terms) == ["cluster0", "cluster1"]
    terms = [set(v) for v in m.top_terms.values()]
    assert any({"poem", "rhyme"} <= t for t in terms) and any({"numbers", "sum"} <= t for t in terms)
    rows_ = pa.concat_tables([read_split(Path(prepare(config(tmp_path, {
        "paths": [str(tmp_path / "c.jsonl")], "domains": {"clusters": 2}, "unseen": {"fraction": 0.34}}))), s)
        for s in ("train", "unseen")])
    for d in ("cluster0", "cluster1"):  # each cluster is one topic
        words = {x.split()[0] for x, dd in zip(rows_["instruction"].to_pylist(), rows_["domain"].to_pylist()) if dd == d}
        assert len(words) == 1


def test_too_long_rows_are_dropped_or_truncated(ray_cluster, tmp_path):
    recs = rows(4, 2) + [{"instruction": "long " * 30 + "task", "input": "i", "output": "short", "domain": "math"}]
    write_jsonl(tmp_path / "c.jsonl", recs)
    files = {"paths": [str(tmp_path / "c.jsonl")], "unseen": {"domains": ["text"]}, "prompt": "{instruction}|{input}="}
    m = Manifest.load(prepare(config(tmp_path, files, max_length=48)))
    assert m.dropped == {"too_long": 1}
    pool = prepare(config(tmp_path / "t", {**files, "truncate": True}, max_length=48))
    assert Manifest.load(pool).dropped == {}
    table = read_split(pool, "train")
    assert max(len(x) for x in table["ids"].to_pylist()) <= 48
    from trainables.tokenizer import char_tokenizer

    tok = char_tokenizer()
    def text(ids):
        return "".join(tok.convert_ids_to_tokens(ids))

    for r in table.to_pylist():  # the answer and <eos> always survive; the prompt keeps its start
        assert text(r["ids"][r["prompt_len"]:-1]) == r["output"]
        assert text(r["ids"][1:r["prompt_len"]]) == f"{r['instruction']}|{r['input']}="[: r["prompt_len"] - 1]


# A ChatML-like template with a system turn, as instruct models ship; characters only, so the
# character tokenizer reads it.
CHAT_TEMPLATE = ("<|system|>\nBe brief.<|end|>\n{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    from trainables.model import build_model, save
    from trainables.tokenizer import char_tokenizer

    path = tmp_path_factory.mktemp("chat") / "tiny-chat"
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    save(build_model({"n_layer": 1, "n_embd": 32, "n_head": 2}, 32, tok), tok, path)
    return path


def test_chat_prompts_use_the_models_template_and_truncation_keeps_its_end(ray_cluster, tmp_path, chat_model_dir):
    from trainables.tokenizer import load_tokenizer

    recs = rows(4, 2) + [{"instruction": "long " * 30 + "task", "input": "i", "output": "short", "domain": "math"}]
    write_jsonl(tmp_path / "c.jsonl", recs)
    files = {"paths": [str(tmp_path / "c.jsonl")], "unseen": {"domains": ["text"]}, "prompt": "chat", "truncate": True}
    cfg = Config.model_validate({"corpus": {"source": "files", "pool_dir": str(tmp_path / "pools"), "files": files},
                                 "model": {"pretrained": str(chat_model_dir), "max_length": 96}})
    table = read_split(prepare(cfg), "train")
    tok = load_tokenizer(cfg.model.model_dump())  # reloaded from the directory: its template was saved

    def text(ids):
        return "".join(tok.convert_ids_to_tokens(ids))

    head, tail = "<|system|>\nBe brief.<|end|>\n<|user|>\n", "<|end|>\n<|assistant|>\n"
    for r in table.to_pylist():  # no BOS of our own: the template's text starts the row
        prompt, answer = text(r["ids"][:r["prompt_len"]]), text(r["ids"][r["prompt_len"]:])
        assert answer == r["output"] + "<eos>"
        user = f"{r['instruction']}\n{r['input']}"
        if r["instruction"].startswith("long"):  # cut to 96 tokens inside the user's text, the template's end kept
            kept = prompt.removeprefix(head).removesuffix(tail)
            assert len(r["ids"]) == 96 and prompt == head + kept + tail and user.startswith(kept) and len(kept) > 10
        else:
            assert prompt == head + user + tail
    assert table.num_rows == 5


def test_a_chat_prompt_without_a_chat_template_is_an_error_before_ray(tmp_path, capsys, pretrained_dir):
    from search.cli import main

    write_jsonl(tmp_path / "c.jsonl", rows(4, 2))
    for name, model, why in (("tiny", {}, "the tiny model's character tokenizer has none"),
                             ("base", {"pretrained": str(pretrained_dir), "max_length": 64},
                              f"the tokenizer of {pretrained_dir} has no chat template")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"model": model, "corpus": {
            "source": "files", "pool_dir": str(tmp_path / "pools"),
            "files": {"paths": [str(tmp_path / "c.jsonl")], "prompt": "chat", "unseen": {"fraction": 0.5}}}},
            sort_keys=False))
        line = path.read_text().splitlines().index("    prompt: chat") + 1
        assert main(["prepare", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}, line {line}, key corpus.files.prompt: ") and why in err, err
    assert not (tmp_path / "pools").exists()


@pytest.mark.slow
def test_a_search_on_a_file_corpus_end_to_end(tmp_path):
    import ray
    import yaml

    from search.cli import main

    domains = ("math", "text", "code")
    write_jsonl(tmp_path / "c.jsonl", rows(12, 10, domains))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "files", "storage_path": str(tmp_path / "results"),
        "corpus": {"source": "files", "pool_dir": str(tmp_path / "pools"),
                   "files": {"paths": [str(tmp_path / "c.jsonl")], "unseen": {"fraction": 0.34}}},
        "model": {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "max_length": 64},
        "training": {"epochs": 2, "eval_examples": 40},
        # No weights given: the simplex over every domain of the pool, known once it is prepared.
        "search": {"num_samples": 2, "space": {"num_instructions": {"low": 2, "high": 8}, "budget": 80}},
        "ray": {"num_cpus": 2},
    }))
    exp = tmp_path / "results" / "files"
    try:
        assert main(["run", str(path)]) == 0
        # The saved config keeps `all`, so a resume compares like with like and is accepted.
        assert yaml.safe_load((exp / "config.yaml").read_text())["search"]["space"]["weights"]["simplex"] == "all"
        assert main(["run", str(path), "--resume"]) == 0
    finally:
        ray.shutdown()
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["num_trials"] == 2
    for t in summary["trials"]:
        assert t["status"] in ("COMPLETED", "EARLY_STOPPED") and set(t["per_domain"]) == set(domains)
        assert set(t["config"]["weights"]) == set(domains) and all(w > 0 for w in t["config"]["weights"].values())
