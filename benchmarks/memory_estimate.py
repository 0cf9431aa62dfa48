"""Estimated peak GPU memory of one PPO iteration for 4-8B VLMs, from the models' configs (no download, no GPU).

```bash
python benchmarks/memory_estimate.py            # LLaVA-1.6-Mistral-7B, Qwen2.5-VL-7B, Qwen3-VL-8B, Gemma-3-4B
python benchmarks/memory_estimate.py --verify-peft   # also count the LoRA parameters by real PEFT injection (~30 s)
python benchmarks/memory_estimate.py --critic-free   # also each setting without the value head (GRPO/RLOO/GiGPO)
```

The models are built on the meta device from their config values (written below, copied from the public
``config.json`` files of ``llava-hf/llava-v1.6-mistral-7b-hf``, ``Qwen/Qwen2.5-VL-7B-Instruct``,
``Qwen/Qwen3-VL-8B-Instruct`` and ``google/gemma-3-4b-it``), so every
parameter count is exact. Memory is then added up per component (bytes, 1 GB = 1e9 bytes):

Persistent (both phases)
    policy weights        bf16: 2 B/param. QLoRA: every ``nn.Linear`` but ``lm_head`` in nf4 with double
                          quantization (0.5 B/param + 1/64 B absmax + 4/(64*256) B second-level constants), every
                          other parameter fp32 (``prepare_model_for_kbit_training`` upcasts them).
    LoRA adapter          r=128 on all linear layers (PEFT ``"all-linear"``: every ``nn.Linear`` but ``lm_head``,
                          vision tower and projector included): r * (in + out) params each, fp32 (PEFT's default
                          ``autocast_adapter_dtype`` keeps adapters of a bf16 model in fp32).
    value head            hidden -> 1024 -> 512 -> 1 MLP, fp32.
    AdamW states          exp_avg + exp_avg_sq, fp32: 8 B per trainable param.
    reference             a separate 4-bit nf4 copy of the base model (what the issue asks to count). With LoRA the
                          library actually uses the adapter-disabled policy as reference (0 B); that figure is
                          printed too.
Rollout phase (no grad, ``num_envs`` prompts batched)
    KV cache              num_envs * (prompt + max_new_tokens) * layers * 2 * kv_dim * 2 B.
    scoring forward       ``output_hidden_states`` keeps (layers + 1) hidden states of num_envs * seq * hidden * 2 B;
                          logits of the completion only (``logits_to_keep``): num_envs * (C + 1) * vocab * (2 + 4 + 4) B
                          (bf16 logits, fp32 copy, fp32 log-softmax).
Update phase (micro-batch 1, gradient checkpointing per decoder layer)
    gradients             fp32, 4 B per trainable param.
    checkpoints           one layer input per decoder layer: layers * seq * hidden * 2 B (vision tower likewise).
    one layer recomputed  saved tensors of one decoder layer during its backward, per token
                          ``54*H + 12*I + 28*r`` bytes (gated MLP; ``54*H + 8*I`` for CLIP's plain MLP): RMSNorm fp32
                          internals (2 x 10H), q/k/v/o and MLP inputs and outputs in bf16, SDPA q and the GQA-expanded
                          k/v, PEFT's fp32 copies of each LoRA input (4 B per input feature) and the r-dim LoRA
                          activations. Counted twice (saved tensors + their gradients while that layer runs backward).
    logits                completion tokens only: (C + 1) * vocab * (2 + 4 + 4 + 4) B (bf16, fp32, log-softmax, grad).
Overhead                  1.0 GB for the CUDA context, cuBLAS workspaces and allocator fragmentation.

Without the critic (``advantage_estimator`` ``grpo``/``rloo``/``gigpo``, ``Setting(critic=False)``): no value head and
no AdamW states or gradients for it, and the scoring forward runs without ``output_hidden_states`` (it keeps only the
last layer's output, ``num_envs * seq * hidden * 2 B``, not all ``layers + 1``); the rollout also skips the value
forwards of the truncated episodes' final observations and of the observations after the last step (time, not peak).

peak = persistent + max(rollout, update). Sequence lengths: the image tokens the model's own processor makes of a
300x300 gym_cards frame (LLaVA-NeXT any-res at 336 px: base 24x24 grid + unpadded high-res grid + newline tokens;
Qwen2.5-VL: 14 px patches merged 2x2), the longest gym_cards CoT prompt text at 4 characters per token, and
``max_new_tokens=256``. `benchmarks/gpu_iteration.py` measures the real peak on a CUDA machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
from dataclasses import dataclass, field

GB = 1e9
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 absmax2 per 256 blocks
CUDA_OVERHEAD_GB = 1.0

# llava-hf/llava-v1.6-mistral-7b-hf config.json (the paper's model)
LLAVA_NEXT_MISTRAL_7B = {
    "text_config": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32064,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000,
    },
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "image_token_index": 32000,
    "vocab_size": 32064,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
    "tie_word_embeddings": False,
}

# Qwen/Qwen2.5-VL-7B-Instruct config.json
QWEN2_5_VL_7B = {
    "text_config": {
        "model_type": "qwen2_5_vl_text",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}
QWEN_MAX_PIXELS = 12845056  # preprocessor_config.json
QWEN_MIN_PIXELS = 3136

# Qwen/Qwen3-VL-8B-Instruct config.json
QWEN3_VL_8B = {
    "text_config": {
        "model_type": "qwen3_vl_text",
        "head_dim": 128,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 151936,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True,
        },
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "deepstack_visual_indexes": [8, 16, 24],
        "depth": 27,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "num_position_embeddings": 2304,
        "out_hidden_size": 4096,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}
QWEN3_MAX_PIXELS = 16777216  # preprocessor_config.json: size.longest_edge
QWEN3_MIN_PIXELS = 65536  # size.shortest_edge

# google/gemma-3-4b-it config.json (the other fields are transformers' defaults, as the checkpoint leaves them out)
GEMMA3_4B = {
    "text_config": {
        "model_type": "gemma3_text",
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "vocab_size": 262208,
        "sliding_window": 1024,
        "query_pre_attn_scalar": 256,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "image_size": 896,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
        "vision_use_head": False,
    },
    "mm_tokens_per_image": 256,
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "image_token_index": 262144,
}


MODELS = ("llava-v1.6-mistral-7b", "qwen2.5-vl-7b", "qwen3-vl-8b", "gemma-3-4b")


def build_config(name: str):
    from transformers import Gemma3Config, LlavaNextConfig, Qwen2_5_VLConfig, Qwen3VLConfig

    if name == "llava-v1.6-mistral-7b":
        return LlavaNextConfig(**LLAVA_NEXT_MISTRAL_7B)
    if name == "qwen2.5-vl-7b":
        return Qwen2_5_VLConfig(**QWEN2_5_VL_7B)
    if name == "qwen3-vl-8b":
        return Qwen3VLConfig(**QWEN3_VL_8B)
    if name == "gemma-3-4b":
        return Gemma3Config(**GEMMA3_4B)
    raise ValueError(f"Unknown model {name!r}; choose one of {MODELS}.")


def build_meta_model(config):
    """The full VLM on the meta device: exact shapes, no memory, no download."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    # Tied output embeddings (Gemma 3) are one tensor, as in the loaded checkpoint: `from_config` under
    # `init_empty_weights` leaves `lm_head` a separate meta tensor, which would count 0.67B parameters twice.
    model.tie_weights()
    return model


