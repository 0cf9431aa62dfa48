"""The paper's two stages: SFT on expert demonstrations generated from the env, then PPO from that checkpoint.

    python examples/sft_then_ppo.py                                  # tiny VLM built locally, ColorChoice, CPU, ~1 min
    python examples/sft_then_ppo.py --env_id gym_cards/NumberLine-v0 --episodes 300   # tiny VLM, CPU, ~15 min

A real model on one GPU (the paper's LLaVA-1.6-7B, its NumberLine task):

    python examples/sft_then_ppo.py --model_name_or_path llava-hf/llava-v1.6-mistral-7b-hf \
        --env_id gym_cards/NumberLine-v0 --episodes 2000 --output_dir nl-llava

What it does, each step a function of `vlm_env_ppo.sft` you can call on its own:

1. `generate_sft_dataset`: play ``--episodes`` episodes with the env's expert (exact reference policies), one row
   per step: the frame, the prompt exactly as the PPO trainer builds it, and a JSON answer whose thoughts say what a
   correct reasoner would (the numbers read, the formula, the rule applied) and whose action is the expert's. Saved
   to ``OUTPUT_DIR/dataset`` (``datasets.load_from_disk``); ``--push_dataset_to_hub user/name`` shares it.
2. `evaluate_policy` on the base model: valid-action and success rates, greedy, on fixed seeds.
3. `run_sft`: TRL's `SFTTrainer` with LoRA on all linear layers, trained on the completion only; the adapter is
   merged and a full model + processor saved to ``OUTPUT_DIR/sft`` (a normal model path).
4. `evaluate_policy` again on the SFT model.
5. `VLMPPOTrainer("OUTPUT_DIR/sft", ...)`: PPO with a fresh LoRA on top of the SFT weights, so the adapter-disabled
   KL reference is the SFT policy; evaluated with the same seeds, saved to ``OUTPUT_DIR/ppo``.

Recommended hyperparameters for a 7B VLM (LLaVA-1.6-Mistral-7B, Qwen2.5-VL-7B; one 80 GB GPU, bf16):

- Data: 1,000-5,000 expert episodes per env (NumberLine ~2.5 steps each, EZPoints ~4, Points24 ~8, Blackjack ~1.5),
  ``--random_action_prob 0.1`` to cover recovery states; a few thousand rows are enough to learn the format.
- SFT: LoRA r=128, alpha=256 on all linear layers (the paper's), lr 2e-5 cosine with 3% warmup, 1 epoch,
  batch 4 x gradient accumulation 4 (effective 16), gradient checkpointing on, ``max_length=None`` (the image
  tokens of a 300x300 frame exceed TRL's default 1024 on LLaVA-1.6).
- PPO: the paper's settings (RL4VLM): LoRA r=128/alpha=256, lr 1e-5, 4 PPO epochs, clip 0.1, gamma 0.9,
  lam 0.95, temperature 0.2, 512 env steps per update (``--ppo_num_envs 4 --ppo_num_steps 128``), 15k env steps.

The tiny defaults (no ``--model_name_or_path``) differ: lr 3e-3, 3 epochs, batch 8, and the tiny model's lm_head
is trained too (a random lm_head gives near-uniform logits that LoRA elsewhere barely sharpens).
"""

from __future__ import annotations

import argparse
import json
import os

from peft import LoraConfig

