"""One real PPO iteration of a 7B VLM with random weights on a CUDA GPU: measured peak memory and env steps/s.

```bash
python benchmarks/gpu_iteration.py                                   # LLaVA-1.6-Mistral-7B, the paper's setting
python benchmarks/gpu_iteration.py --model qwen2.5-vl-7b
python benchmarks/gpu_iteration.py --qlora                           # 4-bit policy (saves random weights to --workdir)
python benchmarks/gpu_iteration.py --tiny                            # the same code path with a tiny model (CPU ok)
python benchmarks/gpu_iteration.py --backend vllm --out vllm.json    # rollouts on a colocated vLLM engine (one run per
python benchmarks/gpu_iteration.py --backend hf --out hf.json        # backend: compare the two JSON files)
```

Nothing is downloaded: the model is built from its config values (`memory_estimate.py`) with random bf16 weights
directly on the GPU, with a small offline tokenizer (random weights make the text meaningless anyway; completions are
forced to exactly ``--max-new-tokens`` tokens, the worst case) and the model family's own image processor at its real
resolution (LLaVA-NeXT any-res at 336 px, Qwen2.5-VL 14 px patches). The paper's setting: bf16, LoRA r=128 (alpha
256) on all linear layers, the value head, gradient checkpointing, micro-batch 1, ``max_new_tokens=256``, NumberLine
frames (300x300). The reference for the KL penalty is the adapter-disabled policy (the library's default with LoRA;
the estimate also prints the figure with a separate 4-bit copy).

Prints per-phase peak memory (``torch.cuda.max_memory_allocated``, and reserved), env steps/s and completion tokens/s
of the rollout, and the `memory_estimate.py` estimate for the same setting next to it; ``--out`` writes the same as
JSON. ``--backend vllm`` (`VLMPPOConfig(rollout_backend="vllm")`) saves the random weights to ``--workdir`` first (the
engine loads a checkpoint), generates the rollout on the engine (``--vllm-memory`` of the GPU) and also reports the
time to push the LoRA-merged weights into it; vLLM's KV cache and weights are allocated through torch, so they count
in the peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ENV_ID = "gym_cards/NumberLine-v0"


def require_cuda(allow_cpu: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if allow_cpu:
        return torch.device("cpu")
    sys.exit(
        "gpu_iteration.py needs a CUDA GPU (it measures GPU memory of a 7B model) and this machine has none "
        f"(torch {torch.__version__}, torch.cuda.is_available() is False).\n"
        "  - for the estimate without a GPU: python benchmarks/memory_estimate.py\n"
        "  - to check this script's code path on the CPU with a tiny model: python benchmarks/gpu_iteration.py --tiny"
    )


def build_tokenizer(family: str):
    from vlm_env_ppo.models.tiny import _tokenizer_for

    return _tokenizer_for(family, vocab_size=1024, extra_texts=())


def build_llava_next(tokenizer):
    """LLaVA-1.6-Mistral-7B config (random weights) and a LLaVA-NeXT processor at 336 px."""
    from memory_estimate import build_config
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    config = build_config("llava-v1.6-mistral-7b")
    config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, getattr(tokenizer, key))
    vision = config.vision_config
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": vision.image_size},
        crop_size={"height": vision.image_size, "width": vision.image_size},
        image_grid_pinpoints=config.image_grid_pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return config, processor


def build_qwen2_5_vl(tokenizer):
    """Qwen2.5-VL-7B config (random weights) and its processor (no video: a stub video processor)."""
    from memory_estimate import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, build_config
    from vlm_env_ppo.models.tiny import qwen2_5_vl_processor

    config = build_config("qwen2.5-vl-7b")
    ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    for key, token in ids.items():
        setattr(config, key, tokenizer.convert_tokens_to_ids(token))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, getattr(tokenizer, key))
    return config, qwen2_5_vl_processor(tokenizer, config.vision_config, QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)


def build_model(cli, device: torch.device):
    """``(model, processor)``: random weights, bf16 (4-bit nf4 with ``--qlora``), on ``device``."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    family = "llava_next" if cli.model.startswith("llava") else "qwen2_5_vl"
    if cli.tiny:
        from vlm_env_ppo.models.tiny import create_tiny_vlm

        model, processor = create_tiny_vlm(family)
        if cli.backend == "vllm":  # the engine loads a checkpoint
            path = os.path.join(cli.workdir, f"tiny-{cli.model}")
            model.save_pretrained(path)
            processor.save_pretrained(path)
            model.config._name_or_path = path
        return model.to(device), processor
    tokenizer = build_tokenizer(family)
    config, processor = build_llava_next(tokenizer) if family == "llava_next" else build_qwen2_5_vl(tokenizer)
    start = time.time()
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    print(f"built {cli.model} with random bf16 weights on {device} in {time.time() - start:.0f} s", flush=True)
    if not cli.qlora and cli.backend == "hf":
        return model, processor
    # bitsandbytes quantizes while loading, and a vLLM engine loads a checkpoint: write the random weights once.
    path = os.path.join(cli.workdir, f"random-{cli.model}")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if not cli.qlora:
        model.config._name_or_path = path
        return model, processor
    del model
    torch.cuda.empty_cache()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModelForImageTextToText.from_pretrained(
        path, quantization_config=quantization, dtype=torch.bfloat16, device_map={"": device.index or 0}
    )
    return model, processor


