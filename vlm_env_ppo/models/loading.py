"""Loading the policy, the processor and the frozen reference policy."""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig, PreTrainedModel

logger = logging.getLogger(__name__)

_VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model")


def load_policy(model: str | PreTrainedModel, model_init_kwargs: dict | None, trust_remote_code: bool):
    """A Hub id / local path → ``AutoModelForImageTextToText``; a loaded model is returned as is."""
    if isinstance(model, PreTrainedModel):
        return model
    if not isinstance(model, str):
        raise TypeError(f"`model` must be a model id, a local path or a loaded model, got {type(model).__name__}.")
    kwargs = {"dtype": "auto", **(model_init_kwargs or {})}
    try:
        return AutoModelForImageTextToText.from_pretrained(model, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as err:
        raise ValueError(
            f"Could not load {model!r} as an image-text-to-text model ({err}). Pass a vision-language model, or a "
            "loaded model object if yours needs another Auto class."
        ) from err


def load_processor(model: PreTrainedModel, trust_remote_code: bool):
    name = getattr(model.config, "_name_or_path", None)
    if not name:
        raise ValueError("The model has no `config._name_or_path`; pass `processing_class=` explicitly.")
    return AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)


def get_tokenizer(processing_class):
    return getattr(processing_class, "tokenizer", processing_class)


def vision_modules(model: nn.Module) -> list[nn.Module]:
    """The vision encoder(s) of a VLM, found under the attribute names transformers uses across families."""
    found = []
    for owner in (model, getattr(model, "model", None)):
        for name in _VISION_TOWER_NAMES:
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, nn.Module) and all(module is not m for m in found):
                found.append(module)
    return found


def freeze_vision_tower(model: nn.Module) -> int:
    """Freeze the vision encoder; returns how many parameters were frozen."""
    count = 0
    for module in vision_modules(model):
        for p in module.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                count += p.numel()
    return count


def disable_bnb_cpu_repacking(model: nn.Module) -> None:
    """bitsandbytes' AVX512-BF16 CPU path repacks 4-bit weights on the first no-grad forward, which breaks a later
    training forward of a 4-bit policy (QLoRA); turning it off per layer avoids that (DESIGN.md §6)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_reference_model(name_or_path: str, quantization: str, dtype: torch.dtype, trust_remote_code: bool):
    """A frozen copy of the base policy in 4-bit nf4, 8-bit, or ``dtype`` (``quantization="none"``)."""
    kwargs: dict = {"dtype": dtype}
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    elif quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    ref = AutoModelForImageTextToText.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    disable_bnb_cpu_repacking(ref)
    ref.eval().requires_grad_(False)
    return ref


def generation_suppress_token_ids(processing_class, model_config) -> list[int]:
    """Token ids the policy must never sample: image/video placeholders and every special token but EOS.

    Random and lightly trained models do sample them, and an image token in a completion breaks the next forward
    (the model expects pixel features for it). TRL's GRPO suppresses the image token for the same reason.
    """
    tokenizer = get_tokenizer(processing_class)
    keep = set()
    for attr in ("eos_token_id",):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            keep.add(value)
    suppress = set(getattr(tokenizer, "all_special_ids", []) or [])
    for key in ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        value = getattr(model_config, key, None)
        if isinstance(value, int):
            suppress.add(value)
    for attr in ("image_token_id", "video_token_id"):
        value = getattr(processing_class, attr, None)
        if isinstance(value, int):
            suppress.add(value)
    return sorted(i for i in suppress - keep if i is not None and i >= 0)
