"""Loading the policy, the processor and the frozen reference policy."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    BitsAndBytesConfig,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

logger = logging.getLogger(__name__)

_VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model")


class ModelNotFoundError(OSError):
    """A model path that is neither an existing folder nor a possible Hugging Face Hub id."""


def check_model_path(name_or_path: str) -> None:
    """Raise `ModelNotFoundError` for a string that names no existing folder and cannot be a Hub id either.

    transformers would say "Repo id must use alphanumeric chars ... '/nonexistent'": true, but it hides that the
    user meant a local folder that is not there (a typo, or a relative path from another working directory).
    """
    if not isinstance(name_or_path, str) or os.path.exists(name_or_path):
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise ModelNotFoundError(
            f"No folder {name_or_path!r} exists (looked from {os.getcwd()!r}), and it is not a Hugging Face Hub id "
            "either (those look like 'owner/name', e.g. 'Qwen/Qwen2.5-VL-3B-Instruct'). Check the path, or pass the "
            "folder a model or agent was saved to (with its config.json), or a Hub id."
        ) from None


def is_text_only_checkpoint(name_or_path: str, trust_remote_code: bool = False, **kwargs) -> bool:
    """Whether a checkpoint is a plain language model (no image-text-to-text architecture for its ``model_type``)."""
    check_model_path(name_or_path)
    config_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "token", "cache_dir")}
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **config_kwargs)
    return config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and not getattr(
        config, "vision_config", None
    )


def auto_model_from_pretrained(name_or_path: str, trust_remote_code: bool = False, **kwargs) -> PreTrainedModel:
    """``AutoModelForImageTextToText`` for a VLM checkpoint, ``AutoModelForCausalLM`` for a text-only one."""
    text_only = is_text_only_checkpoint(name_or_path, trust_remote_code, **kwargs)
    auto = AutoModelForCausalLM if text_only else AutoModelForImageTextToText
    return auto.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)


def load_policy(
    model: str | PreTrainedModel, model_init_kwargs: dict | None, trust_remote_code: bool, allow_text_only: bool = False
):
    """A Hub id / local path → ``AutoModelForImageTextToText`` (or, with ``allow_text_only``, ``AutoModelForCausalLM``
    for a text-only checkpoint); a loaded model is returned as is."""
    if isinstance(model, PreTrainedModel):
        return model
    if not isinstance(model, str):
        raise TypeError(f"`model` must be a model id, a local path or a loaded model, got {type(model).__name__}.")
    kwargs = {"dtype": "auto", **(model_init_kwargs or {})}
    if is_text_only_checkpoint(model, trust_remote_code, **kwargs):
        if not allow_text_only:
            raise ValueError(
                f"{model!r} is a text-only language model, not a vision-language model. To train it on an env whose "
                "observations are text (or that you render as text), set `allow_text_only_model=True`."
            )
        return AutoModelForCausalLM.from_pretrained(model, trust_remote_code=trust_remote_code, **kwargs)
    return AutoModelForImageTextToText.from_pretrained(model, trust_remote_code=trust_remote_code, **kwargs)


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


def _is_dropout_name(name: str) -> bool:
    return "dropout" in name or name in ("layerdrop", "drop_path_rate", "attn_pdrop", "resid_pdrop", "embd_pdrop")


def _zero_config_dropout(config, seen: set[int]) -> None:
    if config is None or id(config) in seen:
        return
    seen.add(id(config))
    for key, value in list(vars(config).items()):
        if isinstance(value, PreTrainedConfig):
            _zero_config_dropout(value, seen)
        elif _is_dropout_name(key) and isinstance(value, float) and value > 0:
            setattr(config, key, 0.0)


def disable_dropout(model: nn.Module) -> int:
    """Turn every kind of dropout in ``model`` off; returns how many settings were changed.

    PPO scores the update (train mode) against log-probs recorded in the rollout (eval mode), so any dropout makes
    the two differ even with the same weights: a tiny LLaVA-NeXT with ``attention_dropout=0.1`` had a ratio of 1.0073
    at step 0. TRL's ``disable_dropout_in_model`` only zeroes `nn.Dropout` modules, but transformers' attention
    applies dropout functionally from a float the layer copied from its config at construction
    (``dropout=0.0 if not self.training else self.attention_dropout``; CLIP names it ``self.dropout``). So this zeroes
    `nn.Dropout` modules, float ``*dropout*`` / layer-drop attributes of every module, and the same fields of the
    model's config and its sub-configs (text, vision, ...), which saved checkpoints and later-built layers read.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
            continue
        for key, value in list(vars(module).items()):
            if _is_dropout_name(key) and isinstance(value, float) and not isinstance(value, bool) and value > 0:
                setattr(module, key, 0.0)
                changed += 1
    seen: set[int] = set()
    for module in model.modules():
        _zero_config_dropout(getattr(module, "config", None), seen)
    return changed