def peak_gb(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {"allocated_gb": float("nan"), "reserved_gb": float("nan")}
    return {
        "allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9,
        "reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9,
    }


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llava-v1.6-mistral-7b", choices=["llava-v1.6-mistral-7b", "qwen2.5-vl-7b"])
    parser.add_argument("--qlora", action="store_true", help="4-bit nf4 policy with LoRA on top")
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--num-steps", type=int, default=2, help="env steps per env in the one rollout")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=128)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="> 0 runs the (adapter-disabled) reference too")
    parser.add_argument("--no-checkpointing", action="store_true", help="disable activation checkpointing")
    parser.add_argument("--tiny", action="store_true", help="tiny model: check the code path, also on the CPU")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="what generates the rollout")
    parser.add_argument("--vllm-memory", type=float, default=0.3, help="vllm_gpu_memory_utilization")
    cli = parser.parse_args()
    device = require_cuda(allow_cpu=cli.tiny)

    from peft import LoraConfig

    from _common import force_ppo_length

    from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
    from vlm_env_ppo.rollout import unbatch_infos

    model, processor = build_model(cli, device)
    n = cli.num_envs * cli.num_steps
    args = VLMPPOConfig(
        output_dir=os.path.join(cli.workdir, "gpu-iteration"),
        num_envs=cli.num_envs,
        num_steps=cli.num_steps,
        total_env_steps=n,
        num_ppo_epochs=1,
        num_mini_batches=1,
        per_device_train_batch_size=1,  # the paper's micro-batch
        max_new_tokens=cli.max_new_tokens,
        kl_coef=cli.kl_coef,
        activation_checkpointing=not cli.no_checkpointing,
        bf16=device.type == "cuda",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        rollout_backend=cli.backend,
        vllm_gpu_memory_utilization=cli.vllm_memory,
        vllm_max_model_len=8192,
        vllm_engine_kwargs={"dtype": "float32", "enforce_eager": True} if device.type == "cpu" else None,
    )
    lora = LoraConfig(r=cli.lora_r, lora_alpha=2 * cli.lora_r, target_modules="all-linear")
    trainer = VLMPPOTrainer(model, args, env=ENV_ID, processing_class=processor, peft_config=lora)
    force_ppo_length(trainer)  # every completion is max_new_tokens long
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    print(f"trainable {trainable / 1e6:.1f}M of {total / 1e9:.2f}B parameters", flush=True)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.optimizer_steps_per_update)
    trainer.model_wrapped, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    obs, infos = trainer.envs.reset(seed=trainer.env_seed)
    trainer._obs, trainer._infos = obs, unbatch_infos(infos, cli.num_envs)
    after_setup = peak_gb(device)

    reset_peak(device)
    start = time.perf_counter()
    batch = trainer.collect_rollout()
    rollout_s = time.perf_counter() - start
    rollout = peak_gb(device)
    push_s = None
    if trainer.rollout_engine is not None:
        start = time.perf_counter()
        trainer.push_rollout_weights()
        push_s = time.perf_counter() - start
    trainer.compute_advantages(batch)
    reset_peak(device)
    start = time.perf_counter()
    stats = trainer.ppo_update(batch)
    update_s = time.perf_counter() - start
    update = peak_gb(device)

    from memory_estimate import Setting, estimate

    setting = Setting(
        model=cli.model, qlora=cli.qlora, lora_r=cli.lora_r, num_envs=cli.num_envs,
        max_new_tokens=cli.max_new_tokens, separate_4bit_reference=False,
    )
    estimated = None if cli.tiny else estimate(setting)["peak_gb"]
    result = {
        "model": "tiny " + cli.model if cli.tiny else cli.model,
        "rollout_backend": cli.backend,
        "qlora": cli.qlora,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "trainable_params": trainable,
        "params": total,
        "completion_tokens": int(batch.completion_lengths.max()),
        "prompt_tokens": int(batch.prompts[0]["input_ids"].shape[0]),
        "peak_after_setup": after_setup,
        "peak_rollout": rollout,
        "peak_update": update,
        "peak_iteration_gb": max(rollout["allocated_gb"], update["allocated_gb"]),
        "estimated_peak_gb_adapter_disabled_reference": estimated,
        "rollout_env_steps_per_s": n / rollout_s,
        "rollout_completion_tokens_per_s": int(batch.completion_lengths.sum()) / rollout_s,
        "weight_push_s": push_s,
        "update_samples_per_s": n / update_s,
        "iteration_s": rollout_s + update_s,
        "losses/value_loss": stats["losses/value_loss"],
    }
    print(json.dumps(result, indent=2))
    if cli.out:
        with open(cli.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