from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo.models.tiny import build_tiny_vlm
from vlm_env_ppo.sft import default_lora_config, default_sft_config, evaluate_policy, generate_sft_dataset, run_sft


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_name_or_path", default=None, help="Hub id or path of a VLM; default: a tiny local one.")
    p.add_argument("--tiny_family", default="llava_next", help="Tiny VLM family when no model is given.")
    p.add_argument("--env_id", default="vlm_env_ppo/ColorChoice-v0")
    p.add_argument("--output_dir", default="sft-then-ppo")
    p.add_argument("--seed", type=int, default=0)
    # data
    p.add_argument("--episodes", type=int, default=128, help="Expert episodes for the SFT data.")
    p.add_argument("--random_action_prob", type=float, default=0.0)
    p.add_argument("--action_only", action="store_true", help="No-CoT prompt and answers.")
    p.add_argument("--push_dataset_to_hub", default=None, help="Hub dataset repo id to push the SFT data to.")
    # SFT
    p.add_argument("--sft_epochs", type=float, default=None, help="Default: 3 (tiny) / 1 (real model).")
    p.add_argument("--sft_lr", type=float, default=None, help="Default: 3e-3 (tiny) / 2e-5 (real model).")
    p.add_argument("--batch_size", type=int, default=None, help="Per device. Default: 8 (tiny) / 4 (real model).")
    p.add_argument("--grad_accum", type=int, default=None, help="Default: 1 (tiny) / 4 (real model).")
    p.add_argument("--lora_r", type=int, default=None, help="Default: 16 (tiny) / 128 (real model).")
    p.add_argument("--lora_alpha", type=int, default=None, help="Default: 32 (tiny) / 256 (real model).")
    # evaluation and PPO
    p.add_argument("--eval_episodes", type=int, default=32)
    p.add_argument("--eval_seed", type=int, default=1_000_000)
    p.add_argument("--max_new_tokens", type=int, default=None, help="Default: 96 (tiny) / 256 (real model).")
    p.add_argument("--ppo_env_steps", type=int, default=None, help="Default: 64 (tiny) / 15000 (real model).")
    p.add_argument("--ppo_num_envs", type=int, default=4)
    p.add_argument("--ppo_num_steps", type=int, default=None, help="Default: 8 (tiny) / 128 (real model).")
    p.add_argument("--ppo_lr", type=float, default=None, help="Default: 1e-4 (tiny) / 1e-5 (real model).")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    tiny = a.model_name_or_path is None

    def pick(value, tiny_default, real_default):
        return value if value is not None else (tiny_default if tiny else real_default)

    model = a.model_name_or_path or build_tiny_vlm(a.tiny_family, os.path.join(a.output_dir, "base"), seed=a.seed)
    max_new_tokens = pick(a.max_new_tokens, 96, 256)

    # 1. Expert data, prompts built exactly as the PPO trainer builds them.
    dataset = generate_sft_dataset(
        a.env_id, a.episodes, seed=a.seed, action_only=a.action_only, random_action_prob=a.random_action_prob
    )
    dataset.save_to_disk(os.path.join(a.output_dir, "dataset"))
    if a.push_dataset_to_hub:
        dataset.push_to_hub(a.push_dataset_to_hub)
    print(
        f"{len(dataset)} expert steps from {a.episodes} episodes of {a.env_id}, e.g.:\n"
        f"  {dataset[0]['completion'][0]['content'][0]['text']}"
    )

    # 2.-4. Evaluate the base model, SFT (LoRA, merged into a full model), evaluate again.
    def evaluate(path):
        return evaluate_policy(
            path, a.env_id, a.eval_episodes, a.eval_seed, action_only=a.action_only, max_new_tokens=max_new_tokens
        )

    before = evaluate(model)
    sft_args = default_sft_config(
        os.path.join(a.output_dir, "sft"),
        num_train_epochs=pick(a.sft_epochs, 3, 1),
        learning_rate=pick(a.sft_lr, 3e-3, 2e-5),
        lr_scheduler_type="constant" if tiny else "cosine",
        warmup_steps=0.0 if tiny else 0.03,  # a float < 1 is a fraction of the steps
        per_device_train_batch_size=pick(a.batch_size, 8, 4),
        gradient_accumulation_steps=pick(a.grad_accum, 1, 4),
        activation_checkpointing=not tiny,
        logging_steps=8 if tiny else 10,
        save_strategy="no" if tiny else "steps",
        save_steps=500,
        seed=a.seed,
    )
    lora = default_lora_config(
        r=pick(a.lora_r, 16, 128),
        lora_alpha=pick(a.lora_alpha, 32, 256),
        modules_to_save=["lm_head"] if tiny else None,
    )
    sft_dir = run_sft(model, dataset, sft_args, peft_config=lora)
    after_sft = evaluate(sft_dir)

    # 5. PPO from the SFT checkpoint, a fresh LoRA on top of it.
    num_steps = pick(a.ppo_num_steps, 8, 128)
    ppo_args = VLMPPOConfig(
        output_dir=os.path.join(a.output_dir, "ppo"),
        num_envs=a.ppo_num_envs,
        num_steps=num_steps,
        total_env_steps=pick(a.ppo_env_steps, 64, 15_000),
        num_mini_batches=2 if tiny else 4,
        per_device_train_batch_size=8 if tiny else 1,  # must divide num_envs * num_steps / num_mini_batches
        learning_rate=pick(a.ppo_lr, 1e-4, 1e-5),
        max_new_tokens=max_new_tokens,
        temperature=0.2,  # the paper's
        action_only=a.action_only,
        eval_episodes=a.eval_episodes,
        eval_seed=a.eval_seed,
        activation_checkpointing=not tiny,
        bf16=not tiny,
        save_strategy="no" if tiny else "steps",
        report_to="none",
        seed=a.seed,
    )
    trainer = VLMPPOTrainer(
        sft_dir,
        ppo_args,
        env=a.env_id,
        peft_config=LoraConfig(
            r=pick(a.lora_r, 16, 128), lora_alpha=pick(a.lora_alpha, 32, 256), target_modules="all-linear"
        ),
    )
    trainer.train()
    after_ppo = trainer.evaluate()
    trainer.save_model(ppo_args.output_dir)

    results = {
        "env_id": a.env_id,
        "sft_examples": len(dataset),
        "base": before,
        "sft": after_sft,
        "ppo": {
            "valid_action_rate": 1 - after_ppo["eval/invalid_action_rate"],
            "success_rate": after_ppo["eval/success_rate"],
        },
    }
    with open(os.path.join(a.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\n{a.env_id}, {a.eval_episodes} greedy evaluation episodes (seeds {a.eval_seed}+):")
    for stage in ("base", "sft", "ppo"):
        r = results[stage]
        print(f"  {stage:>4}: valid-action rate {r['valid_action_rate']:.2f}, success rate {r['success_rate']:.2f}")
    print(f"Models: {sft_dir} (SFT), {ppo_args.output_dir} (PPO); results in {a.output_dir}/results.json")
    return results


if __name__ == "__main__":
    main()
