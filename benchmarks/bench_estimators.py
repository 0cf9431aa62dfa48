"""Cost of one PPO iteration with the critic (GAE, the value head) and without it (GRPO): time and peak memory.

```bash
python benchmarks/bench_estimators.py                  # tiny LLaVA-NeXT, 8 envs x 2 steps, 3 interleaved rounds
python benchmarks/memory_estimate.py --critic-free     # the same comparison for the 7B settings, from the configs
```

Both arms share the tiny model, env, seed and completion length of the other CPU benchmarks (`_common.py`). One
iteration is what `train()` does per update: `collect_rollout` (GAE also runs the value forwards of the observations
after the last step and of truncated episodes' final observations), `compute_advantages` and one `ppo_update` epoch.
Speeds are the best of interleaved rounds. Peak memory is the most tensor memory live at once during an iteration,
from the torch profiler's allocation events (CPU allocator; on a GPU, `benchmarks/gpu_iteration.py` measures the
real peak).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from _common import interleaved, make_setup, ppo_trainer, prepare_for_update

HERE = os.path.dirname(os.path.abspath(__file__))


def iteration(trainer) -> float:
    batch = trainer.collect_rollout()
    trainer.compute_advantages(batch)
    trainer.ppo_update(batch)
    return len(batch)


def peak_tensor_bytes(work) -> int:
    """Most bytes of tensor memory live at once while ``work()`` runs (profiler allocation/free events in time order;
    tensors allocated before and still live are not counted: the figure is what the iteration adds)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):  # an op's own allocations; "[memory]": frees
        live += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(HERE, "estimators_cost.json"))
    cli = parser.parse_args(argv)
    setup = make_setup(cli.max_new_tokens, cli.threads)
    arms = {
        "gae": ppo_trainer(setup, num_envs=8, num_steps=2, per_device_train_batch_size=8),
        "grpo": ppo_trainer(setup, num_envs=8, num_steps=2, per_device_train_batch_size=8,
                            advantage_estimator="grpo", group_size=4),
    }
    for trainer in arms.values():
        prepare_for_update(trainer)
        iteration(trainer)  # warm-up
    gae, grpo = interleaved(lambda: iteration(arms["gae"]), lambda: iteration(arms["grpo"]), cli.rounds)
    peaks = {name: peak_tensor_bytes(lambda t=trainer: iteration(t)) for name, trainer in arms.items()}
    params = {name: sum(p.numel() for p in t.model.parameters() if p.requires_grad) for name, t in arms.items()}
    report = {
        "samples_per_s": {"gae": gae, "grpo": grpo},
        "speedup_critic_free": grpo["best"] / gae["best"],
        "peak_tensor_mb": {name: round(b / 1e6, 2) for name, b in peaks.items()},
        "trainable_params": params,
        "settings": {"num_envs": 8, "num_steps": 2, "max_new_tokens": cli.max_new_tokens, "threads": cli.threads,
                     "rounds": cli.rounds, "per_device_train_batch_size": 8},
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for trainer in arms.values():
        trainer.envs.close()
    with open(cli.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{'':<6} {'samples/s (best)':>17} {'peak tensor MB':>15} {'trainable params':>17}")
    for name, rates in report["samples_per_s"].items():
        print(f"{name:<6} {rates['best']:17.2f} {report['peak_tensor_mb'][name]:15.2f} {params[name]:17,}")
    print(f"critic-free speedup per iteration: {report['speedup_critic_free']:.2f}x; wrote {cli.out}")
    return report


if __name__ == "__main__":
    main()
