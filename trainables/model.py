"""Models and tokenizers for trials: a tiny GPT-2 built from a config, a character tokenizer.

Both are made locally (no hub access) and saved with ``save_pretrained`` like any other model,
so the loading path a trial uses is the real transformers one.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from trainables.tokenizer import hub_offline, load_tokenizer

WEIGHTS = "model.safetensors"  # a checkpoint's trained parameters (the adapters only, with LoRA)
BASE = "base_fingerprint"  # its metadata key: the frozen weights the adapters were trained on


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
    tokenizer = load_tokenizer(model_cfg)
    if model_cfg.get("pretrained"):
        from transformers import AutoModelForCausalLM

        source, trust = model_cfg["pretrained"], bool(model_cfg.get("trust_remote_code"))
        model = AutoModelForCausalLM.from_pretrained(
            source, trust_remote_code=trust, local_files_only=hub_offline(), dtype=torch.float32
        )
    else:
        model = build_model(model_cfg["tiny"], model_cfg["max_length"], tokenizer)
    if model_cfg.get("lora"):
        from peft import LoraConfig, get_peft_model
        from transformers.pytorch_utils import Conv1D

        lora = model_cfg["lora"]
        # GPT-2-style models store their projections transposed (Conv1D): peft must be told,
        # or it warns in every trial before correcting the setting itself.
        transposed = any(isinstance(m, Conv1D) for m in model.modules())
        with warnings.catch_warnings():
            # peft reads transformers' deprecated alias, which then warns in every trial (peft's to fix).
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model = get_peft_model(model, LoraConfig(
                r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                target_modules=lora["target_modules"], task_type="CAUSAL_LM", fan_in_fan_out=transposed,
            ))
    return model, tokenizer


def base_fingerprint(model) -> str | None:
    """A fingerprint of the weights ``model`` does not train (the base model under LoRA adapters;
    None when it trains them all): a hash of each frozen tensor's name, shape and up to 1,024 of
    its values at a fixed stride. Models of one architecture with other weights (a fine-tuned
    variant) differ in it; it reads a few KB a tensor, on whatever device the model is."""
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    if not frozen:
        return None
    digest = hashlib.blake2b(digest_size=8)
    for name, p in frozen:
        flat = p.detach().flatten()
        # A strided copy, not a reduction: the same bytes on a GPU as on the CPU.
        sample = flat[:: max(1, flat.numel() // 1024)][:1024].to("cpu", torch.float32)
        digest.update(f"{name}{tuple(p.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def save_weights(model, checkpoint: Path) -> None:
    """Save the parameters being trained (everything in full fine-tuning, the adapters with
    LoRA) into a checkpoint folder, with the fingerprint of the frozen rest, which the
    checkpoint does not hold and ``load_weights`` checks. ``named_parameters`` lists tied
    parameters (GPT-2's embedding and head) once."""
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    base = base_fingerprint(model)
    save_file(state, str(Path(checkpoint) / WEIGHTS), metadata={BASE: base} if base else None)


def load_weights(model, checkpoint: Path) -> None:
    """Load a trial checkpoint's trained parameters into ``model`` (as ``load`` built it).
    Raises RuntimeError when they do not fit it: parameters it lacks or has in another shape,
    trained ones missing, or frozen (base) weights other than those they were trained on."""
    path = str(Path(checkpoint) / WEIGHTS)
    weights = load_file(path)
    with safe_open(path, "pt") as f:
        trained_on = (f.metadata() or {}).get(BASE)  # absent in checkpoints saved before it was kept
    own = model.state_dict()
    # Checked first: torch's own error for a shape mismatch spans a line per parameter.
    resized = [n for n, t in weights.items() if n in own and own[n].shape != t.shape]
    if resized:
        raise RuntimeError(f"{checkpoint}: checkpoint does not match the model ({len(resized)} parameters of "
                           f"another shape, e.g. {resized[0]}: {tuple(weights[resized[0]].shape)} in the "
                           f"checkpoint, {tuple(own[resized[0]].shape)} in the model)")
    _, unexpected = model.load_state_dict(weights, strict=False)  # frozen base weights are not stored
    absent = {n for n, p in model.named_parameters() if p.requires_grad} - set(weights)
    if unexpected or absent:
        raise RuntimeError(f"{checkpoint}: checkpoint does not match the model ({sorted(unexpected or absent)[:3]})")
    here = base_fingerprint(model) if trained_on else None
    if trained_on != here:  # adapters on another base would load without a word, and answer wrong
        raise RuntimeError(f"{checkpoint}: trained on other base weights than this model's (frozen weights' "
                           f"fingerprint {trained_on} in the checkpoint, {here} here)")


def load_trained(model_cfg: dict, checkpoint: Path):
    """The (model, tokenizer) a trial trained, from its ``model`` section and a checkpoint: in
    eval mode, with LoRA adapters merged into the weights (a plain transformers model)."""
    model, tokenizer = load(model_cfg)
    load_weights(model, checkpoint)
    if model_cfg.get("lora"):
        model = model.merge_and_unload()
    return model.eval(), tokenizer


def save(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Save both in the transformers format (loadable with ``from_pretrained``)."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
