"""PPO-update throughput: samples/s with micro-batches of 8 ÷ one sample per forward/backward.

```bash
python benchmarks/bench_update.py --max-new-tokens 64
```

One rollout of 16 samples (8 envs × 2 steps) is collected once; then `ppo_update` runs one epoch over it as one
minibatch of 16 (one optimizer step), either as 2 micro-batches of 8 or as 16 micro-batches of 1 (gradient
accumulation to the minibatch in both cases), alternately, on the same weights' trajectory.
"""

from __future__ import annotations

import argparse

from _common import interleaved, make_setup, ppo_trainer, prepare_for_update


def run(setup, rounds: int = 3) -> dict:
    trainer = ppo_trainer(setup, num_envs=8, num_steps=2, num_mini_batches=1)
    prepare_for_update(trainer)
    batch = trainer.collect_rollout()
    trainer.compute_advantages(batch)

    def update(micro_batch: int) -> float:
        trainer.args.per_device_train_batch_size = micro_batch
        trainer.args.gradient_accumulation_steps = len(batch) // micro_batch
        trainer.ppo_update(batch)
        return len(batch) * trainer.args.num_ppo_epochs

    update(8), update(1)  # warm-up
    batched, single = interleaved(lambda: update(8), lambda: update(1), rounds)
    return {
        "update_speedup": batched["best"] / single["best"],
        "update_samples_per_s_micro_batch_8": batched,
        "update_samples_per_s_micro_batch_1": single,
        "update_samples_per_minibatch": len(batch),
    }


def profile(setup, rows: int = 12) -> str:
    """Where one minibatch's time goes with micro-batches of 8 and of 1 (torch profiler, operator self time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer = ppo_trainer(setup, num_envs=8, num_steps=2, num_mini_batches=1)
    prepare_for_update(trainer)
    batch = trainer.collect_rollout()
    trainer.compute_advantages(batch)
    report = []
    for micro_batch in (8, 1):
        trainer.args.per_device_train_batch_size = micro_batch
        trainer.args.gradient_accumulation_steps = len(batch) // micro_batch
        trainer.ppo_update(batch)  # warm-up
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.ppo_update(batch)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
        report.append(f"micro-batch {micro_batch} ({len(batch)} samples, one optimizer step):\n{table}")
    return "\n".join(report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print a torch profile of both settings instead")
    cli = parser.parse_args()
    setup = make_setup(cli.max_new_tokens, cli.threads)
    print(profile(setup) if cli.profile else run(setup, rounds=cli.rounds))
