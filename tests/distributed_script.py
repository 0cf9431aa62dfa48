"""Multi-process PPO run for `tests/test_distributed.py` (not a test itself): launched with `accelerate launch`.

Each process trains a tiny VLM on its own envs and writes what the test checks to ``<out>/rank<i>.json``: its env
seed and first frame, its advantages before/after whitening, a checksum of the trainable parameters before and after
training, and how many critic forwards it ran. Episodes end at different times on the two ranks on purpose: rank 0's
end after one step (terminated), rank 1's are cut by a time limit after three (truncated, so they need bootstrap
values of their final frames), and the ranks' rewards differ so that per-rank and global whitening disagree.

Modes: the default trains with `trainer.train()` under whatever the launcher set up (DDP over gloo, or DeepSpeed
ZeRO-2/3 with the shipped configs, in CI); ``--fsdp2`` shards the model with FSDP2 by hand (accelerate enables FSDP
only with GPUs), so that every forward is a collective as under ZeRO-3; ``--zero_stage N`` passes a DeepSpeed config
through `deepspeed=` instead. ``--save`` checkpoints after each update and saves the agent; ``--resume`` (a second
launch on the same ``--out``) continues from the last checkpoint for a third update.

```bash
ACCELERATE_USE_CPU=true accelerate launch --config_file examples/accelerate_configs/ddp.yaml --mixed_precision no \
    tests/distributed_script.py --model /path/to/tiny-llava_next --out /tmp/dist [--fsdp2 --kl_coef 0.05]
accelerate launch --config_file examples/accelerate_configs/zero3.yaml --mixed_precision no \
    tests/distributed_script.py --model /path/to/tiny-llava_next --out /tmp/dist --save
```
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import hashlib
import json
import os
import sys
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from peft import LoraConfig

from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo.rollout import unbatch_infos
from vlm_env_ppo.tasks import COLOR_CHOICE


class UnevenEnv(gym.Env):
    """A noisy coloured frame; every step pays ``reward``; the episode ends after ``length`` steps, terminated or
    (``truncate``) truncated by a time limit."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, length: int, truncate: bool, reward: float):
        self.length, self.truncate, self.reward = length, truncate, reward
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0, 255, (32, 32, 3), np.uint8)

    def _frame(self) -> np.ndarray:
        return self.np_random.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        return self._frame(), self.reward, done and not self.truncate, done and self.truncate, {}


def checksum(model: torch.nn.Module) -> tuple[float, str]:
    """Sum and SHA-1 of the trainable parameters' bytes: equal across ranks iff the replicas are bit-identical.
    FSDP2 and ZeRO-3 shards are gathered first (a collective: every rank calls this)."""
    digest, total = hashlib.sha1(), 0.0
    trainable = [(name, p) for name, p in sorted(model.named_parameters()) if p.requires_grad]
    gathered = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for _, p in trainable):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([p for _, p in trainable])
    with gathered:
        for name, p in trainable:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            data = full.detach().float().cpu().contiguous()
            digest.update(name.encode())
            digest.update(data.numpy().tobytes())
            total += float(data.sum())
    return total, digest.hexdigest()


def shard_with_fsdp2(trainer: VLMPPOTrainer) -> None:
    """FSDP2 by hand: accelerate only enables FSDP with GPUs, so apply `fully_shard` the way its transformer auto-wrap
    policy does (each `_no_split_modules` layer, then the root) and give the trainer what `accelerator.prepare` would.
    Every critic forward is then a collective (the layers all-gather their shards), as under ZeRO-3."""
    import types

    from torch.distributed.fsdp import fully_shard

    model = trainer.model
    layer_classes = set(model._no_split_modules)
    for module in list(model.modules()):
        if type(module).__name__ in layer_classes:
            fully_shard(module)
    fully_shard(model)
    trainer.model_wrapped = model
    trainer.is_fsdp_enabled = True
    trainer.accelerator.state.fsdp_plugin = types.SimpleNamespace(fsdp_version=2)
    trainer.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=trainer.args.learning_rate)
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)


