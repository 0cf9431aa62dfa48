"""`VLMPPOTrainer`: PPO with a value head for a vision-language model acting in a gymnasium environment."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import DistributedType, gather_object
from accelerate.utils import set_seed as accelerate_set_seed
from accelerate.utils.memory import clear_device_cache
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from peft import (
    PeftConfig,
    PeftModel,
    get_peft_model,
    prepare_model_for_kbit_training,
)
from safetensors.torch import save_file
from transformers import AutoProcessor, PreTrainedModel, TrainerCallback, TrainerState, set_seed
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    HubStrategy,
    get_last_checkpoint,
    rotate_checkpoints,
)
from trl.trainer.utils import generate_model_card

from . import __version__
from ._trl import BaseTrainer
from .actions import ParsedAction
from .advantages import compute_gae, kl_penalty, normalize_advantages, spread_back_in_episodes
from .buffer import RolloutBatch, split_inputs
from .config import VLMPPOConfig
from .evaluation import EvalResult, evaluate_episodes, random_legal_action
from .envs.adapter import HistoryWrapper, is_image_space
from .logprobs import action_token_index, token_weights, weighted_logprob
from .losses import explained_variance, policy_loss, value_loss
from .models.loading import (
    disable_bnb_cpu_repacking,
    disable_dropout,
    freeze_vision_tower,
    generation_suppress_token_ids,
    get_tokenizer,
    image_token_ids,
    load_policy,
    load_processor,
    load_reference_model,
    vision_modules,
)
from .models.value_head import (
    VALUE_HEAD_WEIGHTS,
    ValueHead,
    policy_forward,
    text_hidden_size,
)
from .policy import PolicyAndValue, build_model_inputs, eos_token_ids, fill_image_placeholders, generate_completions
from .rollout import (
    EnvFaultError,
    EnvSpec,
    EpisodeStats,
    FaultTolerantEnv,
    make_vector_env,
    unbatch_infos,
)
from .saved_agent import AGENT_CONFIG, load_agent_policy, load_policy_weights, load_value_head, read_agent_config
from .tasks import Task, get_task

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
RUN_STATE = "vlm_env_ppo_state.json"
# Where `_save_checkpoint` writes before the rename into place. The leading "_" keeps them out of `push_to_hub`'s
# uploads (Trainer ignores "_*") and out of the "checkpoint-*" globs of rotation and `get_last_checkpoint`.
TMP_CHECKPOINT, OLD_CHECKPOINT = "_tmp-", "_old-"


def rng_states() -> dict:
    """The global RNG states: python, numpy, torch CPU and every CUDA device."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` returned."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


class NumericFaultError(RuntimeError):
    """More than `max_skipped_minibatches` minibatches had a non-finite loss, gradient or rollout statistic. The
    trainer writes a checkpoint first (skipped minibatches never changed the weights) and names it in the message and
    in ``checkpoint``."""

    checkpoint: str | None = None


