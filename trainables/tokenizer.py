"""Tokenizers and tokenization, without torch: prepare tokenizes in Ray tasks that never train.

A row becomes ``<bos> prompt answer <eos>``; the character tokenizer (one token per character)
serves the tiny models, a pretrained model brings its own.
"""

from __future__ import annotations

import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from search.config import CHAT_PROMPT as CHAT

PROMPT = "{instruction}|{input}="
_CONTENT = "<<mixsearch: the user's text>>"
SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}
# Printable ASCII plus tab and newline: enough for the built-in corpus and English text.
CHARS = [chr(i) for i in range(32, 127)] + ["\t", "\n"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character; unknown characters map to ``<unk>``."""
    vocab = {tok: i for i, tok in enumerate([*SPECIALS.values(), *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Without a decoder, decoding joins tokens with spaces ("abc" -> "a b c"), and generated answers
    # never match their references under normalized_exact_match or rouge_l.
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the hub: then models and tokenizers load from the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def load_tokenizer(model_cfg: dict) -> PreTrainedTokenizerFast:
    """The tokenizer of the ``model`` section: the character one for tiny models, the model's own
    for pretrained ones (given a pad token if it has none). Prepare uses it to store token ids."""
    if model_cfg.get("pretrained"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            model_cfg["pretrained"], trust_remote_code=bool(model_cfg.get("trust_remote_code")),
            local_files_only=hub_offline(),
        )
        if tokenizer.pad_token_id is None:  # many causal LMs ship none; any id works under right padding
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = char_tokenizer()
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{model_cfg.get('pretrained')}: the tokenizer has no end-of-sequence token")
    return tokenizer


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: much less per-row Python than __call__
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def chat_prompts(tokenizer, contents: list[str]) -> list[str]:
    """Each text as a user turn in the tokenizer's chat template, up to the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{tokenizer.name_or_path or 'the tokenizer'}: no chat template, which prompt: chat needs")
    if not contents:
        return []
    return tokenizer.apply_chat_template([[{"role": "user", "content": c}] for c in contents], tokenize=False,
                                         add_generation_prompt=True)


def prompt_tail(tokenizer, prompt: str) -> int:
    """Tokens at the end of every prompt that truncation keeps: with ``chat``, what the template
    puts after the user's text (the end of the turn, the assistant's header); else none."""
    if prompt != CHAT:
        return 0
    (rendered,) = chat_prompts(tokenizer, [_CONTENT])
    if _CONTENT not in rendered:  # a template that rewrites the user's text: cut at the end, as for others
        return 0
    return len(_ids(tokenizer, [rendered.rsplit(_CONTENT, 1)[1]])[0])


def tokenize(instructions: list[str], inputs: list[str], outputs: list[str], tokenizer,
             prompt: str = PROMPT) -> tuple[list[list[int]], list[int]]:
    """``<bos> prompt answer <eos>`` token ids of each row, and the length of its prompt part.
    With ``prompt`` ``chat``, the prompt is the chat template's (which places any BOS itself)."""
    if prompt == CHAT:
        prompts = chat_prompts(tokenizer, [f"{i}\n{x}" if x else i for i, x in zip(instructions, inputs)])
    else:
        prompts = [prompt.format(instruction=i, input=x) for i, x in zip(instructions, inputs)]
    p_ids, a_ids = _ids(tokenizer, prompts), _ids(tokenizer, outputs)
    # Tokenizers without a BOS token (many pretrained ones) start at the prompt.
    bos = [] if tokenizer.bos_token_id is None or prompt == CHAT else [tokenizer.bos_token_id]
    eos = tokenizer.eos_token_id
    return [[*bos, *p, *a, eos] for p, a in zip(p_ids, a_ids)], [len(bos) + len(p) for p in p_ids]


def answer_ids(tokenizer, answers: list[str]) -> list[list[int]]:
    """``answer <eos>`` token ids of each answer, tokenized apart from its prompt as ``tokenize``
    does (so another reference of a row can follow the row's stored prompt ids)."""
    return [[*a, tokenizer.eos_token_id] for a in _ids(tokenizer, answers)]
