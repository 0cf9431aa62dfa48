"""`VLMPPOTrainer`: PPO with a value head for a vision-language model acting in a gymnasium environment."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import gather_object
from gymnasium import spaces
from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, TrainerCallback, set_seed

from ._trl import BaseTrainer
from .actions import ParsedAction
from .advantages import compute_gae, kl_penalty, whiten
from .buffer import RolloutBatch, collate_inputs, split_inputs
from .config import VLMPPOConfig
from .logprobs import action_token_index, token_weights, weighted_logprob
from .losses import explained_variance, policy_loss, value_loss
from .models.loading import (
    disable_bnb_cpu_repacking,
    freeze_vision_tower,
    generation_suppress_token_ids,
    get_tokenizer,
    load_policy,
    load_processor,
    load_reference_model,
)
from .models.value_head import VALUE_HEAD_WEIGHTS, ValueHead, policy_forward, text_hidden_size
from .rollout import EnvSpec, EpisodeStats, make_vector_env, unbatch_infos
from .tasks import Task, get_task

logger = logging.getLogger(__name__)


class PolicyAndValue(nn.Module):
    """The VLM (possibly a PEFT model) and its value head as one module, so optimizer, DDP and checkpoints see both."""

    def __init__(self, policy: PreTrainedModel | PeftModel, value_head: ValueHead):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.config = policy.config

    def forward(self, prompt_inputs, completion_ids, completion_mask, temperature, compute_entropy=False):
        return policy_forward(
            self.policy, self.value_head, prompt_inputs, completion_ids, completion_mask, temperature, compute_entropy
        )


@dataclass
class StepOutput:
    """What the policy did for one batched env step (all envs)."""

    prompts: list[dict]  # per-sample model inputs (CPU, unpadded)
    completions: list[torch.Tensor]  # per-sample completion ids up to and including EOS
    texts: list[str]
    parsed: list[ParsedAction]
    action_token_starts: list[int]
    logprobs: torch.Tensor  # (num_envs,) λ-weighted
    values: torch.Tensor  # (num_envs,)
    kl: torch.Tensor  # (num_envs,) summed per-token KL to the reference (0 without one)


class VLMPPOTrainer(BaseTrainer):
    """PPO for a vision-language model acting in a gymnasium environment (RL4VLM, Zhai et al., NeurIPS 2024).

    Args:
        model: a Hub id, a local path, or a loaded `AutoModelForImageTextToText`.
        args: a `VLMPPOConfig`.
        env: a registered env id (e.g. ``"gym_cards/NumberLine-v0"``), a zero-argument factory returning a
            `gymnasium.Env`, or a gymnasium `VectorEnv` built with same-step autoreset.
        processing_class: the model's processor; loaded from the model's path when None.
        peft_config: a `peft.PeftConfig` (e.g. LoRA); the reference policy is then the same model with the adapter
            disabled.
        ref_model: an explicit frozen reference model (only used when `args.kl_coef > 0` and there is no PEFT).
        task: the prompt/parser for the env (`vlm_env_ppo.tasks.Task`); found from the env id when None. Not needed if
            you override `build_messages` and `parse_action`.
        callbacks, optimizers: as in `transformers.Trainer`.

    Override `build_messages(observation, info)` and `parse_action(completion, info)` for your own env.
    """

    _tag_names = ["trl", "ppo", "vlm-env-ppo"]
    _name = "VLM-PPO"
    _paper = {
        "title": "Fine-Tuning Large Vision-Language Models as Decision-Making Agents via Reinforcement Learning",
        "id": "2405.10292",
        "citation": (
            "@inproceedings{zhai2024finetuning,\n  title={Fine-Tuning Large Vision-Language Models as Decision-Making "
            "Agents via Reinforcement Learning},\n  author={Zhai, Yuexiang and Bai, Hao and Lin, Zipeng and Pan, "
            "Jiayi and Tong, Shengbang and Zhou, Yifei and Suhr, Alane and Xie, Saining and LeCun, Yann and Ma, Yi "
            "and Levine, Sergey},\n  booktitle={NeurIPS},\n  year={2024}\n}"
        ),
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: VLMPPOConfig,
        env: EnvSpec,
        processing_class=None,
        peft_config: PeftConfig | None = None,
        ref_model: PreTrainedModel | None = None,
        task: Task | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
    ):
        if not isinstance(args, VLMPPOConfig):
            raise TypeError(f"`args` must be a VLMPPOConfig, got {type(args).__name__}.")
        set_seed(args.seed)  # LoRA and value-head initialisation happen before Trainer.__init__ seeds
        self.env_id = env if isinstance(env, str) else None
        self.task = task if task is not None else (get_task(env) if isinstance(env, str) else None)

        # Policy, processor, PEFT, value head
        policy = load_policy(model, args.model_init_kwargs, args.trust_remote_code)
        self.base_model_name = getattr(policy.config, "_name_or_path", None)
        if processing_class is None:
            processing_class = load_processor(policy, args.trust_remote_code)
        tokenizer = get_tokenizer(processing_class)
        tokenizer.padding_side = "left"  # prompts are left-padded so every completion starts at the same index
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id = tokenizer.pad_token_id
        is_quantized = getattr(policy, "is_loaded_in_4bit", False) or getattr(policy, "is_loaded_in_8bit", False)
        if is_quantized:
            disable_bnb_cpu_repacking(policy)
        if peft_config is not None and not isinstance(policy, PeftModel):
            if is_quantized:
                policy = prepare_model_for_kbit_training(
                    policy, use_gradient_checkpointing=bool(args.activation_checkpointing)
                )
            policy = get_peft_model(policy, peft_config)
        elif not isinstance(policy, PeftModel) and not args.train_vision_tower:
            freeze_vision_tower(policy)
        if args.activation_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.is_peft = isinstance(policy, PeftModel)
        for module in policy.modules():  # dropout would make rollout and update log-probs differ
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        value_head = ValueHead(text_hidden_size(policy.config), args.value_head_hidden_sizes)
        wrapper = PolicyAndValue(policy, value_head)

        super().__init__(
            model=wrapper,
            args=args,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.value_head = value_head.to(self.accelerator.device)

        # Reference policy (only for the KL penalty)
        self.ref_model = None
        if args.kl_coef > 0 and not self.is_peft:
            if ref_model is None:
                if not self.base_model_name:
                    raise ValueError("kl_coef > 0 needs a reference: pass `ref_model=` or a `peft_config`.")
                ref_model = load_reference_model(
                    self.base_model_name, args.ref_model_quantization, policy.dtype, args.trust_remote_code
                )
            self.ref_model = ref_model.eval().requires_grad_(False)
            if not (getattr(ref_model, "is_loaded_in_4bit", False) or getattr(ref_model, "is_loaded_in_8bit", False)):
                self.ref_model.to(self.accelerator.device)

        # Environments: each process runs its own envs with distinct seeds.
        self.envs = make_vector_env(env, args.num_envs, args.env_kwargs if isinstance(args.env_kwargs, dict) else None)
        action_space = self.envs.single_action_space
        if not isinstance(action_space, spaces.Discrete):
            raise TypeError(f"Only Discrete action spaces are supported, got {action_space}.")
        self.action_space = action_space
        if self.task is not None and len(self.task.action_names) != action_space.n:
            raise ValueError(
                f"The task has {len(self.task.action_names)} action names but the env has {action_space.n} actions."
            )
        self.env_seed = args.seed + self.accelerator.process_index * args.num_envs
        self._np_rng = np.random.default_rng(self.env_seed)
        self.suppress_token_ids = generation_suppress_token_ids(
            processing_class, policy.config, keep_ids=_as_list(policy.generation_config.eos_token_id)
        )
        self.episode_stats = EpisodeStats(args.num_envs)
        self.env_steps = 0
        self.parse_errors = 0

    # ------------------------------------------------------------------ hooks
    def build_messages(self, observation, info: dict) -> list[dict]:
        """Chat messages (with the image) for one env's observation. Override for your own env."""
        if self.task is None:
            raise NotImplementedError("Pass `task=` or override `build_messages` and `parse_action`.")
        return self.task.build_messages(observation, info, action_only=self.args.action_only)

    def parse_action(self, completion: str, info: dict) -> ParsedAction:
        """Map a completion to an action index of the env. Override for your own env. Must not raise."""
        if self.task is None:
            raise NotImplementedError("Pass `task=` or override `build_messages` and `parse_action`.")
        return self.task.parse_action(completion, info)

    def build_model_inputs(self, messages: list[list[dict]]) -> dict[str, torch.Tensor]:
        """Batch of chat conversations → padded processor outputs (CPU tensors)."""
        return self.processing_class.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        )

    # ------------------------------------------------------------------ rollout
    def _to_device(self, inputs: dict) -> dict:
        device = self.accelerator.device
        dtype = self.model.policy.dtype
        return {
            k: v.to(device, dtype=dtype) if torch.is_floating_point(v) else v.to(device) for k, v in inputs.items()
        }

    def _safe_parse(self, text: str, info: dict) -> ParsedAction:
        try:
            parsed = self.parse_action(text, info)
        except Exception:  # a bug in a user hook must not lose the run: counted, logged, treated as invalid
            self.parse_errors += 1
            if self.parse_errors == 1:
                logger.exception("parse_action raised; such outputs are treated as invalid and counted in "
                                 "`generation/parse_errors` (only this first traceback is shown).")
            return ParsedAction(None, False, None, "parse_error")
        if parsed.valid and not (parsed.action is not None and 0 <= parsed.action < self.action_space.n):
            self.parse_errors += 1
            logger.warning("parse_action returned out-of-range action %r; treated as invalid.", parsed.action)
            return ParsedAction(None, False, parsed.action_start)
        return parsed

    @torch.no_grad()
    def act(self, observations, infos: list[dict]) -> StepOutput:
        """Generate for all envs at once (one `generate` call), parse, and score the completions."""
        n = len(infos)
        messages = [self.build_messages(observations[i], infos[i]) for i in range(n)]
        inputs = self.build_model_inputs(messages)
        device_inputs = self._to_device(inputs)
        policy = self.accelerator.unwrap_model(self.model).policy
        policy.eval()
        tokenizer = get_tokenizer(self.processing_class)
        generated = policy.generate(
            **device_inputs,
            do_sample=True,
            temperature=self.args.temperature,
            top_p=self.args.top_p,
            top_k=0,
            max_new_tokens=self.args.max_new_tokens,
            suppress_tokens=self.suppress_token_ids or None,
            pad_token_id=self.pad_token_id,
        )
        prompt_len = device_inputs["input_ids"].shape[1]
        completion_ids = generated[:, prompt_len:]  # (n, C)
        completion_mask = _mask_after_eos(completion_ids, policy.generation_config.eos_token_id, tokenizer)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, self.pad_token_id)
        completions = [completion_ids[i, : int(completion_mask[i].sum())].cpu() for i in range(n)]
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        parsed = [self._safe_parse(texts[i], infos[i]) for i in range(n)]
        starts = [action_token_index(tokenizer, completions[i].tolist(), parsed[i].action_start) for i in range(n)]

        per_token_logprobs, _, values = self.model(device_inputs, completion_ids, completion_mask, self.args.temperature)
        weights = token_weights(completion_mask, starts, self.args.cot_logprob_coef)
        logprobs = weighted_logprob(per_token_logprobs, weights)
        kl = torch.zeros(n, device=logprobs.device)
        if self.args.kl_coef > 0:
            ref_logprobs = self._ref_logprobs(device_inputs, completion_ids, completion_mask)
            kl = (kl_penalty(per_token_logprobs, ref_logprobs, self.args.kl_estimator) * completion_mask).sum(-1)
        return StepOutput(
            prompts=split_inputs({k: v for k, v in inputs.items()}, n),
            completions=completions,
            texts=texts,
            parsed=parsed,
            action_token_starts=starts,
            logprobs=logprobs.float().cpu(),
            values=values.float().cpu(),
            kl=kl.float().cpu(),
        )

    def _ref_logprobs(self, inputs, completion_ids, completion_mask) -> torch.Tensor:
        if self.is_peft:
            policy = self.accelerator.unwrap_model(self.model).policy
            with policy.disable_adapter():
                ref_logprobs, _, _ = policy_forward(
                    policy, None, inputs, completion_ids, completion_mask, self.args.temperature
                )
            return ref_logprobs
        ref_logprobs, _, _ = policy_forward(
            self.ref_model, None, inputs, completion_ids, completion_mask, self.args.temperature
        )
        return ref_logprobs

    @torch.no_grad()
    def value_of(self, observations, infos: list[dict]) -> torch.Tensor:
        """Critic values of observations (no generation): for bootstrapping truncated episodes and the last step."""
        inputs = self._to_device(self.build_model_inputs([self.build_messages(o, i) for o, i in zip(observations, infos)]))
        empty = inputs["input_ids"][:, :0]
        _, _, values = self.model(inputs, empty, empty, self.args.temperature)
        return values.float().cpu()

    def _env_actions(self, parsed: list[ParsedAction]) -> tuple[np.ndarray, np.ndarray]:
        valid = np.array([p.valid for p in parsed], dtype=bool)
        actions = np.empty(len(parsed), dtype=np.int64)
        for i, p in enumerate(parsed):
            if p.valid:
                actions[i] = p.action
            elif self.args.invalid_action == "random":
                actions[i] = self._np_rng.integers(self.action_space.n)
            else:
                actions[i] = self.args.invalid_action_index
        return actions + int(self.action_space.start), valid

    def collect_rollout(self) -> RolloutBatch:
        """``num_steps`` batched env steps of all envs: generate → parse → env.step, recorded in a `RolloutBatch`."""
        args = self.args
        batch = RolloutBatch(args.num_steps, args.num_envs)
        for t in range(args.num_steps):
            out = self.act(self._obs, self._infos)
            actions, valid = self._env_actions(out.parsed)
            obs, rewards, terminated, truncated, infos = self.envs.step(actions)
            self.env_steps += args.num_envs * self.accelerator.num_processes
            infos_list = unbatch_infos(infos, args.num_envs)
            final_infos = [info.get("final_info", {}) for info in infos_list]
            self.episode_stats.step(rewards, terminated, truncated, final_infos)

            batch.prompts += out.prompts
            batch.completions += out.completions
            batch.action_token_starts += out.action_token_starts
            batch.texts += out.texts
            batch.logprobs[t], batch.values[t], batch.kl[t] = out.logprobs, out.values, out.kl
            batch.env_rewards[t] = torch.as_tensor(rewards, dtype=torch.float32)
            batch.valid[t] = torch.as_tensor(valid)
            batch.terminated[t] = torch.as_tensor(terminated)
            batch.truncated[t] = torch.as_tensor(truncated)
            batch.completion_lengths[t] = torch.tensor([len(c) for c in out.completions])
            needs_bootstrap = np.flatnonzero(truncated & ~terminated)
            if len(needs_bootstrap):
                batch.final_values[t, needs_bootstrap] = self.value_of(
                    [infos_list[i]["final_obs"] for i in needs_bootstrap], [final_infos[i] for i in needs_bootstrap]
                )
            self._obs, self._infos = obs, infos_list
        batch.next_value = self.value_of(self._obs, self._infos)
        penalty = torch.where(batch.valid, 0.0, args.invalid_action_penalty)
        batch.rewards = batch.env_rewards + penalty - args.kl_coef * batch.kl
        return batch

    # ------------------------------------------------------------------ update
    def compute_advantages(self, batch: RolloutBatch) -> None:
        advantages, returns = compute_gae(
            batch.rewards,
            batch.values,
            batch.terminated,
            batch.truncated,
            batch.final_values,
            batch.next_value,
            self.args.gamma,
            self.args.lam,
        )
        batch.returns = returns
        if self.args.whiten_advantages:
            # Global statistics: every process whitens with the mean/std of all processes' advantages.
            all_advantages = self.accelerator.gather(advantages.to(self.accelerator.device)).cpu()
            mean, std = all_advantages.mean(), all_advantages.std(unbiased=False)
            advantages = (advantages - mean) / (std + 1e-8)
        batch.advantages = advantages

    def ppo_update(self, batch: RolloutBatch) -> dict[str, float]:
        """``num_ppo_epochs`` over shuffled minibatches; one optimizer step per minibatch of micro-batches."""
        args = self.args
        model = self.model_wrapped
        model.train()
        device = self.accelerator.device
        stats: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "approx_kl", "clipfrac", "vf_clipfrac", "entropy", "ratio")}
        grad_norms = []
        generator = torch.Generator().manual_seed(args.seed + self.state.global_step)
        for _ in range(args.num_ppo_epochs):
            permutation = torch.randperm(len(batch), generator=generator)
            for mb_start in range(0, len(batch), args.mini_batch_size):
                mb_indices = permutation[mb_start : mb_start + args.mini_batch_size]
                micro_batches = mb_indices.split(args.per_device_train_batch_size)
                for k, micro in enumerate(micro_batches):
                    mb = batch.minibatch(micro, self.pad_token_id)
                    is_last = k == len(micro_batches) - 1
                    sync = contextlib.nullcontext() if is_last else self.accelerator.no_sync(model)
                    with sync:
                        loss, step_stats = self._micro_batch_loss(model, mb, device)
                        self.accelerator.backward(loss / len(micro_batches))
                    for key, value in step_stats.items():
                        stats[key].append(value)
                grad_norm = self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                grad_norms.append(float(grad_norm))
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        model.eval()
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        return {
            "losses/policy_loss": mean(stats["pg"]),
            "losses/value_loss": mean(stats["vf"]),
            "losses/approx_kl": mean(stats["approx_kl"]),
            "losses/clipfrac": mean(stats["clipfrac"]),
            "losses/value_clipfrac": mean(stats["vf_clipfrac"]),
            "losses/entropy": mean(stats["entropy"]),
            "losses/ratio": mean(stats["ratio"]),
            "losses/grad_norm": mean(grad_norms),
        }

    def _micro_batch_loss(self, model, mb: dict, device) -> tuple[torch.Tensor, dict[str, float]]:
        prompt_inputs = self._to_device(mb["prompt_inputs"])
        completion_ids = mb["completion_ids"].to(device)
        completion_mask = mb["completion_mask"].to(device)
        per_token_logprobs, entropy, values = model(
            prompt_inputs, completion_ids, completion_mask, self.args.temperature, compute_entropy=True
        )
        weights = token_weights(completion_mask, mb["action_token_starts"], self.args.cot_logprob_coef)
        new_logprobs = weighted_logprob(per_token_logprobs, weights)
        pg_loss, pg_stats = policy_loss(
            new_logprobs, mb["old_logprobs"].to(device), mb["advantages"].to(device), self.args.cliprange
        )
        vf_loss, vf_stats = value_loss(
            values, mb["old_values"].to(device), mb["returns"].to(device), self.args.cliprange_value
        )
        loss = pg_loss + self.args.vf_coef * vf_loss
        token_entropy = (entropy * completion_mask).sum() / completion_mask.sum().clamp(min=1)
        return loss, {
            "pg": pg_loss.item(),
            "vf": vf_loss.item(),
            "approx_kl": pg_stats["approx_kl"].item(),
            "clipfrac": pg_stats["clipfrac"].item(),
            "vf_clipfrac": vf_stats["clipfrac"].item(),
            "entropy": token_entropy.item(),
            "ratio": pg_stats["ratio"].item(),
        }

    # ------------------------------------------------------------------ train
    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        """Run PPO: for each update, 1. collect a rollout, 2. compute advantages, 3. PPO epochs, 4. log and save."""
        args = self.args
        opt_steps = args.num_updates * args.optimizer_steps_per_update
        self.create_optimizer_and_scheduler(num_training_steps=opt_steps)
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.state.max_steps = args.num_updates
        self.state.logging_steps, self.state.save_steps = args.logging_steps, args.save_steps
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)

        obs, infos = self.envs.reset(seed=self.env_seed)
        self._obs, self._infos = obs, unbatch_infos(infos, args.num_envs)
        start_time = time.time()
        for update in range(args.num_updates):
            update_start, steps_before = time.time(), self.env_steps
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)

            # 1. Collect: num_steps batched env steps with the current policy.
            batch = self.collect_rollout()
            # 2. Advantages: GAE with truncation bootstrap, whitened over all processes.
            self.compute_advantages(batch)
            # 3. PPO epochs over shuffled minibatches.
            update_stats = self.ppo_update(batch)
            # 4. Log and save.
            self.state.global_step += 1
            self.state.epoch = self.env_steps / args.total_env_steps
            metrics = self._rollout_metrics(batch) | update_stats
            metrics["perf/env_steps_per_sec"] = (self.env_steps - steps_before) / (time.time() - update_start)
            metrics["env/total_steps"] = self.env_steps
            metrics["train/learning_rate"] = self.lr_scheduler.get_last_lr()[0]
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_log or update == 0:
                self.log(metrics, start_time)
            if self.control.should_save:
                self._save_checkpoint(self.model, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
            if self.control.should_training_stop:
                break
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return self.state

    def _rollout_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        finished = gather_object(self.episode_stats.pop())
        valid = self.accelerator.gather(batch.valid.float().to(self.accelerator.device)).mean()
        values = self.accelerator.gather(batch.values.to(self.accelerator.device)).cpu()
        returns = self.accelerator.gather(batch.returns.to(self.accelerator.device)).cpu()
        kl = self.accelerator.gather(batch.kl.to(self.accelerator.device)).mean()
        lengths = self.accelerator.gather(batch.completion_lengths.float().to(self.accelerator.device)).mean()
        nan = float("nan")
        return {
            "env/episode_return": float(np.mean([f[0] for f in finished])) if finished else nan,
            "env/episode_length": float(np.mean([f[1] for f in finished])) if finished else nan,
            "env/success_rate": float(np.mean([f[2] for f in finished])) if finished else nan,
            "env/episodes": len(finished),
            "env/invalid_action_rate": float(1 - valid),
            "env/step_reward": float(batch.env_rewards.mean()),
            "objective/kl": float(kl),
            "values/mean": float(values.mean()),
            "values/explained_variance": explained_variance(values.flatten(), returns.flatten()),
            "generation/completion_length": float(lengths),
            "generation/parse_errors": self.parse_errors,
        }

    # ------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Policy (adapter or full weights), value head (safetensors), processor and trainer settings."""
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        unwrapped = self.accelerator.unwrap_model(self.model)
        unwrapped.policy.save_pretrained(output_dir, safe_serialization=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in unwrapped.value_head.state_dict().items()},
            os.path.join(output_dir, VALUE_HEAD_WEIGHTS),
            metadata={"config": json.dumps(unwrapped.value_head.config)},
        )
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        with open(os.path.join(output_dir, "vlm_env_ppo.json"), "w") as f:
            json.dump(
                {"env_id": self.env_id, "base_model": self.base_model_name, "action_only": self.args.action_only},
                f,
                indent=2,
            )
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))


def load_value_head(path: str) -> ValueHead:
    """Load a value head saved by `VLMPPOTrainer.save_model`."""
    from safetensors import safe_open

    file = os.path.join(path, VALUE_HEAD_WEIGHTS)
    with safe_open(file, "pt") as f:
        config = json.loads(f.metadata()["config"])
    head = ValueHead(config["hidden_size"], config["hidden_sizes"])
    head.load_state_dict(load_file(file))
    return head


def _as_list(value) -> list[int]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _mask_after_eos(completion_ids: torch.Tensor, eos_token_id, tokenizer) -> torch.Tensor:
    """``(batch, C)`` mask: 1 up to and including the first EOS, 0 after it."""
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    eos_ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
    is_eos = torch.isin(completion_ids, eos_ids.to(completion_ids.device))
    # position of the first EOS (or C if none); tokens at positions <= it are kept
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], is_eos.shape[1], dtype=torch.long))
    positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
    return (positions.unsqueeze(0) <= first_eos.unsqueeze(1)).long()
