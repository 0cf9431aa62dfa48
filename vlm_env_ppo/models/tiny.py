"""Tiny random-weight vision-language models, built offline, for tests, benchmarks and the quickstart.

``build_tiny_vlm(family, output_dir)`` writes a checkpoint directory that loads back through exactly the code path a
user's Hub model takes (``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained``, never
``trust_remote_code``): transformers config classes with ~64-wide, 2-layer text and vision towers, a small
byte-level BPE tokenizer trained here with `tokenizers` (no download), a chat template, and the family's own
processor around a PIL image processor.

```python
>>> from transformers import AutoModelForImageTextToText, AutoProcessor
>>> path = build_tiny_vlm("llava_next", tmp_dir)                        # doctest: +SKIP
>>> model = AutoModelForImageTextToText.from_pretrained(path)           # doctest: +SKIP
>>> processor = AutoProcessor.from_pretrained(path)                     # doctest: +SKIP
```

The tokenizer, chat template and torchvision-free processor parts are `vlm_env_ppo.models.tiny_processing`;
this module builds each family's config, model and processor from them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

# Re-exported: they lived here before the tokenizer and processor parts got a module of their own.
from .tiny_processing import (  # noqa: F401
    BOS,
    CHAT_TOKENS,
    EOS,
    PAD,
    TEXT_FAMILY,
    TINY_FAMILIES,
    UNK,
    _FAMILY_SPECIAL_TOKENS,
    _IDEFICS_TOKENS,
    _IMAGE_PLACEHOLDER,
    _NAMED_TOKENS,
    _chat_template,
    _stub_video_processor,
    _tokenizer_for,
    allow_video_processors_without_torchvision,
    default_corpus,
    train_tiny_tokenizer,
)


# ------------------------------------------------------------------------------------------------------- models
_WIDTH = 64  # hidden size of both towers; bitsandbytes 4-bit needs layer input sizes that are multiples of 64


def _text_kwargs(tokenizer, **overrides) -> dict:
    kwargs = {
        "vocab_size": len(tokenizer),
        "hidden_size": _WIDTH,
        "intermediate_size": 2 * _WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    kwargs.update(overrides)
    return kwargs


def _vision_kwargs(**overrides) -> dict:
    kwargs = {"hidden_size": _WIDTH, "intermediate_size": 2 * _WIDTH, "num_hidden_layers": 2, "num_attention_heads": 4}
    kwargs.update(overrides)
    return kwargs


def _vision_knobs(overrides: dict, image_size: int, patch_size: int) -> tuple[int, int, dict]:
    """The knobs every family takes for its vision tower: ``image_size``, ``patch_size`` and ``vision_config``."""
    return (
        int(overrides.pop("image_size", image_size)),
        int(overrides.pop("patch_size", patch_size)),
        dict(overrides.pop("vision_config", None) or {}),
    )


def _build_llava(tokenizer, next_: bool, overrides: dict):
    """LLaVA-1.5 / LLaVA-NeXT (= the paper's LLaVA-1.6): CLIP tower (32 px, 8 px patches) + Llama.

    A 300×300 frame gives 16 image tokens (LLaVA) or 16 base + 64 any-res + 8 newline = 88 (LLaVA-NeXT, 2×2 grid of
    32 px crops from the ``[[32, 64], [64, 32], [64, 64]]`` pinpoints, plus the base image).
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaNextConfig,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    image_size, patch_size, vision_overrides = _vision_knobs(overrides, 32, 8)
    pinpoints = overrides.pop(
        "image_grid_pinpoints",
        [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]],
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        **_vision_kwargs(image_size=image_size, patch_size=patch_size, projection_dim=_WIDTH, **vision_overrides)
    )
    text = LlamaConfig(**_text_kwargs(tokenizer, **overrides.pop("text_config", {})))
    common = {
        "text_config": text,
        "vision_config": vision,
        "image_token_index": image_token_id,
        "image_seq_length": (image_size // patch_size) ** 2,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }
    image_kwargs = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
    processor_kwargs = {
        "patch_size": patch_size,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "chat_template": tokenizer.chat_template,
    }
    if next_:
        config = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints, **overrides)
        image_processor = LlavaNextImageProcessorPil(**image_kwargs, image_grid_pinpoints=pinpoints)
        processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, **processor_kwargs)
    else:
        config = LlavaConfig(**common, **overrides)
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessorPil(**image_kwargs), tokenizer=tokenizer, **processor_kwargs
        )
    return config, processor


