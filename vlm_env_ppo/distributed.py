"""What multi-process runs need beyond accelerate and transformers: DeepSpeed on a machine without GPUs
(`setup_devices`), and acting in lock-step where weights are sharded (`LockStepActor`).

DeepSpeed without GPUs (CI runs ZeRO-2/3 with 2 CPU processes this way; see the README's multi-process section):

- transformers hands accelerate no process-group backend for a `deepspeed=` config, and on a machine without an
  accelerator accelerate then finds none and counts one process while DeepSpeed runs all of them (DeepSpeed stops
  with ``train_batch_size ... != ... * 1``). `setup_devices` gives it ``ddp_backend`` (gloo unless set), on the
  `deepspeed=` path and the accelerate-config path alike.
- DeepSpeed's CPU communication backend compiles a C++ shared-memory op when it starts (minutes on a small machine;
  a run killed meanwhile leaves a lock in the torch-extensions cache that blocks later runs). Only its inference
  all-reduce (AutoTP) uses that op, never training, so `setup_devices` marks the op as unavailable: DeepSpeed then
  skips it and communicates over gloo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

SHM_OP = "deepspeed_shm_comm"  # `deepspeed.ops.op_builder.cpu.ShareMemCommBuilder.NAME`


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def deepspeed_without_accelerator(args) -> bool:
    """Whether ``args`` (a `TrainingArguments`) start DeepSpeed in a launched process on a machine with no GPU (or
    other torch accelerator), where DeepSpeed falls back to its CPU backend."""
    wants_deepspeed = bool(args.deepspeed) or _flag("ACCELERATE_USE_DEEPSPEED")
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    cpu_requested = args.use_cpu or _flag("ACCELERATE_USE_CPU")  # accelerate's MULTI_CPU (DDP) path, no DeepSpeed
    accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return wants_deepspeed and launched and not cpu_requested and not accelerator


def skip_deepspeed_shm_op() -> None:
    """Mark DeepSpeed's shared-memory communication op as unavailable, so that its CPU backend starts without
    compiling it (DeepSpeed asks `deepspeed.ops.__compatible_ops__` before building it, and keeps that dict for the
    process). Call it before DeepSpeed's process group starts; no effect once it has."""
    import deepspeed.ops

    if deepspeed.ops.__compatible_ops__.get(SHM_OP):
        deepspeed.ops.__compatible_ops__[SHM_OP] = False
        logger.info("DeepSpeed on CPU: not building the %s op (inference-only); collectives go over gloo.", SHM_OP)


def setup_devices(args, setup: Callable[[], torch.device]) -> torch.device:
    """`TrainingArguments._setup_devices` (``setup``), fixed for DeepSpeed on a machine without GPUs (see the module
    docstring). Elsewhere it is ``setup()`` unchanged."""
    if not deepspeed_without_accelerator(args):
        return setup()
    skip_deepspeed_shm_op()
    if args.ddp_backend is None:
        args.ddp_backend = "gloo"
    if not args.deepspeed:
        return setup()
    # transformers' `deepspeed=` branch passes no backend; its accelerate-config branch (DeepSpeed named by the
    # environment) passes `ddp_backend`. Take that branch; `__post_init__` reads `deepspeed` again afterwards.
    config, previous = args.deepspeed, os.environ.get("ACCELERATE_USE_DEEPSPEED")
    args.deepspeed, os.environ["ACCELERATE_USE_DEEPSPEED"] = None, "true"
    try:
        return setup()
    finally:
        args.deepspeed = config
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous


class LockStepActor:
    """A batched actor (``act_batch(observations, infos) -> outputs``) that every process calls the same number of
    times, for a distributed evaluation in which each process plays its own share of the episodes.

    Under ZeRO-3 and FSDP each call gathers sharded weights, a collective that every process must join. Before each
    call the processes agree (one all-reduce) whether any of them still has episodes to play; once its own are done a
    process calls `finish`, which keeps acting on a placeholder observation (its last one; a process that had no
    episodes resets a fresh env on ``seed``) and drops the result, until all processes are done.
    """

    def __init__(self, act_batch: Callable, accelerator, make_env: Callable, seed: int):
        self.act_batch, self.accelerator, self.make_env, self.seed = act_batch, accelerator, make_env, seed
        self.last: tuple[list, list[dict]] | None = None
        self.idle_calls = 0  # placeholder calls

    def _anyone_acting(self, acting: bool) -> bool:
        flags = self.accelerator.gather(torch.tensor([int(acting)], device=self.accelerator.device))
        return bool(flags.sum() > 0)

    def __call__(self, observations: list, infos: list[dict]):
        self._anyone_acting(True)
        self.last = (list(observations[:1]), list(infos[:1]))
        return self.act_batch(observations, infos)

    def finish(self) -> None:
        while self._anyone_acting(False):
            if self.last is None:
                env = self.make_env()
                try:
                    observation, info = env.reset(seed=self.seed)
                finally:
                    env.close()
                self.last = ([observation], [info])
            self.act_batch(*self.last)
            self.idle_calls += 1
