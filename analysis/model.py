"""Stage 6, report: the model a search trained, to try in a notebook or to export.

    from analysis.model import load_trained, answers, prompt_ids, unseen_items, export
    best = load_trained("mixsearch_results/default")              # the best trial's last checkpoint
    answers(best, ["bcbc->bb"], ["bcbcbfad"])                      # greedy, prompted as in training
    items = unseen_items("mixsearch_results/default")             # what every trial was scored on
    export("mixsearch_results/default", "best-model")              # a transformers model directory

A trial's checkpoint holds only the trained parameters (the adapters, with LoRA); the experiment's
``config.yaml`` says how to build the model they belong to, and the corpus section how its
prompts were written. The exported directory loads with ``AutoModelForCausalLM.from_pretrained``
and ``AutoTokenizer.from_pretrained``, LoRA merged, with ``mixsearch.json`` beside it: the trial,
its epoch and scores, its mixture and the prompt format.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from analysis.results import INTERNAL, SUMMARY, experiment_folder, load_summary, log_rows

if TYPE_CHECKING:
    import pandas as pd

INFO = "mixsearch.json"


@dataclass(frozen=True)
class Trained:
    """A trial's trained model and tokenizer (eval mode, LoRA merged) and what it is: ``info``
    holds ``trial_id``, ``checkpoint``, ``epoch``, the scores reported at that epoch
    (``unseen_accuracy``, per domain in ``per_domain``), the trial's ``config`` (its mixture and
    knobs), ``prompt`` (the template, or ``chat``), ``bos`` (whether rows start with the
    tokenizer's BOS token), ``max_length``, ``base_model`` (the pretrained model the trials read,
    or None for a tiny one) and ``lora`` (its settings, or None)."""

    model: Any
    tokenizer: Any
    info: dict


def trial_folder(exp: Path, trial: str | None) -> Path:
    """The folder of the named trial (its id, or its folder's name), else of the best one."""
    if trial is None:
        try:
            best = load_summary(exp).get("best")
        except FileNotFoundError:
            raise ValueError(f"{exp}: no summary.json yet (running or interrupted), so no best trial: "
                             "name a trial (--trial; `mixsearch report` lists the best so far)") from None
        if not best:
            raise ValueError(f"{exp}: no trial reported a result, so there is no best model; "
                             "name a trial (--trial; `mixsearch report` lists them)")
        trial = best["trial_id"]
    folder = exp / (trial if trial.startswith("trial_") else f"trial_{trial}")
    if not folder.is_dir():
        known = sorted(p.name.removeprefix("trial_") for p in exp.glob("trial_*") if p.is_dir())
        raise ValueError(f"{exp}: no trial {trial} (its trials: {', '.join(known) or 'none'})")
    return folder


def _last_checkpoint(folder: Path) -> Path:
    from trainables.model import WEIGHTS

    saved = sorted(p.parent for p in folder.glob(f"checkpoint_*/{WEIGHTS}"))
    if not saved:
        raise ValueError(f"{folder}: no checkpoint (the trial failed before its first epoch ended)")
    return saved[-1]


def _reported(folder: Path, checkpoint: Path) -> dict:
    """What the trial reported with this checkpoint (its last delivery: a restored trial reports
    an epoch again), from Tune's ``result.json``; empty if the log lacks it."""
    rows = [r for r in log_rows(folder / "result.json") if r.get("checkpoint_dir_name") == checkpoint.name]
    return rows[-1] if rows else {}


def _config(exp: Path) -> dict:
    """The config the experiment started with (every key), as saved beside it."""
    try:
        return yaml.safe_load((exp / "config.yaml").read_text())
    except FileNotFoundError:
        raise ValueError(f"{exp}: no config.yaml, which says what model the trials trained and on what") from None


def _model_config(exp: Path, model: str | None) -> tuple[dict, dict]:
    """(the experiment's config.yaml, its ``model`` section validated), the pretrained model read
    from ``model`` when given: where it is on this machine, if not where the trials read it."""
    from search.config import ModelConfig

    config = _config(exp)
    section = dict(config["model"])
    if model is not None:
        if not section.get("pretrained"):
            raise ValueError(f"--model {model}: the trials trained a tiny model, built from "
                             f"{exp / 'config.yaml'}; --model says where their pretrained model is")
        section["pretrained"] = model
    try:
        return config, ModelConfig.model_validate(section).model_dump()
    except ValidationError as e:  # a pretrained model no longer where it was
        where = f"--model {model}" if model is not None else f"{exp / 'config.yaml'}, key model"
        hint = "" if model is not None else \
            " (a copy of the experiment from elsewhere? --model gives the model's folder on this machine)"
        raise ValueError(f"{where}: {e.errors()[0]['msg'].removeprefix('Value error, ')}{hint}") from None


def load_trained(experiment: str | Path, trial: str | None = None, model: str | None = None) -> Trained:
    """The model a trial of ``experiment`` trained, at its last checkpoint (the best trial's by
    default; ``trial`` is an id as the summary gives it). Builds the model as the trials did
    (the tiny one, or the pretrained one: where the config says, or ``model``, a local folder or
    hub id, for an experiment copied from a cluster) and loads the checkpoint's parameters into
    it; works on a running search too, given a trial."""
    from search.config import CHAT_PROMPT
    from trainables.model import load_trained as load_model
    from trainables.tokenizer import PROMPT

    exp = experiment_folder(experiment)
    folder = trial_folder(exp, trial)
    checkpoint = _last_checkpoint(folder)
    config, model_cfg = _model_config(exp, model)
    try:
        net, tokenizer = load_model(model_cfg, checkpoint)
    except RuntimeError as e:  # load_weights: another model than the trials trained (--model)
        raise ValueError(f"{model_cfg['pretrained'] or 'the tiny model'}: not the model the trials trained: {e}") from None
    corpus = config["corpus"]
    prompt = corpus["files"]["prompt"] if corpus["source"] == "files" else PROMPT
    row = _reported(folder, checkpoint)
    accuracy = "unseen_accuracy/"
    info = {
        "experiment": str(exp.resolve()),
        "trial_id": folder.name.removeprefix("trial_"),
        "checkpoint": str(checkpoint.resolve()),
        "epoch": row.get("epoch"),
        "unseen_accuracy": row.get("unseen_accuracy"),
        "per_domain": {k[len(accuracy):]: v for k, v in row.items() if k.startswith(accuracy)},
        "metric": config["training"]["metric"],
        "config": {k: v for k, v in row.get("config", {}).items() if k not in INTERNAL},
        "prompt": prompt,
        "bos": tokenizer.bos_token_id is not None and prompt != CHAT_PROMPT,
        "max_length": model_cfg["max_length"],
        # What it was fine-tuned from, as the trials read it (not --model's copy): null for the tiny one.
        "base_model": config["model"].get("pretrained"),
        "lora": model_cfg["lora"],
    }
    return Trained(net, tokenizer, info)


def _pool(exp: Path, config: dict) -> Path:
    """The pool the experiment's trials read: where its summary says (an absolute path), else where
    its config puts it from here; a relative ``pool_dir`` is relative to where the search ran."""
    from search.config import Config
    from search.pool import pool_path

    summary = load_summary(exp) if (exp / SUMMARY).exists() else {}
    tried = [Path(summary["pool"])] if summary.get("pool") else []
    try:
        tried.append(pool_path(Config.model_validate(config)))
    except ValidationError:  # its model or corpus files are not on this machine: only the summary's then
        pass
    found = next((p for p in tried if (p / "unseen").is_dir()), None)
    if found is None:
        where = ", ".join(map(str, tried)) or "neither its summary nor its config names one here"
        raise FileNotFoundError(f"{exp}: the pool its trials read is not here ({where}); "
                                f"`mixsearch prepare {exp / 'config.yaml'}`, run where the search ran, writes it again")
    return found


def unseen_items(experiment: str | Path) -> "pd.DataFrame":
    """The unseen items every trial of ``experiment`` was scored on (the same subsample of the
    pool's unseen split): ``domain``, ``task``, ``instruction``, ``input``, ``output`` (and, for
    answers with several, ``references``). With ``answers``, what a trial's model got right."""
    from trainables.train import eval_rows

    exp = experiment_folder(experiment)
    config = _config(exp)
    rows = eval_rows(_pool(exp, config), config["training"]["eval_examples"], config["seed"])
    keep = ["domain", "task", "instruction", "input", "output"] + (["references"] if "references" in rows.column_names else [])
    return rows.select(keep).to_pandas()


def _prompts(trained: Trained, instructions: list[str], inputs: list[str] | None):
    import pyarrow as pa

    from trainables.data import encode

    inputs = inputs if inputs is not None else [""] * len(instructions)
    if len(inputs) != len(instructions):
        raise ValueError(f"{len(instructions)} instructions but {len(inputs)} inputs")
    rows = pa.table({"instruction": instructions, "input": inputs, "output": [""] * len(instructions),
                     "domain": [""] * len(instructions)})
    return encode(rows, trained.tokenizer, trained.info["max_length"], trained.info["prompt"])


def prompt_ids(trained: Trained, instructions: list[str], inputs: list[str] | None = None) -> list[list[int]]:
    """The token ids each prompt had in the trial's rows (template, BOS, tokenizer), which its
    answer follows: what to give ``model.generate`` yourself."""
    data = _prompts(trained, instructions, inputs)
    return [ids[:-1].tolist() for ids in data.ids]  # the empty answer leaves only <eos> after the prompt


def answers(trained: Trained, instructions: list[str], inputs: list[str] | None = None, *,
            max_new_tokens: int = 64) -> list[str]:
    """Greedy answers of the trained model to prompts built as the trial's rows were
    (``prompt_ids``): the answers its evaluation scored, up to ``max_new_tokens`` tokens each."""
    from trainables.evaluate import generate_answers

    data = _prompts(trained, instructions, inputs)
    return generate_answers(trained.model, trained.tokenizer, data, trained.info["max_length"],
                            max_new_tokens=max_new_tokens)


def export(experiment: str | Path, out: str | Path, trial: str | None = None, model: str | None = None) -> Trained:
    """Save a trial's trained model (``load_trained``) as a transformers model directory at
    ``out``, with its tokenizer and ``mixsearch.json`` (``Trained.info``). ``out`` must not hold
    anything yet; it appears complete or not at all. ``model``: as in ``load_trained``."""
    from trainables.model import save

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not an empty folder; nothing was written")
    trained = load_trained(experiment, trial, model)
    model, tokenizer = trained.model, trained.tokenizer
    # The tiny model's config names no pad token (trials pass it to generate); a user's generate() needs it.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    tmp.mkdir()
    try:
        save(model, tokenizer, tmp)
        (tmp / INFO).write_text(json.dumps(trained.info, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return trained
