"""Models and tokenizers for trials: a tiny GPT-2 built from a config, a character tokenizer.

Both are made locally (no hub access) and saved with ``save_pretrained`` like any other model,
so the loading path a trial uses is the real transformers one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}
# Printable ASCII plus tab and newline: enough for the built-in corpus and English text.
CHARS = [chr(i) for i in range(32, 127)] + ["\t", "\n"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character; unknown characters map to ``<unk>``."""
    vocab = {tok: i for i, tok in enumerate([*SPECIALS.values(), *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def build_model(tiny: dict, max_length: int, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 of the configured size (no dropout: resumes are exact)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_length,
        n_embd=tiny["n_embd"],
        n_layer=tiny["n_layer"],
        n_head=tiny["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # No pad_token_id on purpose: batches are right-padded, which a causal model needs no
        # attention mask for; transformers would otherwise warn in every trial. The tokenizer
        # still knows the pad token, and generate() takes it as an argument.
    )
    return GPT2LMHeadModel(config)


def load(model_cfg: dict):
    """The trial's (model, tokenizer) from the ``model`` section of the config.

    ``tiny``: built here. ``pretrained``: ``from_pretrained`` on a local directory or a hub id,
    ``trust_remote_code`` only if the config says so; with ``HF_HUB_OFFLINE=1`` nothing is
    downloaded. Weights load in fp32 (bf16 is autocast on GPUs). ``lora`` wraps the model in
    peft adapters and freezes the rest.
    """
    if model_cfg.get("pretrained"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source, trust = model_cfg["pretrained"], bool(model_cfg.get("trust_remote_code"))
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(
            source, trust_remote_code=trust, local_files_only=offline, dtype=torch.float32
        )
        if tokenizer.pad_token_id is None:  # many causal LMs ship none; any id works under right padding
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = char_tokenizer()
        model = build_model(model_cfg["tiny"], model_cfg["max_length"], tokenizer)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{model_cfg.get('pretrained')}: the tokenizer has no end-of-sequence token")
    if model_cfg.get("lora"):
        from peft import LoraConfig, get_peft_model

        lora = model_cfg["lora"]
        model = get_peft_model(model, LoraConfig(
            r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"], task_type="CAUSAL_LM",
        ))
    return model, tokenizer


def save(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Save both in the transformers format (loadable with ``from_pretrained``)."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
