"""Fine-tuning a model loaded from a local directory: full and LoRA, resume, accumulation, metrics."""

import warnings

import pytest
import torch
from safetensors.torch import load_file

from search.config import ConfigError, load_config
from tests.conftest import write_config
from trainables.evaluate import normalize, rouge_l
from trainables.model import WEIGHTS
from trainables.train import run_epochs


def config_for(cfg, pool, model: dict, **training) -> dict:
    return {
        "weights": {"random": 0.5, "mirrored": 0.5},
        "num_instructions": 20,
        "budget": 400,
        "learning_rate": 0.005,
        "setup": {"pool": str(pool), "seed": 0, "model": {**cfg.model.model_dump(), **model},
                  "training": {**cfg.training.model_dump(), **training}, "resources": {"cpu": 1, "gpu": 0}},
    }


LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": "all-linear"}


def test_pretrained_directory_full_fine_tuning(small_pool, pretrained_dir, tmp_path):
    cfg, pool = small_pool
    config = config_for(cfg, pool, {"tiny": None, "pretrained": str(pretrained_dir)}, epochs=1)
    (metrics, save), = list(run_epochs(config))
    assert metrics["device"] == "cpu" and metrics["epoch"] == 1 and metrics["train_loss"] > 0
    save(tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS))
    original = load_file(str(pretrained_dir / "model.safetensors"))
    name = "transformer.h.0.attn.c_attn.weight"
    assert saved[name].shape == original[name].shape and not torch.equal(saved[name], original[name])


def test_pretrained_directory_with_lora_trains_only_adapters(small_pool, pretrained_dir, tmp_path):
    cfg, pool = small_pool
    config = config_for(cfg, pool, {"tiny": None, "pretrained": str(pretrained_dir), "lora": LORA}, epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (metrics, save), = list(run_epochs(config))
    # GPT-2's Conv1D layers are declared to peft, which otherwise warns in every trial, and peft's
    # use of a deprecated transformers property is not shown in every trial either.
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message) or "is_gradient_checkpointing" in str(w.message)]
    save(tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS))
    assert saved and all("lora_" in k for k in saved), sorted(saved)[:5]  # the checkpoint holds adapters only
    assert any(float(v.abs().sum()) > 0 for k, v in saved.items() if "lora_B" in k)  # and they moved
    for key in ("unseen_accuracy", "unseen_token_accuracy", "unseen_loss", "unseen_exact_match/random"):
        assert key in metrics


def test_lora_resume_is_exact_with_dropout(small_pool, pretrained_dir, tmp_path):
    # LoRA dropout draws random numbers: an exact resume needs the RNG state in the checkpoint.
    cfg, pool = small_pool
    config = config_for(cfg, pool, {"tiny": None, "pretrained": str(pretrained_dir), "lora": LORA}, epochs=3)
    straight = [m for m, _ in run_epochs(config)]
    first = run_epochs(config)
    _, save = next(first)
    save(tmp_path)
    first.close()
    resumed = [m for m, _ in run_epochs(config, resume_from=tmp_path)]
    assert [m["train_loss"] for m in resumed] == pytest.approx([m["train_loss"] for m in straight[1:]], rel=1e-6)
    # Resumed where the model at that path has since been replaced by one of the same shape: the
    # adapters would go on training on another base; the checkpoint's fingerprint of it says so.
    moved = config_for(cfg, pool, {"tiny": None, "pretrained": str(variant_of(pretrained_dir, tmp_path / "v")),
                                   "lora": LORA}, epochs=3)
    with pytest.raises(RuntimeError, match=f"{tmp_path}: trained on other base weights than this model's"):
        next(run_epochs(moved, resume_from=tmp_path))


def variant_of(pretrained, path):
    """A copy of the pretrained model with other weights of the same shapes (a fine-tuned variant)."""
    from transformers import AutoModelForCausalLM

    from trainables.model import save
    from trainables.tokenizer import char_tokenizer

    model = AutoModelForCausalLM.from_pretrained(pretrained)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)  # tied to the embedding: one tensor changed, as fine-tuning might
    save(model, char_tokenizer(), path)
    return path