def _qwen_text_config(tokenizer, overrides: dict, **extra_rope) -> dict:
    head_dim = _WIDTH // 4
    mrope_section = [2, 3, 3]  # temporal, height, width: sums to head_dim / 2
    assert sum(mrope_section) == head_dim // 2
    text = dict(
        _text_kwargs(tokenizer),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section, **extra_rope},
    )
    text.update(overrides.pop("text_config", {}))
    return text


def _build_qwen_vl(tokenizer, overrides: dict, version: str):
    """Qwen2.5-VL (14 px patches) / Qwen3-VL (16 px patches), merged 2×2. ``image_size`` is the largest side an
    image is resized to (168 / 192 px), so a 300×300 frame gives 36 tokens either way.

    Their processors own a video processor, which needs torchvision: see `allow_video_processors_without_torchvision`.
    """
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    qwen3 = version == "3"
    default_side = 192 if qwen3 else 168
    max_side = overrides.pop("max_image_side", None)  # the older name of `image_size` for Qwen2.5-VL
    image_size, patch_size, vision_overrides = _vision_knobs(overrides, max_side or default_side, 16 if qwen3 else 14)
    text = _qwen_text_config(tokenizer, overrides, **({"mrope_interleaved": True} if qwen3 else {}))
    vision = {
        "depth": 2,
        "hidden_size": _WIDTH,
        "intermediate_size": 2 * _WIDTH,
        "num_heads": 4,
        "out_hidden_size": _WIDTH,
        "patch_size": patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if qwen3:
        # Learned position embeddings on a 8×8 grid (interpolated to each image's grid); deepstack features from
        # the first block, as the real model takes them from early blocks.
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=[0])
    else:
        vision.update(window_size=4 * patch_size, fullatt_block_indexes=[1])
    # The common names, as the other families' vision configs spell them, for Qwen's `depth` / `num_heads`.
    for common, qwen_name in (("num_hidden_layers", "depth"), ("num_attention_heads", "num_heads")):
        if common in vision_overrides:
            vision_overrides[qwen_name] = vision_overrides.pop(common)
    vision.update(vision_overrides)
    config_cls = Qwen3VLConfig if qwen3 else Qwen2_5_VLConfig
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
        **overrides,
    )
    factor = config.vision_config.patch_size * config.vision_config.spatial_merge_size
    min_pixels = (2 * factor) ** 2
    processor_cls = None
    if qwen3:
        from transformers import Qwen3VLProcessor as processor_cls
    return config, qwen2_5_vl_processor(
        tokenizer, config.vision_config, min_pixels, max(image_size * image_size, min_pixels), processor_cls
    )