def train_by_hand(trainer: VLMPPOTrainer) -> None:
    """`train()`'s three phases for `args.num_updates` updates, without `accelerator.prepare` (FSDP2 mode)."""
    obs, infos = trainer.envs.reset(seed=trainer.env_seed)
    trainer._obs, trainer._infos = obs, unbatch_infos(infos, trainer.args.num_envs)
    for _ in range(trainer.args.num_updates):
        batch = trainer.collect_rollout()
        trainer.compute_advantages(batch)
        trainer.ppo_update(batch)
        trainer.state.global_step += 1


FRAME = np.full((32, 32, 3), 96, dtype=np.uint8)  # what the saved agent is compared on (`--save_resume`)


def make_config(cli, rank: int, num_updates: int) -> VLMPPOConfig:
    return VLMPPOConfig(
        output_dir=os.path.join(cli.out, "run"),
        num_envs=2,
        num_steps=4,
        total_env_steps=2 * 4 * 2 * num_updates,  # over both processes
        num_ppo_epochs=1,
        num_mini_batches=2,
        per_device_train_batch_size=2,
        max_new_tokens=14,  # constrained decoding (the default): answers of 12 tokens and 2 of thoughts
        temperature=1.0,
        learning_rate=1e-3,
        kl_coef=cli.kl_coef,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="steps" if cli.save or cli.resume else "no",
        save_steps=1,
        disable_tqdm=True,
        seed=0,
        deepspeed=None if cli.zero_stage is None else {
            "zero_optimization": {"stage": cli.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",  # needs the right process count (`vlm_env_ppo.distributed.setup_devices`)
            "gradient_clipping": "auto",
        },
    )


def make_trainer(cli, rank: int, num_updates: int) -> VLMPPOTrainer:
    length, truncate, reward = (1, False, 1.0) if rank == 0 else (3, True, -1.0)
    return VLMPPOTrainer(
        cli.model,
        make_config(cli, rank, num_updates),
        env=lambda: UnevenEnv(length, truncate, reward),
        task=COLOR_CHOICE,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )


def counting_acts(trainer: VLMPPOTrainer) -> list[int]:
    """Count `trainer.act` calls (each one gathers the weights under ZeRO-3 and FSDP2)."""
    count, act = [0], trainer.act

    def counted(*args, **kwargs):
        count[0] += 1
        return act(*args, **kwargs)

    trainer.act = counted
    return count


def save_agent(cli, trainer: VLMPPOTrainer, record: dict) -> None:
    """Save the trained agent and record what the trained policy does on `FRAME`: the test loads the folder with
    `VLMAgent.from_pretrained` and compares."""
    trainer.save_model(os.path.join(cli.out, "agent"))
    record["frame_value"] = float(trainer.value_of([FRAME], [{}])[0])
    record["frame_text"] = trainer.act([FRAME], [{}], greedy=True, score=False).texts[0]
    record["checkpoints"] = sorted(os.listdir(os.path.join(cli.out, "run")))


def resume(cli, rank: int) -> dict:
    """A new process continues the run in ``<out>/run`` from its last checkpoint for a third update."""
    trainer = make_trainer(cli, rank, num_updates=3)
    record: dict = {"rank": rank, "num_processes": trainer.accelerator.num_processes}
    load = trainer._resume

    def recording_resume(checkpoint):
        load(checkpoint)
        record["resumed_from"] = os.path.basename(checkpoint)
        record["params_resumed"] = checksum(trainer.model)
        record["env_steps_resumed"] = trainer.env_steps

    trainer._resume = recording_resume
    trainer.train(resume_from_checkpoint=True)
    record["global_step"] = trainer.state.global_step
    record["env_steps"] = trainer.env_steps
    record["params_after"] = checksum(trainer.model)
    record["distributed_type"] = str(trainer.accelerator.distributed_type)
    return record


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--kl_coef", type=float, default=0.0)
    parser.add_argument("--zero_stage", type=int, default=None, help="DeepSpeed ZeRO stage through `deepspeed=`")
    parser.add_argument("--fsdp2", action="store_true", help="shard with FSDP2 by hand (CPU-only machines)")
    parser.add_argument("--save", action="store_true", help="checkpoint every update; save the agent")
    parser.add_argument("--resume", action="store_true", help="resume the run in --out for a third update")
    cli = parser.parse_args()
    faulthandler.enable()  # a rank that aborts (SIGABRT from C++) prints every thread's Python stack first
    torch.set_num_threads(1)  # two processes on a two-core machine

    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    record = resume(cli, rank) if cli.resume else train(cli, rank)
    with open(os.path.join(cli.out, f"rank{rank}{'_resumed' if cli.resume else ''}.json"), "w") as f:
        json.dump(record, f)
    # Leave together and tear the process group down: a rank that exits while the other's gloo threads still talk
    # to it aborts that rank ("terminate called without an active exception").
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    # Even then, a rank aborted at interpreter shutdown once in CI (FSDP2, after both had written their records):
    # objects that hold gloo work are freed while the interpreter is torn down. Everything this script reports is
    # written and flushed by now, so leave without running those destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train(cli, rank: int) -> dict:
    trainer = make_trainer(cli, rank, num_updates=2)
    record: dict = {"rank": rank, "num_processes": trainer.accelerator.num_processes, "env_seed": trainer.env_seed}
    obs, _ = trainer.envs.reset(seed=trainer.env_seed)
    record["first_frame_sha1"] = hashlib.sha1(obs.tobytes()).hexdigest()
    record["params_before"] = checksum(trainer.model)

    # Record what the update works on, and how many critic (prompt-only) forwards each process runs.
    record["advantages"], record["raw_advantages"], record["value_forwards"] = [], [], 0
    record["truncated"] = 0
    compute_advantages, value_of = trainer.compute_advantages, trainer.value_of

    def recording_compute_advantages(batch):
        record["truncated"] += int(batch.truncated.sum())
        record["kl_abs_sum"] = record.get("kl_abs_sum", 0.0) + float(batch.kl.abs().sum())
        trainer.args.whiten_advantages = False
        compute_advantages(batch)
        record["raw_advantages"].append(batch.advantages.flatten().tolist())
        trainer.args.whiten_advantages = True
        compute_advantages(batch)
        record["advantages"].append(batch.advantages.flatten().tolist())

    def counting_value_of(observations, infos):
        record["value_forwards"] += 1
        return value_of(observations, infos)

    trainer.compute_advantages = recording_compute_advantages
    trainer.value_of = counting_value_of
    if trainer.is_deepspeed_enabled:  # before `train` builds the engine: under ZeRO-3 the policy is partitioned
        record["eval_before"] = trainer.evaluate(num_episodes=3, seed=7)
    acts = counting_acts(trainer)
    if cli.fsdp2:
        shard_with_fsdp2(trainer)
        train_by_hand(trainer)
    else:
        trainer.train()
    record["rollout_acts"] = acts[0]

    # Each process plays its share of the evaluation episodes, then the shares are merged.
    record["eval"] = trainer.evaluate(num_episodes=5, seed=7)
    record["eval_acts"] = acts[0] - record["rollout_acts"]
    record["params_after"] = checksum(trainer.model)
    record["global_step"] = trainer.state.global_step
    record["env_steps"] = trainer.env_steps
    record["distributed_type"] = "FSDP2 (by hand)" if cli.fsdp2 else str(trainer.accelerator.distributed_type)
    if trainer.is_deepspeed_enabled:
        from deepspeed.comm import comm

        record["zero_stage"] = trainer.accelerator.state.deepspeed_plugin.zero_stage
        record["shm_op_built"] = comm.cdb.shm_comm_op is not None
    if cli.save:
        save_agent(cli, trainer, record)
    return record


if __name__ == "__main__":
    main()
