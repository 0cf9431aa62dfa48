"""Run every benchmark in one process, print a table, write `benchmarks/results.json`.

```bash
python benchmarks/run_all.py --quick          # about a minute on a quiet 2-core CPU
python benchmarks/run_all.py                  # more rounds
```

The CPU benchmarks share one tiny LLaVA-NeXT (built offline), one env (gym_cards/NumberLine-v0), one seed and one
completion length (every completion exactly ``--max-new-tokens`` tokens); torch runs ``--threads`` intra-op threads
(default 1: on this shared 2-core machine two threads lose 10x whenever another process is busy). The memory
estimates build the 7B models on the meta device from their configs (`memory_estimate.py`). Speeds are the best of
interleaved rounds (see `_common.py`); the machine's load average is recorded with them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GOALS = {  # key: (comparison, goal)
    "rollout_speedup_8_envs": (">=", 4.0),
    "update_speedup": (">=", 3.0),
    "vs_trl_grpo_per_sample": (">=", 1.0),
    "memory_7b_paper_config_gb": ("<=", 40.0),
    "memory_qwen2_5_vl_7b_gb": ("<=", 40.0),
    "memory_7b_qlora_gb": ("<=", 24.0),
    "memory_qwen2_5_vl_7b_qlora_gb": ("<=", 24.0),
}


def met(key: str, value: float) -> bool:
    op, goal = GOALS[key]
    return value >= goal if op == ">=" else value <= goal


@contextlib.contextmanager
def quiet(log: io.StringIO):
    """Trainer logs and progress lines go to ``log``, not between the table's lines."""
    from transformers import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.getLogger("vlm_env_ppo").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(log):
        try:
            yield
        finally:
            hf_logging.set_verbosity(previous)


def table(results: dict) -> str:
    rows = [f"{'metric':<32} {'value':>9}  {'goal':>8}  met", "-" * 60]
    for key, (op, goal) in GOALS.items():
        if key in results:
            value = results[key]
            rows.append(f"{key:<32} {value:>9.2f}  {op}{goal:>6g}  {'yes' if met(key, value) else 'NO'}")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (the CI-sized run)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="completion length on every side")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "rollout", "update", "grpo"])
    cli = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.time()
    load_before = os.getloadavg()

    import memory_estimate
    from _common import make_setup

    results: dict = {}
    details: dict = {}
    log = io.StringIO()
    rounds = 3 if cli.quick else 5

    if "memory" not in cli.skip:
        print("memory estimates (7B configs on the meta device) ...", flush=True)
        memory = memory_estimate.run(verify_peft=True, verbose=True)  # LoRA counts checked by real PEFT injection
        for key, estimate in memory.items():
            results[key] = estimate["peak_gb"]
            details[key] = estimate
    setup = make_setup(cli.max_new_tokens, cli.threads)
    if "rollout" not in cli.skip:
        import bench_rollout

        print("rollout: 8 envs batched vs one env at a time ...", flush=True)
        with quiet(log):
            out = bench_rollout.run(setup, rounds=rounds)
        results["rollout_speedup_8_envs"] = out.pop("rollout_speedup_8_envs")
        details["rollout"] = out
    if "update" not in cli.skip:
        import bench_update

        print("update: micro-batches of 8 vs 1 ...", flush=True)
        with quiet(log):
            out = bench_update.run(setup, rounds=rounds)
        results["update_speedup"] = out.pop("update_speedup")
        details["update"] = out
    if "grpo" not in cli.skip:
        import bench_vs_grpo

        print("one iteration: VLMPPOTrainer vs TRL GRPOTrainer ...", flush=True)
        with quiet(log):
            out = bench_vs_grpo.run(setup, rounds=2 if cli.quick else 3)
        results["vs_trl_grpo_per_sample"] = out.pop("vs_trl_grpo_per_sample")
        details["grpo"] = out

    import torch
    import transformers
    import trl

    wall = time.time() - start
    report = {
        **results,
        "goals": {k: f"{op} {goal:g}" for k, (op, goal) in GOALS.items()},
        "goals_met": {k: met(k, v) for k, v in results.items() if k in GOALS},
        "settings": {
            "quick": cli.quick,
            "model": "tiny llava_next (vlm_env_ppo.models.tiny.build_tiny_vlm, seed 0)",
            "env": "gym_cards/NumberLine-v0",
            "seed": 0,
            "max_new_tokens": cli.max_new_tokens,
            "completion_tokens": f"exactly {cli.max_new_tokens} (EOS never sampled)",
            "torch_threads": cli.threads,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "wall_time_s": round(wall, 1),
        "details": details,
    }
    with open(cli.out, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print()
    print(table(results))
    print(f"\nwall time {wall:.0f} s; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}; wrote {cli.out}")


if __name__ == "__main__":
    main()