def disable_bnb_cpu_repacking(model: nn.Module) -> None:
    """bitsandbytes' AVX512-BF16 CPU path repacks 4-bit weights on the first no-grad forward, which breaks a later
    training forward of a 4-bit policy (QLoRA); turning it off per layer avoids that."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_reference_model(
    name_or_path: str, quantization: str, dtype: torch.dtype, trust_remote_code: bool, use_safetensors: bool = True
):
    """A frozen copy of the base policy in 4-bit nf4, 8-bit, or ``dtype`` (``quantization="none"``); safetensors
    weights only unless the user opted out for the policy too."""
    kwargs: dict = {"dtype": dtype, "use_safetensors": use_safetensors}
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    elif quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    ref = auto_model_from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    disable_bnb_cpu_repacking(ref)
    ref.eval().requires_grad_(False)
    return ref


def generation_suppress_token_ids(processor_or_tokenizer, model_config, keep_ids: Iterable[int] = ()) -> list[int]:
    """Token ids a policy must never sample, for ``generate(suppress_tokens=...)``.

    Random (and lightly trained) VLMs do sample image and special tokens, and an image token in a completion breaks
    the next forward: the model expects pixel features for each one (TRL's GRPO suppresses ``config.image_token_id``
    for that reason). This returns every id of:

    - the tokenizer's special tokens: named ones and every added token flagged ``special`` (chat markers,
      ``<image>``, Qwen's ``<|vision_start|>``, Idefics3's ``<row_i_col_j>`` ... — note that Idefics3Processor
      *replaces* the tokenizer's extra special tokens list, so ``all_special_ids`` alone misses some);
    - the config's ``*_token_id`` / ``*_token_index`` fields (image, video, vision start/end ...), text config too;
    - the processor's ``*_token_id`` attributes and id lists (Idefics3's ``fake_image_token_id``,
      ``global_image_token_id``, ``row_col_ids`` ...),

    except EOS (the tokenizer's, the config's, and ``keep_ids``, e.g. ``generation_config.eos_token_id``) so the
    model can stop. PAD is suppressed when it differs from EOS: generate writes PAD after EOS itself.
    """
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    keep: set[int] = set()
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        *_config_values(model_config, ("eos_token_id",)),
        *keep_ids,
    ):
        keep.update(_as_ids(value))

    suppress: set[int] = set(getattr(tokenizer, "all_special_ids", None) or [])
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            suppress.add(int(token_id))
    for key, value in _config_items(model_config):
        if key != "eos_token_id" and key.endswith(("_token_id", "_token_index")):
            suppress.update(_as_ids(value))
    if processor_or_tokenizer is not tokenizer:
        for key, value in vars(processor_or_tokenizer).items():
            if key.endswith(("_token_id", "_token_ids")) or key == "row_col_ids":
                suppress.update(_as_ids(value))
    vocab = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    return sorted(i for i in suppress - keep if i >= 0 and (vocab is None or i < vocab))


def image_token_ids(model_config, processor_or_tokenizer=None) -> list[int]:
    """The id(s) a VLM replaces with image features: the config's ``image_token_id`` / ``image_token_index`` (Gemma 3:
    the soft image token, not ``<start_of_image>``; InternVL: ``<IMG_CONTEXT>``), else the processor's
    ``image_token_id``. Empty for a text-only model. `split_inputs` counts them to share out tiles between prompts."""
    for key in ("image_token_id", "image_token_index"):
        ids = _as_ids(getattr(model_config, key, None))
        if ids:
            return ids
    return _as_ids(getattr(processor_or_tokenizer, "image_token_id", None))


def _config_items(config):
    if config is None:
        return []
    items = list(config.to_dict().items()) if hasattr(config, "to_dict") else list(vars(config).items())
    sub = config.get_text_config() if hasattr(config, "get_text_config") else None
    if sub is not None and sub is not config:
        items += list(sub.to_dict().items())
    return [(k, v) for k, v in items if not isinstance(v, dict)]


def _config_values(config, keys):
    return [v for k, v in _config_items(config) if k in keys]


def _as_ids(value) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple, set)):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    if isinstance(value, torch.Tensor) and not value.is_floating_point():
        return [int(v) for v in value.flatten().tolist()]
    return []


def model_init_kwargs(model_args, base: dict | None = None) -> dict:
    """`from_pretrained` keyword arguments from `trl.ModelConfig` flags (revision, dtype, attention, 4/8-bit),
    on top of ``base``; shared by `train` and `sft`."""
    from trl import get_quantization_config

    kwargs = dict(base or {})
    kwargs.setdefault("revision", model_args.model_revision)
    if model_args.dtype not in (None, "auto"):
        kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation is not None:
        kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    return kwargs
