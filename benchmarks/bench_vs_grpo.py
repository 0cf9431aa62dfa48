"""Training samples/s of one full iteration, `VLMPPOTrainer` ÷ TRL `GRPOTrainer`, on identical work.

```bash
python benchmarks/bench_vs_grpo.py --max-new-tokens 64
```

Both sides: the same tiny LLaVA-NeXT checkpoint, all of its parameters trained (``train_vision_tower=True`` on the
PPO side; GRPO trains the whole model), NumberLine frames at 300x300 with the task's CoT prompt, 8 samples per
iteration generated in one `generate` call, exactly ``max_new_tokens`` completion tokens (EOS masked until then via
``min_new_tokens``), temperature 1, one optimizer step on the 8 samples as one micro-batch, fp32 on the CPU.

- PPO iteration (one `train()` update): 8 envs × 1 step: generate, scoring forward (λ-weighted log-probs and values),
  env step, critic forward on the next observations, GAE, one epoch of one minibatch: forward + backward + step.
- GRPO iteration (one `train()` step): ``per_device_train_batch_size=8``, ``num_generations=2`` (4 frames × 2),
  ``steps_per_generation=1``, ``num_iterations=1`` and ``beta=0`` (so GRPO computes neither old nor reference
  log-probs, its cheapest setting), a trivial reward: generate, reward, forward + backward + step.

Each iteration is timed from `on_step_begin` to `on_step_end` (same callback on both trainers; GRPO's dataloader
fetch of the dataset rows happens before `on_step_begin` and is not counted, the PPO env rendering is). The first
iteration of each run is warm-up; the best of the rest is reported, over interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import time

from _common import ENV_ID, SEED, force_length, make_setup, ppo_trainer
from transformers import TrainerCallback

BATCH = 8


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def ppo_iterations(setup, iterations: int) -> list[float]:
    timer = StepTimer()
    trainer = ppo_trainer(
        setup,
        num_envs=BATCH,
        num_steps=1,
        total_env_steps=BATCH * iterations,
        num_mini_batches=1,
        per_device_train_batch_size=BATCH,
        train_vision_tower=True,
        callbacks=[timer],
    )
    trainer.train()
    return timer.times


def grpo_dataset(num_rows: int):
    import gymnasium as gym
    from datasets import Dataset
    from PIL import Image

    import vlm_env_ppo  # noqa: F401  (registers the gym_cards envs)
    from vlm_env_ppo.tasks import get_task

    task, env = get_task(ENV_ID), gym.make(ENV_ID)
    rows = []
    for seed in range(num_rows):
        obs, info = env.reset(seed=SEED + seed)
        rows.append({"prompt": [{"role": "user", "content": task.prompt(info)}], "image": Image.fromarray(obs)})
    return Dataset.from_list(rows)


def grpo_iterations(setup, iterations: int) -> list[float]:
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    timer = StepTimer()
    model = AutoModelForImageTextToText.from_pretrained(setup.model_path)
    force_length(model, setup.max_new_tokens)
    args = GRPOConfig(
        output_dir=os.path.join(setup.workdir, "grpo"),
        per_device_train_batch_size=BATCH,
        num_generations=2,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        beta=0.0,
        max_completion_length=setup.max_new_tokens,
        generation_kwargs={"min_new_tokens": setup.max_new_tokens},
        temperature=1.0,
        learning_rate=1e-5,
        max_steps=iterations,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=SEED,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kwargs: [float(len(c[0]["content"]) % 3) for c in completions],
        args=args,
        train_dataset=grpo_dataset(BATCH * iterations),
        processing_class=AutoProcessor.from_pretrained(setup.model_path),
        callbacks=[timer],
    )
    trainer.train()
    lengths = trainer._metrics["train"].get("completions/mean_length", [])
    assert all(abs(x - setup.max_new_tokens) < 1e-6 for x in lengths), f"GRPO completion lengths {lengths}"
    return timer.times


def run(setup, rounds: int = 2, iterations: int = 4) -> dict:
    ppo_times, grpo_times = [], []
    for _ in range(rounds):
        ppo_times += ppo_iterations(setup, iterations + 1)[1:]
        grpo_times += grpo_iterations(setup, iterations + 1)[1:]
    ppo_rate, grpo_rate = BATCH / min(ppo_times), BATCH / min(grpo_times)
    return {
        "vs_trl_grpo_per_sample": ppo_rate / grpo_rate,
        "ppo_iteration_samples_per_s": ppo_rate,
        "grpo_iteration_samples_per_s": grpo_rate,
        "ppo_iteration_seconds": [round(t, 4) for t in ppo_times],
        "grpo_iteration_seconds": [round(t, 4) for t in grpo_times],
        "samples_per_iteration": BATCH,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    cli = parser.parse_args()
    print(run(make_setup(cli.max_new_tokens, cli.threads), rounds=cli.rounds))