def test_an_experiment_copied_from_a_cluster_exports_given_where_its_model_is_here(small_pool, pretrained_dir, tmp_path, capsys):
    # The trials read their pretrained model at a cluster's path; in a copy of the experiment on a
    # laptop, export is told where that model is there (--model), and refuses any other model.
    import json

    import yaml
    from transformers import AutoModelForCausalLM

    from search.cli import main
    from trainables.data import encode
    from trainables.evaluate import evaluate
    from trainables.model import build_model
    from trainables.model import save as save_model
    from trainables.tokenizer import char_tokenizer
    from trainables.train import eval_rows

    cfg, pool = small_pool
    config = config_for(cfg, pool, {"tiny": None, "pretrained": str(pretrained_dir), "lora": LORA}, epochs=1)
    (metrics, save), = list(run_epochs(config))
    exp = tmp_path / "copied"
    (exp / "trial_abc" / "checkpoint_000000").mkdir(parents=True)
    save(exp / "trial_abc" / "checkpoint_000000")
    row = {**metrics, "trial_id": "abc", "checkpoint_dir_name": "checkpoint_000000", "config": {"budget": 400}}
    (exp / "trial_abc" / "result.json").write_text(json.dumps(row) + "\n")
    model = config["setup"]["model"] | {"pretrained": "/mnt/cluster/models/tiny-gpt2"}
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json") | {"model": model}))
    (exp / "summary.json").write_text(json.dumps({"best": {"trial_id": "abc"}}))

    assert main(["export", str(exp), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "key model: /mnt/cluster/models/tiny-gpt2: not a model directory" in err and "--model" in err
    other = tmp_path / "other"  # a model of another shape than the one the adapters were trained on
    save_model(build_model({"n_layer": 1, "n_embd": 48, "n_head": 2}, 32, char_tokenizer()), char_tokenizer(), other)
    capsys.readouterr()  # transformers' progress bar
    assert main(["export", str(exp), str(tmp_path / "out"), "--model", str(other)]) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]  # after transformers' progress bar
    assert last.startswith(f"error: {other}: not the model the trials trained: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # The same architecture with other weights (a fine-tuned variant): the checkpoint holds only the
    # adapters, which merged into it without a word; the base's fingerprint in it tells them apart.
    variant = variant_of(pretrained_dir, tmp_path / "variant")
    capsys.readouterr()
    assert main(["export", str(exp), str(tmp_path / "out"), "--model", str(variant)]) == 2
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert last.startswith(f"error: {variant}: not the model the trials trained: ") and "other base weights" in last
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    assert main(["export", str(exp), str(tmp_path / "out"), "--model", str(pretrained_dir)]) == 0
    info = json.loads((tmp_path / "out" / "mixsearch.json").read_text())
    assert info["epoch"] == 1 and info["base_model"] == "/mnt/cluster/models/tiny-gpt2"  # as the trials read it
    assert info["lora"] == LORA
    tok = char_tokenizer()
    unseen = encode(eval_rows(pool, cfg.training.eval_examples, cfg.seed), tok, cfg.model.max_length)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert evaluate(merged, tok, unseen, max_length=cfg.model.max_length)["unseen_loss"] == pytest.approx(
        metrics["unseen_loss"], rel=1e-4)


def test_gradient_accumulation_matches_one_batch(small_pool):
    cfg, pool = small_pool
    one = [m["train_loss"] for m, _ in run_epochs(config_for(cfg, pool, {}, epochs=2, batch_size=64))]
    four = [m["train_loss"] for m, _ in run_epochs(config_for(cfg, pool, {}, epochs=2, batch_size=64, grad_accum_steps=4))]
    assert four == pytest.approx(one, rel=1e-4)


def test_a_trial_with_a_text_metric_generates_and_reports_it(small_pool):
    # The metric's values on decoded text are checked against one-pass exact match in
    # test_trainable; this checks that a trial's training.metric reaches the evaluation.
    cfg, pool = small_pool
    for metric in ("normalized_exact_match", "rouge_l"):
        (metrics, _), = list(run_epochs(config_for(cfg, pool, {}, epochs=1, metric=metric)))
        assert 0.0 <= metrics["unseen_accuracy"] <= 1.0 and "unseen_exact_match" in metrics
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):  # so the name is not ignored
        list(run_epochs(config_for(cfg, pool, {}, epochs=1, metric="bleu")))


def test_generation_for_text_metrics_stops_at_max_new_tokens(small_pool):
    from search.mixture import materialize
    from trainables.data import encode
    from trainables.evaluate import default_max_new_tokens, generate_answers
    from trainables.model import build_model
    from trainables.tokenizer import char_tokenizer
    from trainables.train import mixture_of

    cfg, pool = small_pool
    tok = char_tokenizer()
    data = encode(materialize(pool, mixture_of(config_for(cfg, pool, {}))).slice(0, 16), tok, cfg.model.max_length)
    answer_tokens = [len(ids) - int((lab == -100).sum()) for ids, lab in zip(data.ids, data.labels)]
    assert default_max_new_tokens(data) == 2 * max(answer_tokens)
    # An untrained model seldom emits <eos>: its answers run to the cap, not to max_length.
    torch.manual_seed(0)
    model = build_model(cfg.model.tiny.model_dump(), cfg.model.max_length, tok)
    lengths = [len(a) for a in generate_answers(model, tok, data, cfg.model.max_length, max_new_tokens=5)]
    assert max(lengths) == 5, lengths


def test_rouge_l_and_normalization():
    assert normalize("The  Cat, sat!") == "cat sat"
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("cat mat", "dog") == 0.0
    # LCS of "a b c d" and "a c d e" is "a c d": precision 3/4, recall 3/4
    assert rouge_l("w b c d", "w c d e") == pytest.approx(0.75)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0


def test_model_config_errors(tmp_path, pretrained_dir):
    bad = write_config(tmp_path, {"model": {"pretrained": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match="key model.pretrained: .*not a model directory"):
        load_config(bad)
    both = write_config(tmp_path, {"model": {"pretrained": str(pretrained_dir)}}, "both.yaml")
    with pytest.raises(ConfigError, match="either tiny or pretrained"):
        load_config(both)  # SMALL sets tiny
    ok = write_config(tmp_path, {"model": {"tiny": None, "pretrained": str(pretrained_dir)}}, "ok.yaml")
    assert load_config(ok).model.trust_remote_code is False
    accum = write_config(tmp_path, {"training": {"batch_size": 10, "grad_accum_steps": 4}}, "accum.yaml")
    with pytest.raises(ConfigError, match="divisible by grad_accum_steps"):
        load_config(accum)


def test_a_lora_checkpoint_loads_merged_and_scores_as_in_its_trial(small_pool, pretrained_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainables.data import encode
    from trainables.evaluate import evaluate
    from trainables.model import load, load_trained
    from trainables.model import save as save_model
    from trainables.train import eval_rows

    cfg, pool = small_pool
    config = config_for(cfg, pool, {"tiny": None, "pretrained": str(pretrained_dir), "lora": LORA}, epochs=1)
    (metrics, save), = list(run_epochs(config))
    save(tmp_path)
    model, tok = load_trained(config["setup"]["model"], tmp_path)
    assert not any("lora" in n for n, _ in model.named_parameters()) and not model.training  # merged, for use
    unseen = encode(eval_rows(pool, cfg.training.eval_examples, cfg.seed), tok, cfg.model.max_length)
    loss = evaluate(model, tok, unseen, max_length=cfg.model.max_length)["unseen_loss"]
    assert loss == pytest.approx(metrics["unseen_loss"], rel=1e-4)
    save_model(model, tok, tmp_path / "merged")  # as export saves it: transformers alone loads it
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert evaluate(again, tok, unseen, max_length=cfg.model.max_length)["unseen_loss"] == pytest.approx(loss, rel=1e-5)
    base, _ = load(config["setup"]["model"])  # the adapters are what it learned
    assert evaluate(base, tok, unseen, max_length=cfg.model.max_length)["unseen_loss"] != pytest.approx(loss, rel=1e-4)
