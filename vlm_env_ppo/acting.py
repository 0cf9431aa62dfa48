"""The trainer's policy acting in its envs: one batched env step (generate for all envs at once, parse, score the
λ-weighted log-probs, values and KL that PPO needs: `StepOutput`) and a whole rollout (`collect_rollout` ->
`RolloutBatch`). Generation and scoring themselves are `vlm_env_ppo.policy`'s; this adds what training needs around
them: devices, sharded weights (ZeRO-3 / FSDP2), the reference policy, invalid-action fallbacks, truncation bootstrap
values. `VLMPPOTrainer` mixes `ActingMixin` in.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate.utils import gather_object
from gymnasium import spaces

from .actions import ParsedAction, checked_parse
from .advantages import kl_penalty
from .buffer import RolloutBatch, split_inputs
from .constrained import GRAMMAR_COUNTS, GrammarConstraint, output_vocab_size
from .evaluation import random_legal_action
from .logprobs import action_token_index, token_weights, weighted_logprob
from .losses import explained_variance, importance_weights
from .models.loading import get_tokenizer, image_token_ids
from .models.value_head import policy_forward
from .policy import fill_image_placeholders, generate_completions
from .rollout import unbatch_infos
from .tasks import Task

# The trainer's messages keep the logger name they always had.
logger = logging.getLogger("vlm_env_ppo.trainer")


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
    sampler_logprobs: torch.Tensor | None = None  # (num_envs,) λ-weighted, the vLLM engine's (rollout_backend="vllm")
    grammars: list[str | None] = field(default_factory=list)  # per sample (constrained decoding), else empty


class ActingMixin:
    """`VLMPPOTrainer`'s acting: `act` / `_act` (one batched step), `value_of` (the critic alone), `collect_rollout`
    (which uses the hooks `build_messages`, `parse_action` and `build_model_inputs`) and `_rollout_metrics` (a
    rollout's statistics over all processes, logged by `train`)."""

    rollout_engine = None  # rollout_backend="vllm": the `VLLMRollout` that generates (set by `VLMPPOTrainer`)

    def _to_device(self, inputs: dict) -> dict:
        device = self.accelerator.device
        dtype = self.model.policy.dtype
        return {
            k: v.to(device, dtype=dtype) if torch.is_floating_point(v) else v.to(device) for k, v in inputs.items()
        }

    def _safe_parse(self, text: str, info: dict) -> ParsedAction:
        parsed, problem = checked_parse(self.parse_action, text, info, self._num_actions(info))
        if problem is not None:  # a bug in a user hook must not lose the run: counted, logged once, treated as invalid
            self.parse_errors += 1
            if self.parse_errors == 1:
                logger.warning("%s; such outputs are treated as invalid and counted in `generation/parse_errors` (only "
                               "this first one is logged).", problem)
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
        if plugin is None or plugin.zero_stage != 3:
            yield
            return
        import deepspeed
        from trl.models.utils import add_hooks, remove_hooks

        # Before `train` builds the engine (an `evaluate()` first) the policy is partitioned already: transformers
        # loads it under `deepspeed.zero.Init` when a ZeRO-3 config is active. Only the engine has gather hooks.
        engine = wrapped if wrapped is not self.model else None
        with deepspeed.zero.GatheredParameters(list(self.model.parameters())):
            if engine is not None:
                remove_hooks(engine)
            try:
                yield
            finally:
                if engine is not None:
                    add_hooks(engine)

    def _sharded_weights(self) -> bool:
        """Whether weights are sharded across processes (ZeRO-3, FSDP), so that acting gathers them: a collective."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return getattr(self, "is_fsdp_enabled", False) or (plugin is not None and plugin.zero_stage == 3)

    def _prompt_inputs(self, observations, infos: list[dict]) -> tuple[dict, list[int], list[list[dict]]]:
        """`_prompt` for acting on ``observations``. The critic valued the observations after the last rollout step
        (`collect_rollout`), and the next rollout starts by acting on those very objects: reuse their processor
        outputs (images are the expensive part) instead of processing them twice."""
        valued, self._valued_inputs = getattr(self, "_valued_inputs", None), None
        if valued is not None and valued[0] is observations and valued[1] is infos:
            return valued[2]
        return self._prompt(observations, infos)

    def _prompt(self, observations, infos: list[dict]) -> tuple[dict, list[int], list[list[dict]]]:
        """Processor outputs for ``observations``, how many images each prompt holds (for `split_inputs`), and the
        chat messages they came from (`build_messages`, images filled in: what a vLLM engine is prompted with)."""
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
        return self.build_model_inputs(messages), counts, messages

    def _act(self, observations, infos: list[dict], greedy: bool, score: bool) -> StepOutput:
        n = len(infos)
        inputs, image_counts, messages = self._prompt_inputs(observations, infos)
        device_inputs = self._to_device(inputs)
        policy = self.accelerator.unwrap_model(self.model).policy
        policy.eval()
        grammars = self._step_grammars(infos) if self.constraint is not None else []
        processor = sampler_logprobs = None
        if self.rollout_engine is not None:
            completion_ids, completion_mask, texts, sampler_logprobs = self._engine_generate(messages, grammars, greedy)
            device = device_inputs["input_ids"].device
            completion_ids, completion_mask = completion_ids.to(device), completion_mask.to(device)
        else:
            processor = self.constraint.logits_processor(grammars) if grammars else None
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
                logits_processor=processor,
                # Sharded weights: every token's forward is a collective, so all processes generate the same number
                # of tokens (the lock-step of `act` calls is the rollout's and `evaluate`'s: `LockStepActor`).
                synced_gpus=True if self.accelerator.num_processes > 1 and self._sharded_weights() else None,
            )
        parsed = [self._safe_parse(texts[i], infos[i]) for i in range(n)]
        out = StepOutput(prompts=[], completions=[], texts=texts, parsed=parsed, action_token_starts=[], grammars=grammars)
        if not score:
            return out
        tokenizer = get_tokenizer(self.processing_class)
        out.completions = [completion_ids[i, : int(completion_mask[i].sum())].cpu() for i in range(n)]
        out.action_token_starts = [
            action_token_index(tokenizer, out.completions[i].tolist(), parsed[i].action_start) for i in range(n)
        ]
        # Constrained: scored under the masks generation applied (the update replays them from the completion ids).
        allowed = processor.applied_masks() if processor is not None else None
        if grammars and (allowed is None or allowed.shape[1] != completion_ids.shape[1]):
            # the engine's masks, or not one processor call per token: the same walk, replayed from the ids
            allowed = self.constraint.replay(grammars, completion_ids, completion_mask)
        per_token_logprobs, _, values = self.model(
            device_inputs, completion_ids, completion_mask, self.args.temperature, allowed_tokens=allowed
        )
        weights = token_weights(completion_mask, out.action_token_starts, self.args.cot_logprob_coef)
        out.logprobs = weighted_logprob(per_token_logprobs, weights).float().cpu()
        if sampler_logprobs is not None:  # the engine's, λ-weighted the same way (importance-sampling correction)
            out.sampler_logprobs = weighted_logprob(sampler_logprobs.to(weights.device), weights).float().cpu()
        out.values = values.float().cpu() if values is not None else torch.zeros(n)  # None: critic-free
        if self.args.kl_coef > 0:
            ref_logprobs = self._ref_logprobs(device_inputs, completion_ids, completion_mask, allowed)
            kl = kl_penalty(per_token_logprobs, ref_logprobs, self.args.kl_estimator) * completion_mask
            out.kl = kl.sum(-1).float().cpu()
        else:
            out.kl = torch.zeros(n)
        out.prompts = split_inputs(inputs, n, image_counts, image_token_ids(policy.config, self.processing_class))
        return out

    # ------------------------------------------------------------------ the vLLM rollout engine
    def _start_rollout_engine(self, policy):
        """The `VLLMRollout` of ``rollout_backend="vllm"``, holding the policy's current weights."""
        args = self.args
        if self.accelerator.num_processes > 1:
            raise ValueError(
                "rollout_backend='vllm' runs one engine in one training process; with "
                f"{self.accelerator.num_processes} processes use rollout_backend='hf' (an engine per rank, colocated "
                "under DDP / ZeRO, is not built yet)."
            )
        if "build_model_inputs" in self._hooks:
            logger.warning("rollout_backend='vllm': `build_model_inputs` is overridden, but the engine renders prompts "
                           "with the processor's chat template; if yours differ, `rollout/sampler_logprob_gap` shows it.")
        from .vllm_engine import VLLMRollout

        engine = VLLMRollout(
            policy, self.processing_class, constraint=self.constraint, suppress_token_ids=self.suppress_token_ids,
            eos_token_ids=self.eos_token_ids, vocab_size=output_vocab_size(policy), seed=args.seed,
            max_images=args.history_length + 1, gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_model_len=args.vllm_max_model_len, engine_kwargs=args.vllm_engine_kwargs,
            trust_remote_code=args.trust_remote_code,
        )
        engine.push_weights(policy)
        return engine

    def push_rollout_weights(self) -> None:
        """Give the vLLM engine the policy's current weights (``rollout_backend="vllm"``; else nothing to do).

        `train` calls it before its first rollout and after every update, `evaluate` before it plays; call it yourself
        after changing the weights some other way, before acting through `act`."""
        if self.rollout_engine is None:
            return
        with self._gathered_weights():
            self.rollout_engine.push_weights(self.accelerator.unwrap_model(self.model).policy)

    def _engine_generate(self, messages, grammars, greedy: bool):
        """`generate_completions`' result from the vLLM engine, plus its per-token sampling log-probs ``(n, C)``."""
        ids, logprobs = self.rollout_engine.generate(
            messages, grammars, greedy=greedy, temperature=self.args.temperature, top_p=self.args.top_p,
            max_new_tokens=self.args.max_new_tokens,
        )
        width = max(1, max(map(len, ids)))
        completion_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        sampler_logprobs = torch.zeros(len(ids), width)
        for i, (row, row_logprobs) in enumerate(zip(ids, logprobs)):
            completion_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            sampler_logprobs[i, : len(row_logprobs)] = torch.tensor(row_logprobs)
        # The engine's completions end with their EOS (or at the token budget); what follows is padding.
        completion_mask = (torch.arange(width).unsqueeze(0) < torch.tensor([len(r) for r in ids]).unsqueeze(1)).long()
        texts = get_tokenizer(self.processing_class).batch_decode(completion_ids, skip_special_tokens=True)
        return completion_ids, completion_mask, texts, sampler_logprobs

    def _ref_logprobs(self, inputs, completion_ids, completion_mask, allowed=None) -> torch.Tensor:
        # The reference is scored like the policy: renormalised over the tokens generation can sample, under
        # constrained decoding over the tokens the grammar allowed at each position. The KL is then between the two
        # constrained distributions (0 on fresh weights); the reference's mass on answers that cannot be generated
        # is no part of the policy's behaviour, so it is not penalised.
        suppressed = self.accelerator.unwrap_model(self.model).suppressed_ids
        if self.is_peft:
            policy = self.accelerator.unwrap_model(self.model).policy
            with policy.disable_adapter():
                ref_logprobs, _, _ = policy_forward(
                    policy, None, inputs, completion_ids, completion_mask, self.args.temperature,
                    suppressed_ids=suppressed, allowed_tokens=allowed,
                )
            return ref_logprobs
        ref_logprobs, _, _ = policy_forward(
            self.ref_model, None, inputs, completion_ids, completion_mask, self.args.temperature,
            suppressed_ids=suppressed, allowed_tokens=allowed,
        )
        return ref_logprobs

    def answer_grammar(self, info: dict) -> str | None:
        """With ``constrained_decoding``: the grammar of this step's completion, or None to leave it unconstrained.

        Default: the task's (`Task.answer_grammar`: by default its JSON answer with one of its legal actions); None
        when `parse_action` is overridden, whose format it may not match. Override it with your parser: return
        any grammar llguidance takes (Lark text, ``llguidance.LLMatcher.grammar_from_regex(r"...")``,
        ``grammar_from_json_schema({...})``) whose completions end with EOS within ``max_new_tokens``."""
        if self.task is None or not self._default_parser:
            return None
        return self.task.answer_grammar(info, self.constraint, self.args.action_only)

    def _grammar_constraint(self, args, tokenizer, policy) -> GrammarConstraint | None:
        """The trainer's `GrammarConstraint` (``constrained_decoding``), checked against the task: a fixed action set
        whose built-in answer grammar does not fit ``max_new_tokens`` is a configuration error, raised now (not when
        `answer_grammar` is overridden: the user's grammar is not that one)."""
        if not args.constrained_decoding:
            return None
        constraint = GrammarConstraint(
            tokenizer, output_vocab_size(policy), self.eos_token_ids, self.suppress_token_ids, args.max_new_tokens
        )
        own_grammar = type(self).answer_grammar is not ActingMixin.answer_grammar or (
            self.task is not None and type(self.task).answer_grammar is not Task.answer_grammar
        )
        if not self._default_parser and type(self).answer_grammar is ActingMixin.answer_grammar:
            logger.warning("constrained_decoding: `parse_action` is overridden but `answer_grammar` is not, so "
                           "completions are generated unconstrained. Override `answer_grammar` to constrain them.")
        elif self.task is not None and type(self.task).parse_action is not Task.parse_action and not own_grammar:
            raise ValueError(
                f"constrained_decoding: {type(self.task).__name__} overrides `parse_action` but not `answer_grammar`, "
                "so generation would follow the built-in JSON answer, which your parser may not read. Override "
                "`answer_grammar` with your format's grammar (or return None from it), or set "
                "`constrained_decoding=False`."
            )
        elif self.task is not None and self.task.admissible_actions is None and not own_grammar:
            needed = max(constraint.needed_tokens(a, args.action_only) for a in self.task.action_names)
            if needed > args.max_new_tokens:
                raise ValueError(
                    f"max_new_tokens={args.max_new_tokens} is too small for constrained decoding of "
                    f"{self.task.env_id}'s answers: the longest needs {needed} tokens with empty thoughts; set "
                    f"max_new_tokens >= {needed}."
                )
        return constraint

    def _step_grammars(self, infos: list[dict]) -> list[str | None]:
        """Each env's grammar for this step (`answer_grammar`), compiled (and cached) now: a hook that raises or
        returns an invalid grammar leaves that env's step unconstrained, counted in `generation/grammar_errors`."""
        grammars = []
        counts = self.constraint.counts
        for info in infos:
            try:
                grammar = self.answer_grammar(info)
                if grammar is not None:
                    self.constraint.compile(grammar)
            except Exception as err:  # noqa: BLE001 - a bug in a user hook or grammar must not lose the run
                if not getattr(self, "_grammar_compiled", False):  # never once compiled: a bug, not a bad step
                    raise ValueError(
                        "constrained_decoding: `answer_grammar` raised or returned a grammar llguidance cannot "
                        f"compile on the first step ({type(err).__name__}: {err}). Fix the grammar (or return None from "
                        "`answer_grammar` to leave steps unconstrained)."
                    ) from err
                grammar = None
                counts["errors"] += 1
                if counts["errors"] == 1:
                    logger.exception("answer_grammar raised or gave an invalid grammar; such steps are generated "
                                     "unconstrained and counted in `generation/grammar_errors` (first traceback only).")
            counts["constrained_steps"] += grammar is not None
            grammars.append(grammar)
            self._grammar_compiled = getattr(self, "_grammar_compiled", False) or grammar is not None
        return grammars

    def _check_grammar_fits(self) -> None:
        """Stop a run in which no step could be constrained because no legal action fits ``max_new_tokens`` (every
        output would be unconstrained), with the budget that would fit. Counted over all processes, so all stop."""
        counts = self.constraint.counts
        local = torch.tensor([counts["constrained_steps"], counts["no_fit"], self.constraint.no_fit_needed])
        gathered = self.accelerator.gather(local.to(self.accelerator.device)).view(-1, 3).cpu()
        constrained, no_fit, needed = int(gathered[:, 0].sum()), int(gathered[:, 1].sum()), int(gathered[:, 2].max())
        if constrained == 0 and no_fit > 0:
            raise ValueError(
                f"constrained_decoding: max_new_tokens={self.args.max_new_tokens} fits no legal action's answer at any "
                f"step so far ({no_fit} steps), so every output would be unconstrained. Set max_new_tokens >= "
                f"{needed} (the shortest answer of every such step fits then), or turn constrained_decoding off."
            )

    @torch.no_grad()
    def value_of(self, observations, infos: list[dict]) -> torch.Tensor:
        """Critic values of observations (no generation): for bootstrapping truncated episodes and the last step."""
        prompt = self._prompt(observations, infos)
        self._valued_inputs = (observations, infos, prompt)  # see `_prompt_inputs`
        inputs = self._to_device(prompt[0])
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
        if self.uses_groups:  # every group starts on a fresh shared seed (`vlm_env_ppo.groups`)
            self._start_group_rollout()
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
            batch.grammars += out.grammars
            batch.logprobs[t], batch.values[t], batch.kl[t] = out.logprobs, out.values, out.kl
            batch.sampler_logprobs[t] = out.sampler_logprobs if out.sampler_logprobs is not None else out.logprobs
            batch.env_rewards[t] = torch.as_tensor(rewards, dtype=torch.float32)
            batch.valid[t] = torch.as_tensor(valid)
            batch.terminated[t] = torch.as_tensor(terminated)
            batch.truncated[t] = torch.as_tensor(truncated)
            batch.completion_lengths[t] = torch.tensor([len(c) for c in out.completions])
            bootstrap = truncated & ~terminated & ~broken & (self.value_head is not None)  # critic-free: none
            for i in np.flatnonzero(bootstrap):
                to_bootstrap.append((t, int(i), infos_list[i]["final_obs"], final_infos[i]))
            self._obs, self._infos = obs, infos_list
            if self.uses_groups:
                self._track_groups(batch, t, np.logical_or(terminated, truncated))
        # Values of the truncated episodes' final observations, batched here rather than per step: every process
        # then runs the same number of critic forwards however its episodes ended (under ZeRO-3/FSDP a forward is a
        # collective, and a process waiting in one would hang). Then the observations after the last step; the next
        # rollout's first `act` reuses their processor outputs.
        if self.constraint is not None:
            self._check_grammar_fits()
        # Critic-free estimators (no value head) need neither.
        if self.value_head is not None:
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

    def _rollout_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        finished = gather_object(self.episode_stats.pop())
        valid = self.accelerator.gather(batch.valid.float().to(self.accelerator.device)).mean()
        values = self.accelerator.gather(batch.values.to(self.accelerator.device)).cpu()
        returns = self.accelerator.gather(batch.returns.to(self.accelerator.device)).cpu()
        kl = self.accelerator.gather(batch.kl.to(self.accelerator.device)).mean()
        lengths = self.accelerator.gather(batch.completion_lengths.float().to(self.accelerator.device)).mean()
        nan = float("nan")
        ok = torch.isfinite(values) & torch.isfinite(returns)  # samples with non-finite rollout stats were skipped
        ok &= self.value_head is not None  # critic-free estimators have no values to report
        values, returns = values[ok], returns[ok]
        counts = torch.tensor([self.env_errors, self._nonfinite_samples], device=self.accelerator.device)
        env_errors, nonfinite = (int(c) for c in self.accelerator.gather(counts).view(-1, 2).sum(0))
        faults: dict[str, int] = {}
        for process_faults in gather_object([self._output_faults]):
            for key, count in process_faults.items():
                faults[key] = faults.get(key, 0) + count
        return faults | getattr(self, "_advantage_stats", {}) | self._sampler_metrics(batch) | {
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
        } | ({} if self.constraint is None else self._grammar_metrics("generation", self.constraint.counts))

    def _sampler_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        """rollout_backend="vllm": how far the engine's sampling log-probs are from the scoring forward's (λ-weighted,
        per sample, over all processes) and the importance weights that correct for it; {} otherwise."""
        if self.rollout_engine is None:
            return {}
        old = self.accelerator.gather(batch.logprobs.to(self.accelerator.device)).cpu().flatten()
        sampler = self.accelerator.gather(batch.sampler_logprobs.to(self.accelerator.device)).cpu().flatten()
        gap = (old - sampler).abs()
        metrics = {"rollout/sampler_logprob_gap": float(gap.mean()), "rollout/sampler_logprob_gap_max": float(gap.max())}
        cap = self.args.vllm_importance_sampling_cap
        if cap is not None:
            weights = importance_weights(old, sampler, cap)
            metrics |= {
                "rollout/importance_weight": float(weights.mean()),
                "rollout/importance_weight_truncated": float((weights >= cap).float().mean()),
            }
        return metrics

    @contextlib.contextmanager
    def _grammar_counts_apart(self):
        """Inside the block the grammar counts go into the `Counter` it yields, not into training's (None when
        generation is unconstrained)."""
        if self.constraint is None:
            yield None
            return
        training, apart = self.constraint.counts, Counter()
        self.constraint.counts = apart
        try:
            yield apart
        finally:
            self.constraint.counts = training

    def _grammar_metrics(self, prefix: str, counts, gather: bool = True) -> dict[str, int]:
        """``{prefix}/grammar_{kind}`` for each of `GRAMMAR_COUNTS` (summed over all processes with ``gather``)."""
        local = torch.tensor([counts[k] for k in GRAMMAR_COUNTS], device=self.accelerator.device)
        total = self.accelerator.gather(local).view(-1, len(GRAMMAR_COUNTS)).sum(0) if gather else local
        return {f"{prefix}/grammar_{k}": int(v) for k, v in zip(GRAMMAR_COUNTS, total.tolist())}