def qwen2_5_vl_processor(tokenizer, vision_config, min_pixels: int, max_pixels: int, processor_cls=None):
    """A Qwen2.5-VL (or ``processor_cls``, e.g. Qwen3-VL) processor around the PIL image processor (no torchvision)
    for a vision config's patching, with a stub video processor (see `allow_video_processors_without_torchvision`)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=vision_config.patch_size,
        temporal_patch_size=vision_config.temporal_patch_size,
        merge_size=vision_config.spatial_merge_size,
    )
    return (processor_cls or Qwen2_5_VLProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=_stub_video_processor(),
        chat_template=tokenizer.chat_template,
    )


def _build_idefics3(tokenizer, overrides: dict, smolvlm: bool = False):
    """Idefics3 / SmolVLM (SmolVLM2's layout: the same architecture, a processor with a video processor): SigLIP-style
    tower (32 px, 8 px patches), pixel shuffle ×2, Llama.

    A 300×300 frame is resized to 64 px, split into 2×2 crops of 32 px plus a global view: 5 × 4 = 20 image tokens,
    plus the processor's row/column and wrapper tokens.
    """
    import transformers

    prefix = "SmolVLM" if smolvlm else "Idefics3"
    config_cls = getattr(transformers, f"{prefix}Config")
    image_processor_cls = getattr(transformers, f"{prefix}ImageProcessorPil")
    processor_cls = getattr(transformers, f"{prefix}Processor")

    image_size, patch_size, vision_overrides = _vision_knobs(overrides, 32, 8)
    scale_factor = 2
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    text = transformers.LlamaConfig(**_text_kwargs(tokenizer, **overrides.pop("text_config", {})))
    vision = _vision_kwargs(image_size=image_size, patch_size=patch_size, **vision_overrides)
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **overrides,
    )
    image_processor = image_processor_cls(
        size={"longest_edge": 2 * image_size}, max_image_size={"longest_edge": image_size}
    )
    # SmolVLM's `apply_chat_template` reads the video processor's `num_frames` and `fps` on every call (values of
    # SmolVLM2's video processor).
    extra = {"video_processor": _stub_video_processor(num_frames=64, fps=1)} if smolvlm else {}
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=tokenizer.chat_template,
        **extra,
    )
    return config, processor


def _build_gemma3(tokenizer, overrides: dict):
    """Gemma 3: SigLIP tower (64 px, 8 px patches), its 8×8 patches average-pooled to ``mm_tokens_per_image`` = 16
    image tokens per image (a 300×300 frame gives 16), Gemma 3 text model (sliding and full attention layers).
    """
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig

    image_size, patch_size, vision_overrides = _vision_knobs(overrides, 64, 8)
    mm_tokens = overrides.pop("mm_tokens_per_image", max(1, (image_size // patch_size) ** 2 // 4))
    head_dim = _WIDTH // 4
    text = _text_kwargs(tokenizer, head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=64)
    text.update(overrides.pop("text_config", {}))
    # Gemma 3's pattern, sliding-window layers then a full-attention one, sized to the number of layers.
    text.setdefault(
        "layer_types",
        ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(text["num_hidden_layers"])],
    )
    text = Gemma3TextConfig(**text)
    vision = SiglipVisionConfig(**_vision_kwargs(image_size=image_size, patch_size=patch_size, **vision_overrides))
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=mm_tokens,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
        tie_word_embeddings=False,
        **overrides,
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=mm_tokens,
        chat_template=tokenizer.chat_template,
    )
    return config, processor


def _build_internvl(tokenizer, overrides: dict):
    """InternVL (3 / 3.5 layout): InternViT tower (32 px tiles, 8 px patches), pixel shuffle ×0.5, Qwen2 text model.

    Tiling on, as in the real checkpoints: a frame is cut into up to ``max_patches`` = 4 tiles of the grid closest to
    its aspect ratio, plus a thumbnail tile; each tile gives 4 image tokens, so a 300×300 frame is 2×2 + 1 = 5 tiles
    and 20 tokens, and ``pixel_values`` holds 5 rows for it. ``max_patches=1`` turns tiling off (1 tile per image).
    """
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLProcessor, Qwen2Config

    image_size, patch_size, vision_overrides = _vision_knobs(overrides, 32, 8)
    max_patches = int(overrides.pop("max_patches", 4))
    downsample_ratio = 0.5
    image_seq_length = int((image_size // patch_size) ** 2 * downsample_ratio**2)
    text = Qwen2Config(**_text_kwargs(tokenizer, **overrides.pop("text_config", {})))
    vision = _vision_kwargs(
        image_size=[image_size, image_size], patch_size=[patch_size, patch_size], **vision_overrides
    )
    config = InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
        tie_word_embeddings=False,
        **overrides,
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_to_patches=max_patches > 1,
        min_patches=1,
        max_patches=max_patches,
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=_stub_video_processor(),
        image_seq_length=image_seq_length,
        chat_template=tokenizer.chat_template,
    )
    return config, processor


def create_tiny_vlm(
    family: str, *, seed: int = 0, vocab_size: int = 1024, extra_texts: Iterable[str] = (), **overrides
):
    """A tiny random-weight VLM and its processor, in memory: ``(model, processor)``. See `build_tiny_vlm`.
    ``family="text"`` gives a text-only Llama and its tokenizer instead."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, LlamaConfig

    if family not in (*TINY_FAMILIES, TEXT_FAMILY):
        raise ValueError(f"Unknown tiny VLM family {family!r}; choose one of {TINY_FAMILIES} or {TEXT_FAMILY!r}.")
    tokenizer = _tokenizer_for(family, vocab_size, tuple(extra_texts))
    overrides = dict(overrides)
    auto = AutoModelForImageTextToText
    if family == TEXT_FAMILY:
        config, processor = LlamaConfig(**_text_kwargs(tokenizer, **overrides)), tokenizer
        auto = AutoModelForCausalLM
    elif family in ("llava", "llava_next"):
        config, processor = _build_llava(tokenizer, family == "llava_next", overrides)
    elif family in ("qwen2_5_vl", "qwen3_vl"):
        config, processor = _build_qwen_vl(tokenizer, overrides, "3" if family == "qwen3_vl" else "2.5")
    elif family in ("idefics3", "smolvlm"):
        config, processor = _build_idefics3(tokenizer, overrides, smolvlm=family == "smolvlm")
    elif family == "gemma3":
        config, processor = _build_gemma3(tokenizer, overrides)
    else:
        config, processor = _build_internvl(tokenizer, overrides)
    torch.manual_seed(seed)
    model = auto.from_config(config)
    if family == "gemma3":
        # Gemma 3 initialises its image projection to zeros (real checkpoints overwrite it): random tiny weights would
        # give all-zero image features, a model blind to its images whose vision tower never gets a gradient.
        projector = model.model.multi_modal_projector
        with torch.no_grad():
            projector.mm_input_projection_weight.normal_(std=config.initializer_range)
    model.eval()
    generation_config = model.generation_config
    generation_config.bos_token_id = tokenizer.bos_token_id
    generation_config.eos_token_id = tokenizer.eos_token_id
    generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def build_tiny_vlm(family: str, output_dir: str | os.PathLike, *, seed: int = 0, **overrides) -> str:
    """Build a tiny random-weight VLM and its processor, save both to ``output_dir`` and return the path.

    Args:
        family: one of `TINY_FAMILIES`: ``"llava"``, ``"llava_next"`` (the paper's LLaVA-1.6), ``"qwen2_5_vl"``,
            ``"qwen3_vl"``, ``"gemma3"``, ``"idefics3"``, ``"smolvlm"`` (SmolVLM2's layout), ``"internvl"``
            (InternVL 3 / 3.5, tiling on); or ``"text"``, a text-only Llama (``AutoModelForCausalLM`` and a
            tokenizer, for text envs).
        output_dir: where to write ``config.json``, the weights, the tokenizer and the processor files.
        seed: ``torch.manual_seed`` for the random weights: the same seed gives the same checkpoint.
        **overrides: ``vocab_size`` / ``extra_texts`` for `train_tiny_tokenizer`; fields of the top-level VLM
            config (e.g. ``vision_feature_layer=-1``); and the same knobs for every VLM family:

            - ``image_size``: the vision tower's input side in pixels (LLaVA, Idefics3, SmolVLM, InternVL: one
              crop or tile; Gemma 3: the whole image). Qwen2.5-VL / Qwen3-VL take images at their own size:
              there it is the largest side an image is resized to (``max_image_side`` is its older name).
            - ``patch_size``: the vision transformer's patch side in pixels.
            - ``vision_config={...}``: fields of the vision tower's config, applied last (e.g.
              ``{"num_hidden_layers": 1}``; for Qwen, ``num_hidden_layers`` / ``num_attention_heads`` mean its
              ``depth`` / ``num_heads``).
            - ``text_config={...}``: fields of the language model's config.

            Family-specific: ``image_grid_pinpoints`` (LLaVA-NeXT's any-res grids), ``max_patches`` (InternVL's
            tiles per image, 4 by default; 1 turns tiling off), ``mm_tokens_per_image`` (Gemma 3).

    The result loads with ``AutoModelForImageTextToText.from_pretrained(path)`` and
    ``AutoProcessor.from_pretrained(path)``, without ``trust_remote_code``. Takes well under a second.
    """
    model, processor = create_tiny_vlm(family, seed=seed, **overrides)
    output_dir = os.fspath(output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir
