"""Models and tokenizers for trials: a tiny GPT-2 built from a config, a character tokenizer.

Both are made locally (no hub access) and saved with ``save_pretrained`` like any other model,
so the loading path a trial uses is the real transformers one.
"""

from __future__ import annotations

from pathlib import Path

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


def build_model(model_cfg: dict, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 of the configured size (no dropout: resumes are exact)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=model_cfg["max_length"],
        n_embd=model_cfg["n_embd"],
        n_layer=model_cfg["n_layer"],
        n_head=model_cfg["n_head"],
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


def save(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Save both in the transformers format (loadable with ``from_pretrained``)."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