# ---------------------------------------------------------------------------------------------------- counting
@dataclass
class ParamCounts:
    total: int
    linear_weights: int  # nn.Linear weights except lm_head (what bnb quantizes and PEFT "all-linear" targets)
    other: int  # everything else (embeddings, lm_head, norms, biases, conv patch embeddings)
    lora: int  # LoRA A+B params at rank r on the same linears
    lora_targets: int
    by_part: dict[str, int] = field(default_factory=dict)


def count_params(model, lora_r: int) -> ParamCounts:
    from torch import nn

    output = model.get_output_embeddings()
    linear_weights = lora = targets = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and module is not output:
            linear_weights += module.weight.numel()
            lora += lora_r * (module.in_features + module.out_features)
            targets += 1
    total = sum(p.numel() for p in model.parameters())
    by_part = {name: sum(p.numel() for p in child.parameters()) for name, child in model.model.named_children()}
    by_part["lm_head"] = output.weight.numel()
    return ParamCounts(total, linear_weights, total - linear_weights, lora, targets, by_part)


def peft_lora_params(model, lora_r: int) -> int:
    """LoRA parameter count from a real PEFT injection on the meta model (slow: ~30 s for a 7B)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))
    return sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)


# ---------------------------------------------------------------------------------------------------- sequence
def llava_next_image_tokens(config, height: int, width: int) -> int:
    """Image tokens LLaVA-NeXT's processor inserts for one ``height x width`` image (its own formula)."""
    from transformers import LlavaNextProcessor

    vision = config.vision_config
    fake = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=config.image_grid_pinpoints),
        patch_size=vision.patch_size,
        num_additional_image_tokens=1,
    )
    fake._get_unpadded_features = functools.partial(LlavaNextProcessor._get_unpadded_features, fake)
    n = LlavaNextProcessor._get_number_of_features(fake, height, width, vision.image_size, vision.image_size)
    return n - 1 if config.vision_feature_select_strategy == "default" else n  # "default" drops the CLS token


