"""`VLMPPOTrainer`: PPO with a value head for a vision-language model acting in a gymnasium environment."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import gather_object
from gymnasium import spaces
from peft import (
    PeftConfig,
    PeftModel,
    get_peft_model,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, TrainerCallback, TrainerState, set_seed
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    get_last_checkpoint,
    load_sharded_checkpoint,
    rotate_checkpoints,
)
from trl.trainer.utils import generate_model_card

from . import __version__
from ._trl import BaseTrainer
from .actions import ParsedAction
from .advantages import compute_gae, kl_penalty
from .agent import (
    AGENT_CONFIG,
    build_model_inputs,
    eos_token_ids,
    evaluate_episodes,
    generate_completions,
    load_agent_policy,
    load_value_head,
    read_agent_config,
)
from .buffer import RolloutBatch, split_inputs
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
from .models.value_head import (
    VALUE_HEAD_WEIGHTS,
    ValueHead,
    policy_forward,
    text_hidden_size,
)
from .rollout import EnvSpec, EpisodeStats, make_vector_env, unbatch_infos
from .tasks import Task, get_task

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
RUN_STATE = "vlm_env_ppo_state.json"


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
    logprobs: torch.Tensor | None = None  # (num_envs,) λ-weighted
    values: torch.Tensor | None = None  # (num_envs,)
    kl: torch.Tensor | None = None  # (num_envs,) summed per-token KL to the reference (0 without one)


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

        # Policy, processor, PEFT, value head. A saved agent folder continues training (adapter + value head).
        saved_agent = isinstance(model, str) and os.path.isfile(os.path.join(model, AGENT_CONFIG))
        if saved_agent:
            agent_config = read_agent_config(model)
            policy = load_agent_policy(model, agent_config, is_trainable=True, **(args.model_init_kwargs or {}))
            if processing_class is None:
                processing_class = AutoProcessor.from_pretrained(model, trust_remote_code=args.trust_remote_code)
            self.base_model_name = agent_config.get("base_model")
        else:
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
        if saved_agent and os.path.isfile(os.path.join(model, VALUE_HEAD_WEIGHTS)):
            value_head = load_value_head(model)
        else:
            value_head = ValueHead(text_hidden_size(policy.config), args.value_head_hidden_sizes)
        wrapper = PolicyAndValue(policy, value_head)

        super().__init__(
            model=wrapper,
            args=args,
            # Evaluation plays episodes in the env (see `evaluate`); this placeholder only satisfies Trainer's check
            # that periodic evaluation has something to evaluate on.
            eval_dataset=[] if args.eval_strategy != "no" else None,
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
            processing_class, policy.config, keep_ids=eos_token_ids(policy, tokenizer)
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
        """Batch of chat conversations → left-padded processor outputs (CPU tensors)."""
        return build_model_inputs(self.processing_class, messages)

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
    def act(self, observations, infos: list[dict], greedy: bool = False, score: bool = True) -> StepOutput:
        """Generate for all envs at once (one `generate` call), parse, and (``score``) compute the λ-weighted
        log-probs, values and KL that PPO needs."""
        n = len(infos)
        inputs = self.build_model_inputs([self.build_messages(observations[i], infos[i]) for i in range(n)])
        device_inputs = self._to_device(inputs)
        policy = self.accelerator.unwrap_model(self.model).policy
        policy.eval()
        completion_ids, completion_mask, texts = generate_completions(
            policy,
            self.processing_class,
            device_inputs,
            greedy=greedy,
            temperature=self.args.temperature,
            top_p=self.args.top_p,
            max_new_tokens=self.args.max_new_tokens,
            suppress_token_ids=self.suppress_token_ids,
            pad_token_id=self.pad_token_id,
        )
        parsed = [self._safe_parse(texts[i], infos[i]) for i in range(n)]
        out = StepOutput(prompts=[], completions=[], texts=texts, parsed=parsed, action_token_starts=[])
        if not score:
            return out
        tokenizer = get_tokenizer(self.processing_class)
        out.completions = [completion_ids[i, : int(completion_mask[i].sum())].cpu() for i in range(n)]
        out.action_token_starts = [
            action_token_index(tokenizer, out.completions[i].tolist(), parsed[i].action_start) for i in range(n)
        ]
        per_token_logprobs, _, values = self.model(device_inputs, completion_ids, completion_mask, self.args.temperature)
        weights = token_weights(completion_mask, out.action_token_starts, self.args.cot_logprob_coef)
        out.logprobs = weighted_logprob(per_token_logprobs, weights).float().cpu()
        out.values = values.float().cpu()
        if self.args.kl_coef > 0:
            ref_logprobs = self._ref_logprobs(device_inputs, completion_ids, completion_mask)
            kl = kl_penalty(per_token_logprobs, ref_logprobs, self.args.kl_estimator) * completion_mask
            out.kl = kl.sum(-1).float().cpu()
        else:
            out.kl = torch.zeros(n)
        out.prompts = split_inputs(inputs, n)
        return out

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
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")
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
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Run PPO: for each update, 1. collect a rollout, 2. compute advantages, 3. PPO epochs, 4. log, evaluate,
        save.

        ``resume_from_checkpoint`` (a checkpoint folder, or True for the last one in ``output_dir``) restores the
        policy, value head, optimizer, scheduler, RNG states, update and env-step counters and episode statistics.
        The rollout that was in progress when the checkpoint was written is not in it: the resumed run starts a
        fresh rollout (envs reset on new seeds), so it reaches the same total env steps but not bit-identical ones.
        """
        args = self.args
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in {args.output_dir} to resume from.")
        opt_steps = args.num_updates * args.optimizer_steps_per_update
        self.create_optimizer_and_scheduler(num_training_steps=opt_steps)
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if resume_from_checkpoint:
            self._resume(resume_from_checkpoint)
        self.state.max_steps = args.num_updates
        self.state.logging_steps, self.state.save_steps = args.logging_steps, args.save_steps
        self.state.eval_steps = args.eval_steps
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)

        # A resumed run resets its envs on seeds no earlier update used.
        obs, infos = self.envs.reset(seed=self.env_seed + 7919 * self.state.global_step)
        self._obs, self._infos = obs, unbatch_infos(infos, args.num_envs)
        start_time = time.time()
        for update in range(self.state.global_step, args.num_updates):
            update_start, steps_before = time.time(), self.env_steps
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)

            # 1. Collect: num_steps batched env steps with the current policy.
            batch = self.collect_rollout()
            # 2. Advantages: GAE with truncation bootstrap, whitened over all processes.
            self.compute_advantages(batch)
            # 3. PPO epochs over shuffled minibatches.
            update_stats = self.ppo_update(batch)
            # 4. Log, evaluate, save.
            self.state.global_step += 1
            self.state.epoch = self.env_steps / args.total_env_steps
            metrics = self._rollout_metrics(batch) | update_stats
            metrics["perf/env_steps_per_sec"] = (self.env_steps - steps_before) / (time.time() - update_start)
            metrics["env/total_steps"] = self.env_steps
            metrics["train/learning_rate"] = self.lr_scheduler.get_last_lr()[0]
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_log or update in (0, args.num_updates - 1):
                self.log(metrics, start_time)
            if self.control.should_evaluate:
                self.evaluate()
            if self.control.should_save:
                self._save_checkpoint(self.model, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
            if self.control.should_training_stop:
                break
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return self.state

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        eval_dataset=None,
        ignore_keys=None,
        metric_key_prefix: str = "eval",
        num_episodes: int | None = None,
        seed: int | None = None,
        greedy: bool | None = None,
    ) -> dict[str, float]:
        """Play ``num_episodes`` (default ``args.eval_episodes``) fresh episodes on seeds ``seed, seed + 1, ...``
        (default ``args.eval_seed``) with the current policy, greedy unless ``args.eval_greedy`` is False; logs and
        returns ``eval/success_rate``, ``eval/episode_return``, ``eval/episode_length``, ``eval/invalid_action_rate``.
        The training envs and their RNG are left untouched."""
        args = self.args
        num_episodes = num_episodes or args.eval_episodes
        seed = args.eval_seed if seed is None else seed
        greedy = args.eval_greedy if greedy is None else greedy
        make_env = self.envs.env_fns[0] if hasattr(self.envs, "env_fns") else None
        if make_env is None:
            raise ValueError("evaluate() needs an env factory: pass the env as an id or a factory, not a VectorEnv.")
        torch_state = torch.random.get_rng_state()
        result = evaluate_episodes(
            lambda obs, infos: self.act(obs, infos, greedy=greedy, score=False).parsed,
            make_env,
            num_episodes,
            seed,
            batch_size=args.num_envs,
        )
        torch.random.set_rng_state(torch_state)
        metrics = result.metrics(metric_key_prefix)
        self.last_eval = metrics
        self.log(metrics)
        return metrics

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
    def _agent_config(self) -> dict:
        return {
            "env_id": self.env_id,
            "base_model": self.base_model_name,
            "is_peft": self.is_peft,
            "action_only": self.args.action_only,
            "action_names": list(self.task.action_names) if self.task is not None else None,
            "temperature": self.args.temperature,
            "top_p": self.args.top_p,
            "max_new_tokens": self.args.max_new_tokens,
            "cot_logprob_coef": self.args.cot_logprob_coef,
            "env_steps": self.env_steps,
            "last_eval": getattr(self, "last_eval", None),
            "vlm_env_ppo_version": __version__,
        }

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """A complete agent folder: policy (adapter or full weights), value head (safetensors), processor,
        ``vlm_env_ppo.json`` and a model card. `VLMAgent.from_pretrained` and `VLMPPOTrainer(model=folder)` load it."""
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
        with open(os.path.join(output_dir, AGENT_CONFIG), "w") as f:
            json.dump(self._agent_config(), f, indent=2)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        write_model_card(self, output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        """Write ``checkpoint-N`` atomically: everything goes to a hidden temporary folder that is renamed into place
        only when complete, so a crash mid-save leaves the previous checkpoints untouched and loadable."""
        args = self.args
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, tmp = os.path.join(args.output_dir, name), os.path.join(args.output_dir, f".tmp-{name}")
        if args.should_save and os.path.isdir(tmp):
            shutil.rmtree(tmp)  # left over from a crash
        self.accelerator.wait_for_everyone()
        self.save_model(tmp, _internal_call=True)
        if not args.save_only_model:
            self._save_optimizer_and_scheduler(tmp)
            self._save_scaler(tmp)
            self._save_rng_state(tmp)
        if args.should_save:
            self.state.save_to_json(os.path.join(tmp, TRAINER_STATE_NAME))
            with open(os.path.join(tmp, RUN_STATE), "w") as f:
                json.dump(self._run_state(), f)
        self.accelerator.wait_for_everyone()
        if args.should_save:
            if os.path.isdir(final):  # re-saving the same step: move the old one aside first
                old = os.path.join(args.output_dir, f".old-{name}")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
            rotate_checkpoints(
                output_dir=args.output_dir,
                save_total_limit=args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()
        if args.push_to_hub:
            self._push_from_checkpoint(final)

    def _run_state(self) -> dict:
        """What a resumed run needs beyond Trainer's state: env-step and episode counters and the fallback RNG."""
        return {
            "env_steps": self.env_steps,
            "total_episodes": self.episode_stats.total_episodes,
            "parse_errors": self.parse_errors,
            "np_rng": self._np_rng.bit_generator.state,
            "process_index": self.accelerator.process_index,
        }

    def _resume(self, checkpoint: str) -> None:
        unwrapped = self.accelerator.unwrap_model(self.model)
        load_policy_weights(unwrapped.policy, checkpoint)
        unwrapped.value_head.load_state_dict(load_value_head(checkpoint).state_dict())
        self._load_optimizer_and_scheduler(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        self._load_rng_state(checkpoint)
        with open(os.path.join(checkpoint, RUN_STATE)) as f:
            run_state = json.load(f)
        self.env_steps = run_state["env_steps"]
        self.episode_stats.total_episodes = run_state["total_episodes"]
        self.parse_errors = run_state["parse_errors"]
        self._np_rng.bit_generator.state = run_state["np_rng"]
        logger.info("Resumed from %s at update %d, %d env steps.", checkpoint, self.state.global_step, self.env_steps)


    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """Used by `push_to_hub`: the agent's model card (env, base model, method, last evaluation)."""
        write_model_card(self, self.args.output_dir)


def load_policy_weights(policy, path: str) -> None:
    """Load a saved agent's policy weights (LoRA adapter or full, single-file or sharded) into ``policy``."""
    adapter = os.path.join(path, "adapter_model.safetensors")
    if isinstance(policy, PeftModel):
        if not os.path.isfile(adapter):
            raise FileNotFoundError(f"{path} has no adapter_model.safetensors to resume the LoRA policy from.")
        result = set_peft_model_state_dict(policy, load_file(adapter))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"Adapter in {path} does not match the policy: {result.unexpected_keys[:5]}")
        return
    # Full weights are saved in the checkpoint key layout of the model's family (transformers maps keys on save), so
    # load them the way a user would, on the CPU, and copy the tensors over.
    saved = AutoModelForImageTextToText.from_pretrained(path, dtype=policy.dtype, device_map="cpu")
    policy.load_state_dict(saved.state_dict(), strict=True)
    del saved


def write_model_card(trainer: VLMPPOTrainer, output_dir: str) -> None:
    """A TRL-style model card naming the env, the base model, the method and the last evaluation."""
    if not trainer.is_world_process_zero():
        return
    base = trainer.base_model_name if trainer.base_model_name and not os.path.isdir(trainer.base_model_name) else None
    card = generate_model_card(
        base_model=base,
        model_name=os.path.basename(os.path.abspath(output_dir)),
        hub_model_id=trainer.hub_model_id or "",
        dataset_name=None,
        tags=[*trainer._tag_names, "reinforcement-learning", trainer.env_id or "custom-env"],
        wandb_url=None,
        trackio_url=None,
        trainer_name=trainer._name,
        trainer_citation=trainer._paper["citation"],
        paper_title=trainer._paper["title"],
        paper_id=trainer._paper["id"],
    )
    last = getattr(trainer, "last_eval", None) or {}
    evaluation = (
        f"success rate {last['eval/success_rate']:.3f}, mean return {last['eval/episode_return']:.3f}, mean episode "
        f"length {last['eval/episode_length']:.2f}, invalid-action rate {last['eval/invalid_action_rate']:.3f} over "
        f"{last['eval/episodes']} episodes"
        if last
        else "not evaluated yet (run `trainer.evaluate()` before saving)"
    )
    section = (
        "\n## vlm-env-ppo agent\n\n"
        f"- Environment: `{trainer.env_id or 'custom'}`\n"
        f"- Base model: `{trainer.base_model_name}`\n"
        f"- Method: PPO with a value head on the VLM (RL4VLM), chain-of-thought weight "
        f"λ={trainer.args.cot_logprob_coef}, {'action-only' if trainer.args.action_only else 'CoT'} prompt, "
        f"{'LoRA adapter' if trainer.is_peft else 'full fine-tuning'}\n"
        f"- Env steps trained: {trainer.env_steps}\n"
        f"- Last evaluation: {evaluation}\n\n"
        "Load it with `vlm_env_ppo.agent.VLMAgent.from_pretrained(path_or_repo_id)`; continue training with "
        "`VLMPPOTrainer(model=path_or_repo_id, ...)`.\n"
    )
    card.text = card.text + section
    card.save(os.path.join(output_dir, "README.md"))
