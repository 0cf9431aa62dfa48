"""What every CPU benchmark shares: one tiny model, one env, one seed, one completion length, and a timer.

Completions are forced to exactly ``max_new_tokens`` tokens (EOS is never sampled), so the two sides of a ratio do
identical work.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

ENV_ID = "gym_cards/NumberLine-v0"
FAMILY = "llava_next"  # the paper's architecture (LLaVA-1.6), tiny
SEED = 0


@dataclass
class Setup:
    model_path: str
    max_new_tokens: int
    threads: int
    workdir: str


def make_setup(max_new_tokens: int, threads: int, workdir: str | None = None) -> Setup:
    """Build the tiny VLM once (offline, < 1 s) and pin torch's intra-op threads."""
    from vlm_env_ppo.models.tiny import build_tiny_vlm

    torch.set_num_threads(threads)
    workdir = workdir or tempfile.mkdtemp(prefix="vlm-env-ppo-bench-")
    path = build_tiny_vlm(FAMILY, os.path.join(workdir, f"tiny-{FAMILY}"), seed=SEED)
    return Setup(path, max_new_tokens, threads, workdir)


def force_length(model, max_new_tokens: int) -> None:
    """Every completion of a plain ``generate`` (TRL's GRPO) gets exactly ``max_new_tokens`` tokens."""
    model.generation_config.min_new_tokens = max_new_tokens


def force_ppo_length(trainer) -> None:
    """Every completion of ``trainer`` gets exactly ``max_new_tokens`` tokens: EOS joins the suppressed tokens (the
    trainer pins `generate`'s settings, so the model's ``min_new_tokens`` would be ignored)."""
    trainer.suppress_token_ids = sorted(set(trainer.suppress_token_ids) | set(trainer.eos_token_ids))
    trainer.accelerator.unwrap_model(trainer.model).suppressed_ids = torch.tensor(trainer.suppress_token_ids)
    if getattr(trainer, "rollout_engine", None) is not None:  # a vLLM engine: EOS held back for max_new_tokens
        trainer.rollout_engine.min_new_tokens = trainer.args.max_new_tokens


def ppo_trainer(setup: Setup, *, num_envs: int, num_steps: int, callbacks=None, force_length: bool = True,
                **overrides):
    """A `VLMPPOTrainer` on the shared model/env/seed/length, its envs reset and ready for `collect_rollout`
    (``force_length=False``: completions end where EOS is sampled, e.g. where a grammar puts it)."""
    from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
    from vlm_env_ppo.rollout import unbatch_infos

    kwargs = {
        "output_dir": os.path.join(setup.workdir, f"ppo-{num_envs}x{num_steps}"),
        "num_envs": num_envs,
        "num_steps": num_steps,
        "total_env_steps": num_envs * num_steps * 1000,
        "num_ppo_epochs": 1,
        "num_mini_batches": 1,
        "per_device_train_batch_size": 1,
        "max_new_tokens": setup.max_new_tokens,
        "temperature": 1.0,
        "constrained_decoding": False,  # completions forced to max_new_tokens (EOS suppressed): no grammar can end
        "learning_rate": 1e-5,
        "activation_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 10**6,
        "disable_tqdm": True,
        "seed": SEED,
    }
    kwargs.update(overrides)
    trainer = VLMPPOTrainer(setup.model_path, VLMPPOConfig(**kwargs), env=ENV_ID, callbacks=callbacks)
    if force_length:
        force_ppo_length(trainer)
    obs, infos = trainer.envs.reset(seed=trainer.env_seed)
    trainer._obs, trainer._infos = obs, unbatch_infos(infos, num_envs)
    return trainer


def prepare_for_update(trainer) -> None:
    """What `train()` does before its first update: optimizer, scheduler, `accelerator.prepare`."""
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.model_wrapped, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)


def best_rate(work: Callable[[], float], rounds: int) -> tuple[float, list[float]]:
    """Run ``work`` (returns units done) ``rounds`` times; the best units/s and all of them.

    The best of several rounds is the least-disturbed one (this machine is shared), as in `timeit`."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        units = work()
        rates.append(units / (time.perf_counter() - start))
    return max(rates), rates


def interleaved(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple[dict, dict]:
    """Best and all rates of ``a`` and ``b``, measured alternately so that load on the machine hits both alike."""
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(best_rate(a, 1)[0])
        rb.append(best_rate(b, 1)[0])
    summary = lambda rs: {"best": max(rs), "median": statistics.median(rs), "all": [round(r, 3) for r in rs]}
    return summary(ra), summary(rb)
