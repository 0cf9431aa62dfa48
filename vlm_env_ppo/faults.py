"""Fault handling in training (issue 7): a run survives what it can and stops cleanly on what it cannot.

Non-finite rollout statistics and minibatches are counted and skipped (`nonfinite_samples`, `NumericFaultError` past
`max_skipped_minibatches`), invalid outputs and truncated completions counted per rollout, env errors counted and an
unrecoverable one raised on every process together. `VLMPPOTrainer` mixes `FaultHandlingMixin` in; writing the
checkpoint a stopped run leaves is `vlm_env_ppo.checkpointing`'s `_stop_with_checkpoint`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from .buffer import RolloutBatch
from .rollout import EnvFaultError, FaultTolerantEnv

if TYPE_CHECKING:
    from .acting import StepOutput

# The trainer's messages keep the logger name they always had.
logger = logging.getLogger("vlm_env_ppo.trainer")


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


class FaultHandlingMixin:
    """`VLMPPOTrainer`'s fault counters and the checks every process must agree on (one flag all-reduce each)."""

    @property
    def env_errors(self) -> int:
        """Env exceptions survived so far in this run (all envs of this process), including before a resume."""
        guarded = [e for e in getattr(self.envs, "envs", []) if isinstance(e, FaultTolerantEnv)]
        return self._env_errors_before + sum(e.errors for e in guarded)

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

