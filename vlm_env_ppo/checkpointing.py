"""Persistence of a training run, write side: a complete agent folder (`_save`), atomic checkpoints with rotation,
cleaning up after a crash, resuming (weights, optimizer, scheduler, RNG and run state), the checkpoint a fault leaves
(`_stop_with_checkpoint`), the periodic Hub push and the model card. `VLMPPOTrainer` mixes `CheckpointingMixin` in;
reading a saved folder back is `vlm_env_ppo.saved_agent`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections import Counter

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import TrainerState
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, rotate_checkpoints
from trl.trainer.utils import generate_model_card

from . import __version__
from .faults import NumericFaultError
from .models.value_head import VALUE_HEAD_WEIGHTS
from .rollout import EnvFaultError
from .saved_agent import AGENT_CONFIG, load_policy_weights, load_value_head
from .user_code import task_record

# The trainer's messages keep the logger name they always had.
logger = logging.getLogger("vlm_env_ppo.trainer")

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


class CheckpointingMixin:
    """`VLMPPOTrainer`'s saving, checkpointing, resuming and pushing (overrides of `transformers.Trainer`'s)."""

    def _agent_config(self) -> dict:
        task = getattr(self, "agent_task", self.task)
        return {
            "env_id": self.env_id,
            "base_model": self.base_model_name,
            "is_peft": self.is_peft,
            "action_only": self.args.action_only,
            "action_names": list(task.action_names or ()) if task is not None else None,
            "task": task_record(task),  # what `VLMAgent.from_pretrained` builds the task from (`user_code.load_task`)
            "env_kwargs": self.args.env_kwargs,
            "history_length": self.args.history_length,
            "temperature": self.args.temperature,
            "top_p": self.args.top_p,
            "max_new_tokens": self.args.max_new_tokens,
            "constrained_decoding": self.args.constrained_decoding,
            "cot_logprob_coef": self.args.cot_logprob_coef,
            "advantage_estimator": self.args.advantage_estimator,
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
        if unwrapped.value_head is not None:  # critic-free estimators train none
            head_state = head_state or unwrapped.value_head.state_dict()
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in head_state.items()},
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
            "grammar_counts": {} if self.constraint is None else dict(self.constraint.counts),
            "env_errors": self.env_errors,
            "skipped_minibatches": self.skipped_minibatches,
            "np_rng": self._np_rng.bit_generator.state,
            "process_index": self.accelerator.process_index,
        }

    def _resume(self, checkpoint: str) -> None:
        if self.is_deepspeed_enabled:
            # DeepSpeed's own checkpoint (`global_step*/`, written by `_save_optimizer_and_scheduler`) holds the
            # weights and the optimizer states of every process's partition; frozen weights were left out of it.
            deepspeed_load_checkpoint(self.model_wrapped, checkpoint, load_module_strict=False)
        else:
            unwrapped = self.accelerator.unwrap_model(self.model)
            load_policy_weights(unwrapped.policy, checkpoint)
            if unwrapped.value_head is not None:  # critic-free estimators train none
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
        if self.constraint is not None:  # older checkpoints lack them
            self.constraint.counts = Counter(run_state.get("grammar_counts", {}))
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


def write_model_card(trainer: CheckpointingMixin, output_dir: str) -> None:
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
    evaluated = all(last.get(f"eval/{k}") is not None for k in keys)  # a save must not fail on the card
    evaluation = (
        f"success rate {last['eval/success_rate']:.3f}, mean return {last['eval/episode_return']:.3f}, mean episode "
        f"length {last['eval/episode_length']:.2f}, invalid-action rate {last['eval/invalid_action_rate']:.3f} over "
        f"{last['eval/episodes']} episodes"
        if evaluated
        else "not evaluated yet (run `trainer.evaluate()` before saving)"
    )
    if evaluated and last.get("eval/update") is not None:  # when and how it was taken (issue 24: no stale numbers)
        behind = trainer.state.global_step - last["eval/update"]
        evaluation += (
            f", {'greedy' if last.get('eval/greedy', True) else 'sampled'}, at update {last['eval/update']}"
            + (f", {behind} update(s) before these weights (not this agent's result)" if behind else "")
        )
    args = trainer.args
    method = "PPO with a value head on the VLM (RL4VLM)" if args.advantage_estimator == "gae" else (
        f"PPO with {args.advantage_estimator.upper()} advantages (critic-free, groups of {args.group_size} envs)"
    )
    section = (
        "\n## vlm-env-ppo agent\n\n"
        f"- Environment: `{trainer.env_id or 'custom'}`\n"
        f"- Base model: `{trainer.base_model_name}`\n"
        f"- Method: {method}, chain-of-thought weight "
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
    record = task_record(getattr(trainer, "agent_task", trainer.task))
    module = record["class"].split(":")[0] if record else ""
    user_code = bool(module) and not module.startswith("vlm_env_ppo")
    quick_start = (
        "## Quick start\n\n"
        + (f"This agent's prompt, parser and grammar are user code, `{record['class']}`: install the package that "
           f"provides `{module}` (or put its folder on `PYTHONPATH`), and load with `trust_remote_code=True` if you "
           "trust it (`--trust_remote_code` for `vlm-env-ppo eval/play`).\n\n" if user_code else "")
        + "```python\nfrom vlm_env_ppo import VLMAgent\n\n"
        f'agent = VLMAgent.from_pretrained("{repo}"{", trust_remote_code=True" if user_code else ""})\n'
        "action, parsed, text = agent.act(frame, info)      # one observation of the env\n"
        "print(agent.evaluate(num_episodes=32, seed=0))     # the training env, fixed seeds\n```\n\n"
    )
    text = re.sub(r"## Quick start\n.*?(?=## Training procedure)", lambda _: quick_start, text, count=1, flags=re.S)
    card.text = text + section
    card.save(os.path.join(output_dir, "README.md"))