def nonfinite_samples(batch: RolloutBatch) -> torch.Tensor:
    """``(num_steps, num_envs)`` mask of samples with a non-finite rollout log-prob, value or reward (KL included), or
    a non-finite bootstrap value (``final_values`` where truncated, ``next_value`` on the last step)."""
    bad = ~(torch.isfinite(batch.logprobs) & torch.isfinite(batch.values) & torch.isfinite(batch.rewards))
    bad |= batch.truncated & ~batch.terminated & ~torch.isfinite(batch.final_values)
    bad[-1] |= ~torch.isfinite(batch.next_value)
    return bad


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
        if saved_agent and os.path.isfile(os.path.join(model, VALUE_HEAD_WEIGHTS)):
            value_head = load_value_head(model)
        else:
            value_head = ValueHead(text_hidden_size(policy.config), args.value_head_hidden_sizes)
        self.eos_token_ids = eos_token_ids(policy, tokenizer)
        self.suppress_token_ids = generation_suppress_token_ids(
            processing_class, policy.config, keep_ids=self.eos_token_ids
        )
        wrapper = PolicyAndValue(policy, value_head, self.suppress_token_ids)

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

    @property
    def env_errors(self) -> int:
        """Env exceptions survived so far in this run (all envs of this process), including before a resume."""
        guarded = [e for e in getattr(self.envs, "envs", []) if isinstance(e, FaultTolerantEnv)]
        return self._env_errors_before + sum(e.errors for e in guarded)

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
        if parsed.valid and not (parsed.action is not None and 0 <= parsed.action < self._num_actions(info)):
            self.parse_errors += 1
            logger.warning("parse_action returned out-of-range action %r; treated as invalid.", parsed.action)
            return ParsedAction(None, False, parsed.action_start, "out_of_range")
        return parsed

    @torch.no_grad()
    def act(self, observations, infos: list[dict], greedy: bool = False, score: bool = True) -> StepOutput:
        """Generate for all envs at once (one `generate` call), parse, and (``score``) compute the λ-weighted
        log-probs, values and KL that PPO needs."""
        with self._gathered_weights():
            return self._act(observations, infos, greedy, score)

    @contextlib.contextmanager
    def _gathered_weights(self):
        """Full weights for one env step under ZeRO-3 / FSDP2, which shard them across processes.

        `generate` calls the policy token by token, outside the wrapper that would gather its shards. ZeRO-3: gather
        every weight once per env step instead of once per token and layer (TRL's `unwrap_model_for_generation` does
        the same, but expects a `PreTrainedModel`, not our policy + value-head wrapper). FSDP2: unshard the root's own
        parameters (embeddings, head, value head); the sharded decoder layers gather themselves in their forward hooks.
        Every process calls this once per env step, so the all-gathers pair up.
        """
        wrapped = self.model_wrapped
        if getattr(self, "is_fsdp_enabled", False):
            from torch.distributed.fsdp import FSDPModule

            if self.accelerator.state.fsdp_plugin.fsdp_version == 1:
                raise ValueError(
                    "FSDP1 cannot generate from the sharded policy; use FSDP2 (`fsdp_version: 2` in the accelerate "
                    "config, e.g. examples/accelerate_configs/fsdp2.yaml), DeepSpeed ZeRO-2/3, or DDP."
                )
            if isinstance(wrapped, FSDPModule):
                # FSDP2 decides which module is the root on the first forward through it; `generate` would reach the
                # vision tower's shards first and make one of them the root (then the next real forward raises).
                wrapped._get_fsdp_state()._lazy_init()
                wrapped.unshard()
                try:
                    yield
                finally:
                    wrapped.reshard()
                return
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is None or plugin.zero_stage != 3 or wrapped is self.model:
            yield
            return
        import deepspeed
        from trl.models.utils import add_hooks, remove_hooks

        with deepspeed.zero.GatheredParameters(list(wrapped.parameters())):
            remove_hooks(wrapped)
            try:
                yield
            finally:
                add_hooks(wrapped)

    def _prompt_inputs(self, observations, infos: list[dict]) -> dict[str, torch.Tensor]:
        """Processor outputs for acting on ``observations``. The critic valued the observations after the last
        rollout step (`collect_rollout`), and the next rollout starts by acting on those very objects: reuse their
        processor outputs (images are the expensive part) instead of processing them twice."""
        valued, self._valued_inputs = getattr(self, "_valued_inputs", None), None
        if valued is not None and valued[0] is observations and valued[1] is infos:
            return valued[2], valued[3]
        return self._inputs_and_image_counts(observations, infos)

    def _inputs_and_image_counts(self, observations, infos: list[dict]) -> tuple[dict, list[int]]:
        """Processor outputs for ``observations`` and how many images each prompt holds (for `split_inputs`)."""
        messages = [fill_image_placeholders(self.build_messages(o, i), o, i) for o, i in zip(observations, infos)]
        counts = [
            sum(
                1
                for m in conversation
                if not isinstance(m.get("content"), str)
                for part in m.get("content") or ()
                if isinstance(part, dict) and part.get("type") == "image"
            )
            for conversation in messages
        ]
        return self.build_model_inputs(messages), counts

    def _act(self, observations, infos: list[dict], greedy: bool, score: bool) -> StepOutput:
        n = len(infos)
        inputs, image_counts = self._prompt_inputs(observations, infos)
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
        out.prompts = split_inputs(inputs, n, image_counts, image_token_ids(policy.config, self.processing_class))
        return out

    def _ref_logprobs(self, inputs, completion_ids, completion_mask) -> torch.Tensor:
        # The reference is scored like the policy: renormalised over the tokens generation can sample.
        suppressed = self.accelerator.unwrap_model(self.model).suppressed_ids
        if self.is_peft:
            policy = self.accelerator.unwrap_model(self.model).policy
            with policy.disable_adapter():
                ref_logprobs, _, _ = policy_forward(
                    policy, None, inputs, completion_ids, completion_mask, self.args.temperature,
                    suppressed_ids=suppressed,
                )
            return ref_logprobs
        ref_logprobs, _, _ = policy_forward(
            self.ref_model, None, inputs, completion_ids, completion_mask, self.args.temperature,
            suppressed_ids=suppressed,
        )
        return ref_logprobs

    @torch.no_grad()
    def value_of(self, observations, infos: list[dict]) -> torch.Tensor:
        """Critic values of observations (no generation): for bootstrapping truncated episodes and the last step."""
        cpu_inputs, image_counts = self._inputs_and_image_counts(observations, infos)
        self._valued_inputs = (observations, infos, cpu_inputs, image_counts)  # see `_prompt_inputs`
        inputs = self._to_device(cpu_inputs)
        empty = inputs["input_ids"][:, :0]
        _, _, values = self.model(inputs, empty, empty, self.args.temperature)
        return values.float().cpu()

    def _num_actions(self, info: dict) -> int:
        """How many parsed-action indices are valid for this step (`Task`: indices into ``action_names`` or, for text
        actions without them, into the step's legal commands)."""
        if isinstance(self.action_space, spaces.Discrete):
            return int(self.action_space.n)
        return len(self.task.action_names or self.task.legal_actions(info))

    def to_env_actions(self, indices, infos: list[dict]):
        """Parsed-action indices → what ``envs.step`` takes: an int array (``Discrete``, offset by its ``start``) or a
        tuple of command strings (``Text``)."""
        if isinstance(self.action_space, spaces.Text):
            return tuple(self.task.to_env_action(int(k), info, self.action_space) for k, info in zip(indices, infos))
        return np.asarray(indices, dtype=np.int64) + int(self.action_space.start)

    def _env_actions(self, parsed: list[ParsedAction], infos: list[dict]) -> tuple[np.ndarray | tuple, np.ndarray]:
        valid = np.array([p.valid for p in parsed], dtype=bool)
        indices = []
        for p, info in zip(parsed, infos):
            if p.valid:
                indices.append(p.action)
            elif self.args.invalid_action == "random":
                indices.append(random_legal_action(self.task, info, self.action_space, self._np_rng))
            else:
                indices.append(self.args.invalid_action_index)
        return self.to_env_actions(indices, infos), valid

    def collect_rollout(self) -> RolloutBatch:
        """``num_steps`` batched env steps of all envs: generate → parse → env.step, recorded in a `RolloutBatch`."""
        args = self.args
        batch = RolloutBatch(args.num_steps, args.num_envs)
        self._output_faults = {}
        to_bootstrap: list[tuple] = []  # (step, env, final observation, final info) of truncated episodes
        for t in range(args.num_steps):
            out = self.act(self._obs, self._infos)
            self._count_output_faults(out)
            actions, valid = self._env_actions(out.parsed, self._infos)
            env_fault = None
            try:
                obs, rewards, terminated, truncated, infos = self.envs.step(actions)
            except Exception as exc:  # noqa: BLE001 - stops the run, with a checkpoint (see `train`)
                env_fault = exc
            self._raise_on_env_fault(env_fault)
            self.env_steps += args.num_envs * self.accelerator.num_processes
            infos_list = unbatch_infos(infos, args.num_envs)
            final_infos = [info.get("final_info", {}) for info in infos_list]
            self.episode_stats.step(rewards, terminated, truncated, final_infos)
            # A step whose env raised (FaultTolerantEnv: truncated + `env_error`) is not bootstrapped: its "final
            # observation" is the recreated env's first one, not the broken state, so its final value stays 0.
            broken = np.array(["env_error" in info for info in final_infos], dtype=bool)

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
            for i in np.flatnonzero(truncated & ~terminated & ~broken):
                to_bootstrap.append((t, int(i), infos_list[i]["final_obs"], final_infos[i]))
            self._obs, self._infos = obs, infos_list
        # Values of the truncated episodes' final observations, batched here rather than per step: every process
        # then runs the same number of critic forwards however its episodes ended (under ZeRO-3/FSDP a forward is a
        # collective, and a process waiting in one would hang). Then the observations after the last step; the next
        # rollout's first `act` reuses their processor outputs.
        values = self._batched_values([b[2] for b in to_bootstrap], [b[3] for b in to_bootstrap])
        for k, (t, i, _, _) in enumerate(to_bootstrap):
            batch.final_values[t, i] = values[k]
        batch.next_value = self.value_of(self._obs, self._infos)
        penalty = torch.where(batch.valid, 0.0, args.invalid_action_penalty)
        batch.rewards = batch.env_rewards + penalty - args.kl_coef * batch.kl
        self._free_device_memory()
        return batch

    def _batched_values(self, observations: list, infos: list[dict]) -> torch.Tensor:
        """`value_of` in chunks of ``num_envs``, with the same number of chunks on every process: a process with fewer
        observations runs its extra chunks on its first observation and drops the result."""
        size = self.args.num_envs
        chunks = -(-len(observations) // size)
        if self.accelerator.num_processes > 1:
            chunks = int(self.accelerator.gather(torch.tensor([chunks], device=self.accelerator.device)).max())
        values = [torch.zeros(0)]
        for c in range(chunks):
            part = slice(c * size, (c + 1) * size)
            if observations[part]:
                values.append(self.value_of(observations[part], infos[part]))
            else:  # keeps step with the other processes' forwards; the value is dropped
                self.value_of([self._obs[0]], [self._infos[0]])
        return torch.cat(values)

    # ------------------------------------------------------------------ update
    def compute_advantages(self, batch: RolloutBatch) -> None:
        # A non-finite rollout statistic (e.g. a bf16 overflow in the scoring forward) must not poison GAE: it would
        # spread to every earlier step of that env and, through whitening, to the whole batch. It enters GAE as 0, and
        # its sample and the earlier samples of its episode (whose advantages were bootstrapped through that 0) get a
        # NaN advantage and return, so the minibatches holding them are skipped (`ppo_update`).
        nonfinite = nonfinite_samples(batch)  # (num_steps, num_envs)
        self._nonfinite_samples = int(nonfinite.sum())
        bad = spread_back_in_episodes(nonfinite, batch.terminated | batch.truncated)
        finite = lambda x: torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
        advantages, returns = compute_gae(
            finite(batch.rewards),
            finite(batch.values),
            batch.terminated,
            batch.truncated,
            finite(batch.final_values),
            finite(batch.next_value),
            self.args.gamma,
            self.args.lam,
        )
        advantages[bad], returns[bad] = float("nan"), float("nan")
        batch.returns = returns
        self._advantage_stats = {}
        if self.args.whiten_advantages:
            # Global statistics: every process normalises with the mean/std of all processes' advantages.
            all_advantages = self.accelerator.gather(advantages.to(self.accelerator.device)).cpu()
            advantages, stats = normalize_advantages(advantages, self.args.advantage_std_floor, all_advantages)
            self._advantage_stats = {"advantages/raw_std": stats["std"], "advantages/scale": stats["scale"]}
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

    def _all_processes_finite(self, finite: bool) -> bool:
        """True when every process's minibatch was finite: they must agree to step or to skip, or the replicas of
        the weights would drift apart (one tiny all-reduce per optimizer step, only when distributed)."""
        if self.accelerator.num_processes == 1:
            return finite
        flag = torch.tensor(0.0 if finite else 1.0, device=self.accelerator.device)
        return float(self.accelerator.reduce(flag, reduction="sum")) == 0.0

    def _skip_minibatch(self) -> None:
        """Count a skipped (non-finite) minibatch; past `max_skipped_minibatches`, stop (`train` saves first)."""
        self.skipped_minibatches += 1
        logger.warning(
            "Skipped a minibatch with a non-finite loss, gradient or rollout statistic (%d so far, limit %d).",
            self.skipped_minibatches, self.args.max_skipped_minibatches,
        )
        if self.skipped_minibatches > self.args.max_skipped_minibatches:
            raise NumericFaultError(
                f"{self.skipped_minibatches} minibatches had a non-finite loss, gradient norm or rollout "
                f"log-prob/value/advantage, more than `max_skipped_minibatches={self.args.max_skipped_minibatches}`. "
                "Usual causes: a learning rate too high for the model, fp16/bf16 overflow (try float32 or bf16 "
                "instead of fp16), or an env reward of inf/NaN."
            )

    def _raise_on_env_fault(self, fault: Exception | None) -> None:
        """Stop all processes together when an env could not be recovered (`train` saves a checkpoint first)."""
        failed = fault is not None
        if self.accelerator.num_processes > 1:  # so that no process waits forever in the next collective
            flag = torch.tensor(1.0 if failed else 0.0, device=self.accelerator.device)
            failed = float(self.accelerator.reduce(flag, reduction="sum")) > 0
        if not failed:
            return
        if isinstance(fault, EnvFaultError):
            raise fault
        if fault is None:
            raise EnvFaultError("The environment of another process failed; all processes stop (see its error).")
        raise EnvFaultError(
            f"The vector env raised {fault!r}, which cannot be recovered one env at a time (a `VectorEnv` passed in is "
            "used as is, and errors outside an env's reset/step, such as an observation of the wrong shape, are "
            "fatal). Pass an env id or a factory to get per-env recovery."
        ) from fault

    def _count_output_faults(self, out: StepOutput) -> None:
        """Per-rollout counts of invalid outputs by `ParsedAction.reason`, and of completions cut by max_new_tokens."""
        for parsed in out.parsed:
            if not parsed.valid:
                key = f"env/invalid_reason/{parsed.reason or 'unspecified'}"
                self._output_faults[key] = self._output_faults.get(key, 0) + 1
        cut = sum(len(c) >= self.args.max_new_tokens and int(c[-1]) not in self.eos_token_ids for c in out.completions)
        key = "generation/truncated_completions"
        self._output_faults[key] = self._output_faults.get(key, 0) + cut

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
        if self.accelerator.num_processes > 1:
            # Identical weights came from one seed; sampling must not be identical too, or processes that see the same
            # frame write the same completion (TRL's GRPOTrainer seeds per process likewise). Resuming restores these.
            accelerate_set_seed(args.seed, device_specific=True)  # seed + process index
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

        With several processes and replicated weights (DDP), each process plays its share of the episodes
        (``k ≡ rank mod world size``) and the results are merged, so every process returns the same metrics for the
        same episodes as one process would (greedy). Under ZeRO-3 / FSDP every generation is a collective, so every
        process plays all the episodes."""
        args = self.args
        num_episodes = num_episodes or args.eval_episodes
        seed = args.eval_seed if seed is None else seed
        greedy = args.eval_greedy if greedy is None else greedy
        make_env = self.envs.env_fns[0] if hasattr(self.envs, "env_fns") else None
        if make_env is None:
            raise ValueError("evaluate() needs an env factory: pass the env as an id or a factory, not a VectorEnv.")
        share = None
        if self._shard_evaluation():
            share = range(self.accelerator.process_index, num_episodes, self.accelerator.num_processes)
        # `evaluate_episodes` seeds every global RNG (`set_seed(seed)`): without the restore, every rollout after a
        # periodic evaluation would replay the same random streams.
        rng = rng_states()
        try:
            result = evaluate_episodes(
                lambda obs, infos: self.act(obs, infos, greedy=greedy, score=False).parsed,
                make_env,
                num_episodes,
                seed,
                batch_size=args.num_envs,
                task=self.task,
                episode_indices=share,
            )
        finally:
            set_rng_states(rng)
        if share is not None:
            result = EvalResult.from_episodes([e for part in gather_object([result.episodes]) for e in part])
        metrics = result.metrics(metric_key_prefix)
        # The model card, `vlm_env_ppo.json` and the CLI read the last evaluation under the "eval/" keys, whatever
        # prefix this call logged it under.
        self.last_eval = result.metrics("eval")
        self.log(metrics)
        return metrics

    def _shard_evaluation(self) -> bool:
        """Whether processes can play different episodes: only when each holds whole weights (DDP), since sharded
        weights (ZeRO-3, FSDP) make every generation a collective that all processes must join."""
        if self.accelerator.num_processes == 1 or getattr(self, "is_fsdp_enabled", False):
            return False
        return self.accelerator.distributed_type not in (
            DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.XLA, DistributedType.MEGATRON_LM
        )

    def _rollout_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        finished = gather_object(self.episode_stats.pop())
        valid = self.accelerator.gather(batch.valid.float().to(self.accelerator.device)).mean()
        values = self.accelerator.gather(batch.values.to(self.accelerator.device)).cpu()
        returns = self.accelerator.gather(batch.returns.to(self.accelerator.device)).cpu()
        kl = self.accelerator.gather(batch.kl.to(self.accelerator.device)).mean()
        lengths = self.accelerator.gather(batch.completion_lengths.float().to(self.accelerator.device)).mean()
        nan = float("nan")
        ok = torch.isfinite(values) & torch.isfinite(returns)  # samples with non-finite rollout stats were skipped
        values, returns = values[ok], returns[ok]
        counts = torch.tensor([self.env_errors, self._nonfinite_samples], device=self.accelerator.device)
        env_errors, nonfinite = (int(c) for c in self.accelerator.gather(counts).view(-1, 2).sum(0))
        faults: dict[str, int] = {}
        for process_faults in gather_object([self._output_faults]):
            for key, count in process_faults.items():
                faults[key] = faults.get(key, 0) + count
        return faults | getattr(self, "_advantage_stats", {}) | {
            "env/errors": env_errors,
            "train/nonfinite_rollout_samples": nonfinite,
            "env/episode_return": float(np.mean([f[0] for f in finished])) if finished else nan,
            "env/episode_length": float(np.mean([f[1] for f in finished])) if finished else nan,
            "env/success_rate": float(np.mean([f[2] for f in finished])) if finished else nan,
            "env/episodes": len(finished),
            "env/invalid_action_rate": float(1 - valid),
            "env/step_reward": float(batch.env_rewards.mean()),
            "objective/kl": float(kl),
            "values/mean": float(values.mean()) if len(values) else nan,
            "values/explained_variance": explained_variance(values, returns) if len(values) > 1 else nan,
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
            "action_names": list(self.task.action_names or ()) if self.task is not None else None,
            "env_kwargs": self.args.env_kwargs,
            "history_length": self.args.history_length,
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
        ``vlm_env_ppo.json`` and a model card. `VLMAgent.from_pretrained` and `VLMPPOTrainer(model=folder)` load it.

        Under ZeRO-3 / FSDP the parameters are sharded: `Trainer.save_model` gathers the full ``state_dict`` (of the
        policy + value-head wrapper) on every process first and passes it here; it is split into the two parts, so
        the folder holds whole weights, not one process's shards. Only the main process writes.
        """
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        unwrapped = self.accelerator.unwrap_model(self.model)
        policy_state = head_state = None
        if state_dict:  # gathered by Trainer.save_model (ZeRO-3 / FSDP); `{}` means "not gathered"
            policy_state = {k[len("policy."):]: v for k, v in state_dict.items() if k.startswith("policy.")}
            head_state = {k[len("value_head."):]: v for k, v in state_dict.items() if k.startswith("value_head.")}
        unwrapped.policy.save_pretrained(output_dir, state_dict=policy_state, safe_serialization=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in (head_state or unwrapped.value_head.state_dict()).items()},
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
        """Write ``checkpoint-N`` atomically: everything goes to a temporary ``_tmp-checkpoint-N`` folder that is
        renamed into place only when complete, so a crash mid-save leaves the previous checkpoints untouched and
        loadable (`train` cleans up what a crash left)."""
        args = self.args
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, tmp = os.path.join(args.output_dir, name), os.path.join(args.output_dir, TMP_CHECKPOINT + name)
        if args.should_save and os.path.isdir(tmp):
            shutil.rmtree(tmp)  # left over from a crash
        self.accelerator.wait_for_everyone()
        self.save_model(tmp, _internal_call=True)
        if args.should_save:
            self._agent_files = sorted(os.listdir(tmp))
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
                old = os.path.join(args.output_dir, OLD_CHECKPOINT + name)
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
        self._last_checkpoint = final
        if args.push_to_hub:
            self._push_from_checkpoint(final)

    def _clean_up_interrupted_saves(self) -> None:
        """Remove the temporary folders of a save that a crash interrupted (also the ``.tmp-``/``.old-`` names of
        earlier versions). An ``_old-checkpoint-N`` whose ``checkpoint-N`` is missing is the only copy of that
        checkpoint (the crash came between the two renames of a re-save): it is moved back instead."""
        if not os.path.isdir(self.args.output_dir):
            return
        for entry in os.listdir(self.args.output_dir):
            match = re.fullmatch(rf"[._](tmp|old)-({PREFIX_CHECKPOINT_DIR}-\d+)", entry)
            path = os.path.join(self.args.output_dir, entry)
            if match is None or not os.path.isdir(path):
                continue
            final = os.path.join(self.args.output_dir, match.group(2))
            if match.group(1) == "old" and not os.path.exists(final):
                os.replace(path, final)
            else:
                shutil.rmtree(path)

    def _run_state(self) -> dict:
        """What a resumed run needs beyond Trainer's state: env-step and episode counters and the fallback RNG."""
        return {
            "env_steps": self.env_steps,
            "total_episodes": self.episode_stats.total_episodes,
            "parse_errors": self.parse_errors,
            "env_errors": self.env_errors,
            "skipped_minibatches": self.skipped_minibatches,
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
        self._load_scaler(checkpoint)
        with open(os.path.join(checkpoint, RUN_STATE)) as f:
            self._load_run_state(json.load(f))
        logger.info("Resumed from %s at update %d, %d env steps.", checkpoint, self.state.global_step, self.env_steps)

    def _load_run_state(self, run_state: dict) -> None:
        """Set the counters and the fallback RNG from a `_run_state` (a checkpoint's, or one kept in memory)."""
        self.env_steps = run_state["env_steps"]
        self.episode_stats.total_episodes = run_state["total_episodes"]
        self.parse_errors = run_state["parse_errors"]
        self._env_errors_before += run_state.get("env_errors", 0) - self.env_errors  # older checkpoints lack them
        self.skipped_minibatches = run_state.get("skipped_minibatches", 0)
        self._np_rng.bit_generator.state = run_state["np_rng"]

    def _stop_with_checkpoint(
        self, err: EnvFaultError | NumericFaultError, start: tuple[dict, dict, int], in_update: bool
    ) -> None:
        """Make sure a checkpoint holds the state training stopped at, and re-raise ``err`` naming it (issue 7: stop
        cleanly, lose nothing). Its weights, optimizer, schedule, RNG states and counters all describe the same
        point, and no checkpoint this run wrote is overwritten with another state.

        ``start`` is the update's start: `_run_state`, `rng_states` and the scheduler's step count.

        - A fault in the rollout (env faults) comes before any training in the update: counters and RNG states go
          back to the update's start, so the state is the one after update N (``global_step``), which is
          ``checkpoint-N``. If this trainer has just written it, it is kept as it is; otherwise it is written.
        - A fault in the PPO epochs (numeric faults) comes after the whole rollout and possibly some optimizer steps:
          the update ends there, as if its remaining minibatches were skipped (the LR schedule goes to the update's
          end), and counts as update N + 1. ``checkpoint-<N+1>`` holds the weights as they are (every optimizer step
          taken, none from a skipped minibatch) and counters that include the rollout.
        """
        run_state, rng, lr_steps = start
        if in_update:
            for _ in range(self.args.optimizer_steps_per_update - (self.lr_scheduler.last_epoch - lr_steps)):
                self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)  # the failed minibatch's
            self.state.global_step += 1
            self.state.epoch = self.env_steps / self.args.total_env_steps
        else:
            self._load_run_state(run_state)
            set_rng_states(rng)
        path = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        try:
            if self._last_checkpoint != path:
                self._save_checkpoint(self.model, trial=None)
        except Exception as save_err:  # noqa: BLE001 - reported inside the fault error, which is what matters
            err.args = (f"{err} Writing a checkpoint failed too: {save_err!r}.",)
            raise err  # keeps its cause (the env's or the loss's error); the save error is its context
        err.checkpoint = path
        err.args = (
            (
                f"{err} Training stopped at update {self.state.global_step}; a checkpoint was written to {path} (load "
                "it with `VLMAgent.from_pretrained`, or continue with `train(resume_from_checkpoint=...)`)."
            ),
        )
        raise err

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The periodic push. `Trainer`'s copies its own list of model files from the checkpoint into ``output_dir``
        and uploads that folder, which would lack the value head, ``vlm_env_ppo.json`` and the card: first copy every
        file `save_model` wrote into the checkpoint, and write the card, so that every push loads as an agent and
        continues training."""
        args, in_progress = self.args, getattr(self, "push_in_progress", None)
        # Trainer's own conditions: only the main process pushes, and not while the previous upload still reads
        # ``output_dir`` (unless hub_always_push), so copy nothing then either.
        if (
            self.is_world_process_zero()
            and args.hub_strategy != HubStrategy.END
            and (args.hub_always_push or in_progress is None or in_progress.is_done())
        ):
            for name in self._agent_files:
                source, target = os.path.join(checkpoint_folder, name), os.path.join(args.output_dir, name)
                if os.path.isdir(source):
                    shutil.copytree(source, target, dirs_exist_ok=True)
                else:
                    shutil.copy(source, target)
            self.create_model_card()
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """Used by `push_to_hub`: the agent's model card (env, base model, method, last evaluation)."""
        write_model_card(self, self.args.output_dir)


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
    keys = ("success_rate", "episode_return", "episode_length", "invalid_action_rate", "episodes")
    evaluation = (
        f"success rate {last['eval/success_rate']:.3f}, mean return {last['eval/episode_return']:.3f}, mean episode "
        f"length {last['eval/episode_length']:.2f}, invalid-action rate {last['eval/invalid_action_rate']:.3f} over "
        f"{last['eval/episodes']} episodes"
        if all(last.get(f"eval/{k}") is not None for k in keys)  # a save must not fail on the card
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
    # TRL's template names a Hub base model and shows a text-generation pipeline: say what a local base model was,
    # and show how this agent is actually used.
    intro = (
        f"This model is a fine-tuned version of [{base}](https://huggingface.co/{base})."
        if base
        else f"This model is a fine-tuned version of a local model (`{trainer.base_model_name}`)."
    )
    text = re.sub(r"This model is a fine-tuned version of \[[^\]]*\]\([^)]*\)\.", lambda _: intro, card.text, count=1)
    repo = trainer.hub_model_id or os.path.basename(os.path.abspath(output_dir))
    quick_start = (
        "## Quick start\n\n```python\nfrom vlm_env_ppo.agent import VLMAgent\n\n"
        f'agent = VLMAgent.from_pretrained("{repo}")\n'
        "action, parsed, text = agent.act(frame, info)      # one observation of the env\n"
        "print(agent.evaluate(num_episodes=32, seed=0))     # the training env, fixed seeds\n```\n\n"
    )
    text = re.sub(r"## Quick start\n.*?(?=## Training procedure)", lambda _: quick_start, text, count=1, flags=re.S)
    card.text = text + section
    card.save(os.path.join(output_dir, "README.md"))