def llava_next_vision_tokens(config, height: int, width: int) -> int:
    """Tokens the CLIP tower runs on: (1 base + grid crops) x (patches + CLS)."""
    from transformers.image_processing_utils import select_best_resolution

    vision = config.vision_config
    best_h, best_w = select_best_resolution((height, width), config.image_grid_pinpoints)
    crops = 1 + (best_h // vision.image_size) * (best_w // vision.image_size)
    return crops * ((vision.image_size // vision.patch_size) ** 2 + 1)


def qwen_image_tokens(config, height: int, width: int, qwen3: bool = False) -> tuple[int, int]:
    """``(LM image tokens, vision-tower patches)`` for Qwen2.5-VL (or Qwen3-VL)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # no torchvision needed

    v = config.vision_config
    factor = v.patch_size * v.spatial_merge_size
    min_pixels, max_pixels = (QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS) if qwen3 else (QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    patches = (h // v.patch_size) * (w // v.patch_size)
    return patches // v.spatial_merge_size**2, patches


def prompt_text_tokens() -> int:
    """Longest gym_cards CoT prompt (text part) at ~4 characters per token (Llama/Mistral/Qwen tokenizers on English).

    The chat template and a Points24 formula add a few dozen tokens; +32 covers them."""
    import numpy as np

    from vlm_env_ppo.tasks import get_task

    longest = 0
    info = {"Formula": ["10", "+", "10", "+", "2", "+"], "Cards": [10, 10, 2, 2]}
    for env_id in ("gym_cards/NumberLine-v0", "gym_cards/EZPoints-v0", "gym_cards/Points24-v0", "gym_cards/Blackjack-v0"):
        task = get_task(env_id)
        messages = task.build_messages(np.zeros((8, 8, 3), np.uint8), info)
        text = " ".join(p.get("text", "") for m in messages for p in m["content"] if isinstance(p, dict))
        longest = max(longest, math.ceil(len(text) / 4))
    return longest + 32


# ---------------------------------------------------------------------------------------------------- estimate
@dataclass
class Setting:
    model: str = "llava-v1.6-mistral-7b"
    qlora: bool = False
    lora_r: int = 128
    num_envs: int = 4
    micro_batch: int = 1
    max_new_tokens: int = 256
    frame: tuple[int, int] = (300, 300)
    separate_4bit_reference: bool = True
    value_head_hidden: tuple[int, ...] = (1024, 512)
    critic: bool = True  # False: a critic-free estimator (no value head, no hidden states kept in scoring)


def layer_activation_bytes_per_token(hidden: int, intermediate: int, kv_dim: int, r: int, gated: bool) -> float:
    """Saved tensors of one transformer layer per token in bf16 training with fp32 LoRA (see module docstring)."""
    del kv_dim  # k/v are expanded to all heads before SDPA (GQA repeat), so they count as `hidden` each
    return 54 * hidden + (12 if gated else 8) * intermediate + 28 * r


def estimate(setting: Setting, model=None, config=None) -> dict:
    """Breakdown (GB) and sequence lengths of one PPO iteration's peak memory for ``setting``."""
    config = config or build_config(setting.model)
    model = model if model is not None else build_meta_model(config)
    counts = count_params(model, setting.lora_r)
    text = config.get_text_config()
    H, I, L, V = text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size
    head_dim = getattr(text, "head_dim", None) or H // text.num_attention_heads  # Gemma 3: 256, not H / heads
    kv_dim = text.num_key_value_heads * head_dim
    height, width = setting.frame
    v = config.vision_config
    if "llava" in setting.model:
        image_tokens = llava_next_image_tokens(config, height, width)
        vision_tokens = llava_next_vision_tokens(config, height, width)
        vH, vI, vL, v_gated = v.hidden_size, v.intermediate_size, v.num_hidden_layers, False
    elif "gemma" in setting.model:  # every image resized to 896 px: 64x64 patches pooled to 256 tokens
        image_tokens, vision_tokens = config.mm_tokens_per_image, (v.image_size // v.patch_size) ** 2
        vH, vI, vL, v_gated = v.hidden_size, v.intermediate_size, v.num_hidden_layers, False
    else:  # Qwen2.5-VL's vision MLP is gated (SwiGLU), Qwen3-VL's is not
        qwen3 = "qwen3" in setting.model
        image_tokens, vision_tokens = qwen_image_tokens(config, height, width, qwen3=qwen3)
        vH, vI, vL, v_gated = v.hidden_size, v.intermediate_size, v.depth, not qwen3
    prompt = image_tokens + prompt_text_tokens()
    C = setting.max_new_tokens
    seq = prompt + C
    B = setting.micro_batch

    value_head = sum(a * b + b for a, b in zip((H, *setting.value_head_hidden), (*setting.value_head_hidden, 1)))
    value_head *= setting.critic
    trainable = counts.lora + value_head
    if setting.qlora:
        weights = counts.linear_weights * NF4_BYTES_PER_PARAM + counts.other * 4
    else:
        weights = counts.total * 2
    reference = (counts.linear_weights * NF4_BYTES_PER_PARAM + counts.other * 2) if (
        setting.separate_4bit_reference and not setting.qlora
    ) else 0.0

    persistent = {
        "policy weights" + (" (nf4 + fp32 rest)" if setting.qlora else " (bf16)"): weights,
        f"LoRA r={setting.lora_r} adapter (fp32)": counts.lora * 4,
        "value head (fp32)": value_head * 4,
        "AdamW states (fp32 m, v)": trainable * 8,
        "reference (separate 4-bit copy)" if reference else "reference (adapter disabled: 0)": reference,
    }
    rollout = {
        f"KV cache ({setting.num_envs} envs)": setting.num_envs * seq * L * 2 * kv_dim * 2,
        "scoring forward hidden states": setting.num_envs * (L + 1) * prompt * H * 2 * setting.critic
        + setting.num_envs * seq * H * 2,
        "scoring logits (completion only)": setting.num_envs * (C + 1) * V * 10,
    }
    per_token_lm = layer_activation_bytes_per_token(H, I, kv_dim, setting.lora_r, gated=True)
    per_token_vision = layer_activation_bytes_per_token(vH, vI, vH, setting.lora_r, gated=v_gated)
    update = {
        "gradients (fp32, trainable)": trainable * 4,
        "checkpointed layer inputs (LM + vision)": B * (L * seq * H + vL * vision_tokens * vH) * 2,
        "one layer recomputed, x2 for its backward": 2 * B * max(seq * per_token_lm, vision_tokens * per_token_vision),
        "logits (completion only, with grad)": B * (C + 1) * V * 14,
    }
    persistent_gb = sum(persistent.values()) / GB
    rollout_gb = sum(rollout.values()) / GB
    update_gb = sum(update.values()) / GB
    peak = persistent_gb + max(rollout_gb, update_gb) + CUDA_OVERHEAD_GB
    no_ref_peak = peak - reference / GB
    return {
        "model": setting.model,
        "qlora": setting.qlora,
        "params_total": counts.total,
        "params_by_part": counts.by_part,
        "lora_params": counts.lora,
        "lora_target_modules": counts.lora_targets,
        "trainable_params": trainable,
        "image_tokens": image_tokens,
        "vision_tower_tokens": vision_tokens,
        "prompt_tokens": prompt,
        "sequence_tokens": seq,
        "persistent_gb": {k: v / GB for k, v in persistent.items()},
        "rollout_gb": {k: v / GB for k, v in rollout.items()},
        "update_gb": {k: v / GB for k, v in update.items()},
        "overhead_gb": CUDA_OVERHEAD_GB,
        "peak_phase": "update" if update_gb >= rollout_gb else "rollout",
        "peak_gb": peak,
        "peak_gb_adapter_disabled_reference": no_ref_peak,
    }


def format_breakdown(result: dict) -> str:
    lines = [
        (
            f"{result['model']}{' QLoRA' if result['qlora'] else ''}: {result['params_total'] / 1e9:.3f}B params, "
            f"LoRA {result['lora_params'] / 1e6:.1f}M on {result['lora_target_modules']} linears, "
            f"sequence {result['sequence_tokens']} tokens ({result['image_tokens']} image, "
            f"{result['prompt_tokens'] - result['image_tokens']} text, "
            f"{result['sequence_tokens'] - result['prompt_tokens']} generated)"
        ),
    ]
    for section in ("persistent_gb", "rollout_gb", "update_gb"):
        subtotal = sum(result[section].values())
        lines.append(f"  {section.removesuffix('_gb'):<10} {subtotal:7.2f} GB")
        for k, v in result[section].items():
            lines.append(f"    {k:<44} {v:7.2f}")
    lines.append(f"  {'overhead':<10} {result['overhead_gb']:7.2f} GB")
    lines.append(
        f"  peak = persistent + {result['peak_phase']} + overhead = {result['peak_gb']:.1f} GB "
        f"({result['peak_gb_adapter_disabled_reference']:.1f} GB with the adapter-disabled reference)"
    )
    return "\n".join(lines)


SETTINGS = {
    "memory_7b_paper_config_gb": Setting(model="llava-v1.6-mistral-7b"),
    "memory_qwen2_5_vl_7b_gb": Setting(model="qwen2.5-vl-7b"),
    "memory_7b_qlora_gb": Setting(model="llava-v1.6-mistral-7b", qlora=True, separate_4bit_reference=False),
    "memory_qwen2_5_vl_7b_qlora_gb": Setting(model="qwen2.5-vl-7b", qlora=True, separate_4bit_reference=False),
    "memory_qwen3_vl_8b_gb": Setting(model="qwen3-vl-8b"),
    "memory_qwen3_vl_8b_qlora_gb": Setting(model="qwen3-vl-8b", qlora=True, separate_4bit_reference=False),
    "memory_gemma3_4b_gb": Setting(model="gemma-3-4b"),
    "memory_gemma3_4b_qlora_gb": Setting(model="gemma-3-4b", qlora=True, separate_4bit_reference=False),
}


@functools.cache
def config_and_meta_model(name: str):
    """One config and meta model per architecture, shared by every setting and comparison."""
    config = build_config(name)
    return config, build_meta_model(config)


def run(verify_peft: bool = False, verbose: bool = True) -> dict:
    """All four estimates; one meta model per architecture."""
    results, models = {}, {}
    for key, setting in SETTINGS.items():
        config, model = models[setting.model] = config_and_meta_model(setting.model)
        results[key] = estimate(setting, model=model, config=config)
        if verbose:
            print(format_breakdown(results[key]), flush=True)
    if verify_peft:
        for name, (config, model) in models.items():
            expected = count_params(model, 128).lora  # before the injection adds its own nn.Linear layers
            counted = peft_lora_params(model, 128)
            assert counted == expected, f"{name}: PEFT injects {counted} LoRA params, the shape formula says {expected}"
            if verbose:
                print(f"{name}: PEFT all-linear r=128 injection = {counted} params (matches the shape formula)")
    return results


def critic_free_comparison(verbose: bool = True) -> dict:
    """Every setting with and without the value head: ``{key: {"critic": GB, "critic_free": GB, ...}}``."""
    out = {}
    for key, setting in SETTINGS.items():
        config, model = config_and_meta_model(setting.model)
        with_critic = estimate(setting, model=model, config=config)
        without = estimate(dataclasses.replace(setting, critic=False), model=model, config=config)
        out[key] = {
            "critic_gb": with_critic["peak_gb"], "critic_free_gb": without["peak_gb"],
            "critic_rollout_gb": sum(with_critic["rollout_gb"].values()),
            "critic_free_rollout_gb": sum(without["rollout_gb"].values()),
            "saved_gb": with_critic["peak_gb"] - without["peak_gb"],
        }
    if verbose:
        print(f"{'setting':<34} {'GAE (critic)':>13} {'critic-free':>12} {'saved':>7}   rollout phase: critic / free")
        for key, r in out.items():
            print(f"{key:<34} {r['critic_gb']:10.2f} GB {r['critic_free_gb']:9.2f} GB {r['saved_gb']:7.2f}   "
                  f"{r['critic_rollout_gb']:.2f} / {r['critic_free_rollout_gb']:.2f} GB")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verify-peft", action="store_true", help="count LoRA params by real PEFT injection too")
    parser.add_argument("--critic-free", action="store_true", help="also compare each setting without the value head")
    args = parser.parse_args()
    results = run(verify_peft=args.verify_peft)
    print()
    for key, r in results.items():
        print(f"{key:<34} {r['peak_gb']:6.1f} GB")
    if args.critic_free:
        print()
        critic_free_comparison()


if __name__ == "__main__":
    main()
