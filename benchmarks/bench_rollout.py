"""Rollout throughput: env steps/s with 8 envs generated in one batch ÷ generating one env at a time.

```bash
python benchmarks/bench_rollout.py --max-new-tokens 64
```

"One env at a time" is how RL4VLM collects (one `generate` per env and step); here it is the same trainer with
``num_envs=1``, so both sides run the identical code path (prompt → processor → `generate` → scoring forward for
log-probs and values → parse → `env.step`) on the same tiny LLaVA-NeXT, env, seed and completion length, and do the
same number of env steps per round (32: 8 envs × 4 steps, or 1 env × 32 steps), so the critic forward at the end
of each rollout weighs little on either side.
"""

from __future__ import annotations

import argparse

from _common import interleaved, make_setup, ppo_trainer


def run(setup, rounds: int = 3, env_steps: int = 32) -> dict:
    batched = ppo_trainer(setup, num_envs=8, num_steps=env_steps // 8)
    one_at_a_time = ppo_trainer(setup, num_envs=1, num_steps=env_steps)
    batched.collect_rollout(), one_at_a_time.collect_rollout()  # warm-up

    def collect(trainer):
        batch = trainer.collect_rollout()
        assert int(batch.completion_lengths.min()) == setup.max_new_tokens, "completion lengths were not forced"
        return len(batch)

    fast, slow = interleaved(lambda: collect(batched), lambda: collect(one_at_a_time), rounds)
    return {
        "rollout_speedup_8_envs": fast["best"] / slow["best"],
        "rollout_env_steps_per_s_8_envs": fast,
        "rollout_env_steps_per_s_1_env": slow,
        "rollout_env_steps_per_round": env_steps,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    cli = parser.parse_args()
    print(run(make_setup(cli.max_new_tokens, cli.threads), rounds=cli.rounds))
