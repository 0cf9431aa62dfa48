"""Teach a (tiny, random) model the answer *format* before PPO, without teaching it the answer.

The paper runs PPO from an SFT checkpoint because RL from a raw model rarely produces a parsable action at all
(its finding). A randomly initialised tiny VLM never does. This warm start trains on the trainer's own prompts with
answers in the prompt's JSON format whose actions are drawn uniformly at random, independently of the observation:
afterwards the model answers in the right format but is at chance on the task, so whatever it learns about the task
comes from PPO. That is what the learning test and the quickstart need.
"""

from __future__ import annotations

import numpy as np
import torch

from .buffer import pad_completions
from .models.loading import get_tokenizer
from .policy import fill_image_placeholders
from .rollout import unbatch_infos


def teach_answer_format(trainer, steps: int = 60, learning_rate: float = 3e-3, seed: int = 0) -> list[float]:
    """Supervised steps on ``(prompt, random-action answer)`` pairs built by ``trainer``'s own hooks.

    Uses the trainer's envs for observations, ``trainer.build_messages`` / ``trainer.build_model_inputs`` for the
    prompts and ``trainer.task.example_answer`` for the answers (so the format is exactly the one the parser reads).
    Trains the policy only (not the value head) with its own AdamW. Returns the per-step losses.
    """
    if trainer.task is None:
        raise ValueError("teach_answer_format needs `trainer.task` to write answers in the prompt's format.")
    rng = np.random.default_rng(seed)
    tokenizer = get_tokenizer(trainer.processing_class)
    model = trainer.accelerator.unwrap_model(trainer.model)
    params = [p for p in model.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    envs = trainer.envs
    obs, infos = envs.reset(seed=seed + 10_000)
    infos = unbatch_infos(infos, envs.num_envs)
    losses = []
    model.train()
    for _ in range(steps):
        messages = [  # TRL-style image placeholders filled as in the rollout
            fill_image_placeholders(trainer.build_messages(obs[i], infos[i]), obs[i], infos[i])
            for i in range(envs.num_envs)
        ]
        prompt_inputs = trainer._to_device(trainer.build_model_inputs(messages))
        actions = [trainer.task.sample_action(info, rng) for info in infos]
        answers = [
            trainer.task.example_answer(
                trainer.task.action_name(a, info), thoughts="I look at the image.", action_only=trainer.args.action_only
            )
            for a, info in zip(actions, infos)
        ]
        ids = [
            torch.tensor(tokenizer.encode(a, add_special_tokens=False) + [tokenizer.eos_token_id]) for a in answers
        ]
        completion_ids, completion_mask = pad_completions(ids, trainer.pad_token_id)
        device = trainer.accelerator.device
        completion_ids, completion_mask = completion_ids.to(device), completion_mask.to(device)
        logprobs, _, _ = model(prompt_inputs, completion_ids, completion_mask, 1.0)  # (n, C), 0 on padding
        loss = -logprobs.sum() / completion_mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        obs, _, _, _, infos = envs.step(trainer.to_env_actions(actions, infos))
        infos = unbatch_infos(infos, envs.num_envs)
    model.eval()
    return losses
