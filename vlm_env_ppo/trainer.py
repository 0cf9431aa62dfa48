"""`VLMPPOTrainer`: PPO with a value head for a vision-language model acting in a gymnasium environment.

Here: setup (policy, processor, PEFT, value head, envs, reference policy, input checks), the user hooks
(`build_messages`, `parse_action`, `build_model_inputs`), `train` in numbered phases, the PPO update, and evaluation.
The trainer's other parts are mixed in from their own modules, along the data path: `ActingMixin` (acting.py: act,
score, collect a rollout), `AdvantageMixin` (groups.py: GAE or the critic-free group estimators, and their group
rollouts), `FaultHandlingMixin` (faults.py) and `CheckpointingMixin` (checkpointing.py: save, checkpoint, resume,
push, model card).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time

import numpy as np
import torch
from accelerate.utils import DistributedType, gather_object
from accelerate.utils import set_seed as accelerate_set_seed
from accelerate.utils.memory import clear_device_cache
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoProcessor, PreTrainedModel, TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ._trl import BaseTrainer
from .acting import ActingMixin, StepOutput  # noqa: F401  (StepOutput: re-exported)
from .actions import ParsedAction
from .buffer import RolloutBatch
from .checkpointing import (  # noqa: F401  (re-exported: they lived here)
    OLD_CHECKPOINT,
    RUN_STATE,
    TMP_CHECKPOINT,
    TRAINER_STATE_NAME,
    CheckpointingMixin,
    rng_states,
    set_rng_states,
    write_model_card,
)
from .config import VLMPPOConfig
from .distributed import LockStepActor
from .evaluation import EvalResult, evaluate_episodes, random_legal_action  # noqa: F401
from .envs.adapter import HistoryWrapper, is_image_space
from .faults import FaultHandlingMixin, NumericFaultError, nonfinite_samples  # noqa: F401  (re-exported)
from .groups import AdvantageMixin
from .logprobs import token_weights, weighted_logprob
from .losses import importance_weights, policy_loss, value_loss
from .models.loading import (
    disable_bnb_cpu_repacking,
    disable_dropout,
    freeze_vision_tower,
    generation_suppress_token_ids,
    get_tokenizer,
    load_policy,
    load_processor,
    load_reference_model,
    vision_modules,
)
from .models.value_head import VALUE_HEAD_WEIGHTS, ValueHead, text_hidden_size
from .policy import (  # noqa: F401  (fill_image_placeholders, generate_completions: re-exported)
    PolicyAndValue,
    build_model_inputs,
    eos_token_ids,
    fill_image_placeholders,
    generate_completions,
)
from .rollout import EnvFaultError, EnvSpec, EpisodeStats, make_vector_env, unbatch_infos
from .saved_agent import (  # noqa: F401  (load_policy_weights: re-exported)
    AGENT_CONFIG,
    load_agent_policy,
    load_policy_weights,
    load_value_head,
    read_agent_config,
)
from .tasks import Task, get_task  # noqa: F401  (get_task: re-exported)
from .user_code import TrainerHooksTask, overridden_hooks, resolve_task

# The trainer's logger; the mixins (acting, faults, checkpointing) log through it too, by its name.
logger = logging.getLogger(__name__)


class VLMPPOTrainer(ActingMixin, AdvantageMixin, FaultHandlingMixin, CheckpointingMixin, BaseTrainer):
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
        self._hooks = overridden_hooks(type(self))  # the hooks this subclass overrides (the README's own-env way)
        self.task = resolve_task(env, task, self._hooks)

        # Policy, processor, PEFT, value head. A saved agent folder continues training (adapter + value head).
        saved_agent = isinstance(model, str) and os.path.isfile(os.path.join(model, AGENT_CONFIG))
        if saved_agent:
            agent_config = read_agent_config(model)
            policy = load_agent_policy(model, agent_config, is_trainable=True, **(args.model_init_kwargs or {}))
            if processing_class is None:
                processing_class = AutoProcessor.from_pretrained(model, trust_remote_code=args.trust_remote_code)
            self.base_model_name = agent_config.get("base_model")
        else:
            # safetensors only (issue 7): unpickling downloaded weights can run code. Opt out in model_init_kwargs.
            init_kwargs = {"use_safetensors": True, **(args.model_init_kwargs or {})}
            policy = load_policy(model, init_kwargs, args.trust_remote_code, args.allow_text_only_model)
            self.base_model_name = getattr(policy.config, "_name_or_path", None)
        if processing_class is None:
            processing_class = load_processor(policy, args.trust_remote_code)
        # Environments (each process runs its own, with distinct seeds) and input checks, before any compute is
        # spent on PEFT, devices or a reference model (docs/errors.md lists every error).
        wrap = None
        if args.history_length:
            if isinstance(env, VectorEnv):
                raise ValueError(
                    "`history_length` > 0 wraps each env in a HistoryWrapper: pass the env as an id or a factory, or "
                    "wrap your envs in `vlm_env_ppo.envs.adapter.HistoryWrapper` yourself and leave history_length 0."
                )
            names = self.task.action_names if self.task is not None else None
            wrap = functools.partial(HistoryWrapper, length=args.history_length, action_names=names)
        self.envs = make_vector_env(env, args.num_envs, args.env_kwargs, args.max_consecutive_env_errors, wrap=wrap)
        try:
            self._validate_inputs(args, policy, processing_class)
        except Exception:
            self.envs.close()
            raise
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
            if hasattr(policy, "activation_checkpointing_enable"):  # transformers >= 5.24 renamed it
                policy.activation_checkpointing_enable({"use_reentrant": False})
            else:
                policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.is_peft = isinstance(policy, PeftModel)
        disable_dropout(policy)  # dropout, attention dropout included, would make rollout and update log-probs differ
        if args.advantage_estimator != "gae":  # critic-free: no value head, no value forward, no value loss
            value_head = None
        elif saved_agent and os.path.isfile(os.path.join(model, VALUE_HEAD_WEIGHTS)):
            value_head = load_value_head(model)
        else:
            value_head = ValueHead(text_hidden_size(policy.config), args.value_head_hidden_sizes)
        self.eos_token_ids = eos_token_ids(policy, tokenizer)
        self.suppress_token_ids = generation_suppress_token_ids(
            processing_class, policy.config, keep_ids=self.eos_token_ids
        )
        wrapper = PolicyAndValue(policy, value_head, self.suppress_token_ids)
        self._default_parser = "parse_action" not in self._hooks
        # What the saved agent records as its task (`vlm_env_ppo.user_code`): the task, or these hooks around it.
        self.agent_task = TrainerHooksTask.from_trainer(self) if self._hooks else self.task
        self.constraint = self._grammar_constraint(args, tokenizer, policy)  # None unless constrained_decoding

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
        self.value_head = value_head.to(self.accelerator.device) if value_head is not None else None

        # Reference policy (only for the KL penalty)
        self.ref_model = None
        if args.kl_coef > 0 and not self.is_peft:
            if ref_model is None:
                if not self.base_model_name:
                    raise ValueError("kl_coef > 0 needs a reference: pass `ref_model=` or a `peft_config`.")
                ref_model = load_reference_model(
                    self.base_model_name, args.ref_model_quantization, policy.dtype, args.trust_remote_code,
                    use_safetensors=(args.model_init_kwargs or {}).get("use_safetensors", True),
                )
            self.ref_model = ref_model.eval().requires_grad_(False)
            if not (getattr(ref_model, "is_loaded_in_4bit", False) or getattr(ref_model, "is_loaded_in_8bit", False)):
                self.ref_model.to(self.accelerator.device)

        self.env_seed = args.seed + self.accelerator.process_index * args.num_envs
        self._np_rng = np.random.default_rng(self.env_seed)
        self.episode_stats = EpisodeStats(args.num_envs)
        self.env_steps = 0
        self.parse_errors = 0
        # Fault counters (issue 7): cumulative over the run, saved in checkpoints.
        self.skipped_minibatches = 0
        self._env_errors_before = 0  # env errors of the run before a resume (the env wrappers count this process's)
        self._output_faults: dict[str, int] = {}  # per rollout: invalid outputs by reason, truncated completions
        self._nonfinite_samples = 0  # per rollout
        self._agent_files: list[str] = []  # what `save_model` wrote into the last checkpoint (the periodic push's)
        self._last_checkpoint: str | None = None  # the last checkpoint this trainer wrote
        # rollout_backend="vllm": the engine that generates (`vlm_env_ppo.vllm_engine`); None: the policy's generate
        self.rollout_engine = self._start_rollout_engine(policy) if args.rollout_backend == "vllm" else None

    def _validate_inputs(self, args: VLMPPOConfig, policy, processing_class) -> None:
        """Errors in the model/processor/env/task combination, raised before any compute (docs/errors.md)."""
        action_space = self.envs.single_action_space
        self.action_space = action_space
        if isinstance(action_space, spaces.Text):
            if self.task is None:
                raise ValueError(
                    "An env with text actions needs `task=` with `admissible_actions` (e.g. `lambda info: "
                    "info['admissible_commands']`) or a fixed `action_names`: the trainer turns parsed actions into "
                    "commands with `Task.to_env_action`."
                )
            if args.invalid_action == "fixed":
                raise ValueError(
                    "`invalid_action='fixed'` plays a Discrete action index; an env with text actions has none. Use "
                    "`invalid_action='random'` (a random admissible command)."
                )
        elif not isinstance(action_space, spaces.Discrete):
            raise TypeError(
                f"Only Discrete and Text action spaces are supported, got {action_space}. Wrap the env so that its "
                "actions are one of those (e.g. a `gymnasium.ActionWrapper` from indices to your actions)."
            )
        elif self.task is not None and self.task.action_names is None:
            raise ValueError(
                f"The env has Discrete actions but the task has no `action_names`: name the {action_space.n} actions "
                "in index order (`admissible_actions` can still restrict them per step)."
            )
        elif self.task is not None and len(self.task.action_names) != action_space.n:
            raise ValueError(
                f"The task has {len(self.task.action_names)} action names but the env has {action_space.n} actions: "
                "pass the `task=` that matches the env (or override `parse_action`)."
            )
        if args.invalid_action == "fixed" and args.invalid_action_index >= action_space.n:
            raise ValueError(
                f"`invalid_action_index` ({args.invalid_action_index}) is not an action of the env (it has "
                f"{action_space.n}); use an index in [0, {action_space.n - 1}]."
            )
        has_vision = getattr(policy.config, "vision_config", None) is not None or bool(vision_modules(policy))
        if not has_vision and is_image_space(self.envs.single_observation_space) and not args.allow_text_only_model:
            raise ValueError(
                f"The model ({type(policy).__name__}) has no vision tower but the env's observations are images "
                f"{self.envs.single_observation_space}: it would never see them. Pass a vision-language model, or set "
                "`allow_text_only_model=True` if your `build_messages` puts the observation into the text."
            )
        overrides_inputs = type(self).build_model_inputs is not VLMPPOTrainer.build_model_inputs
        template = getattr(processing_class, "chat_template", None) or getattr(
            get_tokenizer(processing_class), "chat_template", None
        )
        if not template and not overrides_inputs:
            raise ValueError(
                f"The processor ({type(processing_class).__name__}) has no chat template, so prompts cannot be built. "
                "Set `processor.chat_template` (a Jinja template that renders the image and text content), or "
                "override `VLMPPOTrainer.build_model_inputs`."
            )

    # ------------------------------------------------------------------ hooks
    def build_messages(self, observation, info: dict) -> list[dict]:
        """Chat messages (with the image) for one env's observation. Override for your own env. TRL-style
        ``{"type": "image"}`` parts without an image are filled with the step's frames (`fill_image_placeholders`)."""
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

    # ------------------------------------------------------------------ acting, rollouts: `ActingMixin` (acting.py)

    # ------------------------------------------------------------------ update
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
                mb_stats, finite = [], True
                for k, micro in enumerate(micro_batches):
                    mb = batch.minibatch(micro, self.pad_token_id)
                    is_last = k == len(micro_batches) - 1
                    with self._accumulation_context(model, sync=is_last):
                        loss, step_stats = self._micro_batch_loss(model, mb, device)
                        # Backward even when non-finite, so every process joins the same gradient all-reduces.
                        self._backward(loss / len(micro_batches))
                    rollout_stats = ("old_logprobs", "old_values", "advantages", "returns")
                    finite = finite and bool(torch.isfinite(loss)) and all(
                        bool(torch.isfinite(mb[key]).all()) for key in rollout_stats
                    )
                    mb_stats.append(step_stats)
                grad_norm = self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                # (DeepSpeed returns no norm here: it clips, and steps, inside `backward`.)
                finite = finite and (grad_norm is None or bool(torch.isfinite(torch.as_tensor(grad_norm))))
                if self._all_processes_finite(finite):
                    for step_stats in mb_stats:
                        for key, value in step_stats.items():
                            stats[key].append(value)
                    if grad_norm is not None:
                        grad_norms.append(float(grad_norm))
                    self.optimizer.step()
                else:
                    self._skip_minibatch()
                self.lr_scheduler.step()  # the schedule follows progress, stepped or skipped
                self.optimizer.zero_grad(set_to_none=True)
        model.eval()
        self._free_device_memory()
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
            "train/skipped_minibatches": self.skipped_minibatches,
        }

    def _accumulation_context(self, model, sync: bool):
        """Gradient accumulation over the micro-batches of one minibatch, the way `Trainer` does it: DDP/FSDP skip the
        gradient all-reduce until the last micro-batch (``no_sync``); DeepSpeed is told where the accumulation boundary
        is and reduces, clips and steps there itself, inside `backward` (its ``no_sync`` does not exist for ZeRO-2/3)."""
        self.accelerator.gradient_state._set_sync_gradients(sync)
        if sync or self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def _backward(self, loss: torch.Tensor) -> None:
        # The loss is already divided by the number of micro-batches; DeepSpeed would divide it again by its
        # `gradient_accumulation_steps` (the same fix as transformers#35808 in `Trainer.training_step`).
        kwargs = {"scale_wrt_gas": False} if self.accelerator.distributed_type == DistributedType.DEEPSPEED else {}
        self.accelerator.backward(loss, **kwargs)

    def _free_device_memory(self) -> None:
        """Between phases (rollout → update → rollout) hand the allocator's cached blocks back: generation's KV caches
        and the update's activations have different shapes, and without this the two phases fragment the cache.
        A no-op on the CPU."""
        if self.accelerator.device.type != "cpu":
            clear_device_cache()

    def _micro_batch_loss(self, model, mb: dict, device) -> tuple[torch.Tensor, dict[str, float]]:
        prompt_inputs = self._to_device(mb["prompt_inputs"])
        completion_ids = mb["completion_ids"].to(device)
        completion_mask = mb["completion_mask"].to(device)
        allowed = None if self.constraint is None else self.constraint.replay(mb["grammars"], completion_ids, completion_mask)
        per_token_logprobs, entropy, values = model(
            prompt_inputs, completion_ids, completion_mask, self.args.temperature, compute_entropy=True,
            allowed_tokens=allowed,
        )
        weights = token_weights(completion_mask, mb["action_token_starts"], self.args.cot_logprob_coef)
        new_logprobs = weighted_logprob(per_token_logprobs, weights)
        old_logprobs = mb["old_logprobs"].to(device)
        # rollout_backend="vllm": the engine sampled; correct for its distance from the scored distribution
        is_weights = None
        if self.rollout_engine is not None and self.args.vllm_importance_sampling_cap is not None:
            is_weights = importance_weights(
                old_logprobs, mb["sampler_logprobs"].to(device), self.args.vllm_importance_sampling_cap
            )
        pg_loss, pg_stats = policy_loss(
            new_logprobs, old_logprobs, mb["advantages"].to(device), self.args.cliprange, sample_weights=is_weights
        )
        vf_loss, vf_stats = value_loss(  # NaN without a value head (critic-free estimators): not in the loss
            values, mb["old_values"].to(device), mb["returns"].to(device), self.args.cliprange_value
        )
        loss = pg_loss + self.args.vf_coef * vf_loss if values is not None else pg_loss
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
        if args.should_save:
            self._clean_up_interrupted_saves()
        self.accelerator.wait_for_everyone()  # before any process looks for the last checkpoint
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in {args.output_dir} to resume from.")
        opt_steps = args.num_updates * args.optimizer_steps_per_update
        self.create_optimizer_and_scheduler(num_training_steps=opt_steps)
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.is_deepspeed_enabled:
            self.deepspeed = self.model_wrapped  # what Trainer's `save_model` and checkpoints save through
        if self.accelerator.num_processes > 1:
            # Identical weights came from one seed; sampling must not be identical too, or processes that see the same
            # frame write the same completion (TRL's GRPOTrainer seeds per process likewise). Resuming restores these.
            accelerate_set_seed(args.seed, device_specific=True)  # seed + process index
        if resume_from_checkpoint:
            self._resume(resume_from_checkpoint)
        self.push_rollout_weights()  # resumed, warm-started or changed by hand since the engine loaded them
        self.state.max_steps = args.num_updates
        self.state.logging_steps, self.state.save_steps = args.logging_steps, args.save_steps
        self.state.eval_steps = args.eval_steps
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)

        # A resumed run resets its envs on seeds no earlier update used.
        obs, infos = self.envs.reset(seed=self.env_seed + 7919 * self.state.global_step)
        self._obs, self._infos = obs, unbatch_infos(infos, args.num_envs)
        # The episodes in progress were cut by the reset: their returns and lengths must not leak into the next ones.
        self.episode_stats = EpisodeStats(args.num_envs, total_episodes=self.episode_stats.total_episodes)
        start_time = time.time()
        for update in range(self.state.global_step, args.num_updates):
            update_start, steps_before = time.time(), self.env_steps
            start = self._run_state(), rng_states(), self.lr_scheduler.last_epoch  # see `_stop_with_checkpoint`
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)

            try:
                # 1. Collect: num_steps batched env steps with the current policy.
                batch = self.collect_rollout()
                # 2. Advantages: GAE with truncation bootstrap, whitened over all processes.
                self.compute_advantages(batch)
            except (EnvFaultError, NumericFaultError) as err:
                self._stop_with_checkpoint(err, start, in_update=False)
            try:
                # 3. PPO epochs over shuffled minibatches.
                update_stats = self.ppo_update(batch)
            except (EnvFaultError, NumericFaultError) as err:
                self._stop_with_checkpoint(err, start, in_update=True)
            self.push_rollout_weights()
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
        The training envs and the global RNG states (python, numpy, torch, CUDA) are left as they were.

        With several processes each plays its share of the episodes (``k ≡ rank mod world size``) and the results
        are merged, so every process returns the same metrics for the same episodes as one process would (greedy).
        Under ZeRO-3 / FSDP every generation gathers weights, a collective: the processes act in lock-step
        (`LockStepActor`), those whose episodes are done acting on a placeholder until all are."""
        args = self.args
        self.push_rollout_weights()  # (no-op unless rollout_backend="vllm") weights changed outside `train` count too
        num_episodes = num_episodes or args.eval_episodes
        seed = args.eval_seed if seed is None else seed
        greedy = args.eval_greedy if greedy is None else greedy
        make_env = self.envs.env_fns[0] if hasattr(self.envs, "env_fns") else None
        if make_env is None:
            raise ValueError("evaluate() needs an env factory: pass the env as an id or a factory, not a VectorEnv.")
        share = lockstep = None
        if self.accelerator.num_processes > 1:
            share = range(self.accelerator.process_index, num_episodes, self.accelerator.num_processes)
        act_batch = lambda obs, infos: self.act(obs, infos, greedy=greedy, score=False).parsed  # noqa: E731
        if share is not None and self._sharded_weights():
            act_batch = lockstep = LockStepActor(act_batch, self.accelerator, make_env, seed)
        # `evaluate_episodes` seeds every global RNG (`set_seed(seed)`): without the restore, every rollout after a
        # periodic evaluation would replay the same random streams.
        rng = rng_states()
        try:
            with self._grammar_counts_apart() as grammar_counts:  # evaluation's completions are not training's
                result = evaluate_episodes(
                    act_batch,
                    make_env,
                    num_episodes,
                    seed,
                    batch_size=args.num_envs,
                    task=self.task,
                    episode_indices=share,
                )
                if lockstep is not None:
                    lockstep.finish()
        finally:
            set_rng_states(rng)
        if share is not None:
            result = EvalResult.from_episodes([e for part in gather_object([result.episodes]) for e in part])
        metrics = result.metrics(metric_key_prefix)
        if grammar_counts is not None:  # shared episodes: summed; otherwise every process played them all
            metrics |= self._grammar_metrics(metric_key_prefix, grammar_counts, gather=share is not None)
        # The model card, `vlm_env_ppo.json` and the CLI read the last evaluation under the "eval/" keys, whatever
        # prefix this call logged it under.
        # When, and how, it was taken: a later summary or model card must not present it as the trained agent's.
        self.last_eval = result.metrics("eval") | {
            "eval/update": self.state.global_step, "eval/env_steps": self.env_steps, "eval/greedy": bool(greedy)
        }
        self.log(metrics)
        return metrics

    # ------------------------------------------------------------------ saving: `CheckpointingMixin` (checkpointing.py)
    # ------------------------------------------------------------------ faults: `FaultHandlingMixin` (faults.py)
