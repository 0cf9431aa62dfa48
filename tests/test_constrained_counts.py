"""Issue 27, points 2-5: no step goes unconstrained unnoticed (counted, warned with the tokens it needs, a run that can
constrain nothing stops), a user's own grammar is not refused for the built-in one's budget, the grammar counters are
gathered across processes, checkpointed and kept apart from evaluation's, and a replay that diverged from generation
raises instead of scoring a wrong, finite log-prob."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_constrained import EOS, PAD, LetterTrainer, pack, tiny_tokenizer  # noqa: F401 - a fixture
from test_trainer import make_args, start_rollout

from vlm_env_ppo import VLMPPOTrainer
from vlm_env_ppo.constrained import GrammarConstraint, masked_logprobs
from vlm_env_ppo.tasks import Task

LONG_ACTIONS = ("walk slowly to the far northern gate of the old castle",
                "walk slowly to the far southern gate of the old castle")
# A user's task with multi-word actions (legal per step, so the trainer cannot check them when it is built).
LONG = Task("gym_cards/NumberLine-v0", LONG_ACTIONS, "Leave the castle.", admissible_actions=lambda info: LONG_ACTIONS)


# ------------------------------------------------------------------------------------------------ point 2
def test_steps_the_grammar_cannot_constrain_are_counted_and_warned_with_the_tokens_needed(tiny_tokenizer, caplog):
    constraint = GrammarConstraint(tiny_tokenizer, len(tiny_tokenizer), [EOS], [PAD], max_new_tokens=12)
    needed = {a: constraint.needed_tokens(a, False) for a in ("+", *LONG_ACTIONS)}
    assert needed["+"] <= 12 < min(needed[a] for a in LONG_ACTIONS)
    with caplog.at_level("WARNING"):
        assert constraint.answer_grammar((), action_only=False) is None
        for _ in range(2):
            assert constraint.answer_grammar(LONG_ACTIONS, action_only=False) is None
        grammar = constraint.answer_grammar(("+", LONG_ACTIONS[0]), action_only=False)
    assert grammar is not None and json.dumps(LONG_ACTIONS[0])[1:-1] not in grammar
    assert constraint.counts == {"no_legal_action": 1, "no_fit": 2, "actions_left_out": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3  # the first of each kind
    assert f"max_new_tokens >= {min(needed[a] for a in LONG_ACTIONS)}" in warnings[1]
    assert f"max_new_tokens >= {needed[LONG_ACTIONS[0]]}" in warnings[2]


def test_a_run_in_which_no_step_can_be_constrained_stops_with_the_budget_that_fits(tiny_vlm_path, tmp_path):
    """The issue's user: multi-word actions, chain-of-thought and ``max_new_tokens=24``: the run stops at its first
    rollout and says which ``max_new_tokens`` fits, instead of training on unconstrained output for a whole run."""
    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=24)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0", task=LONG)
    with pytest.raises(ValueError, match=r"Set max_new_tokens >= (\d+)") as stopped:
        trainer.train()
    fits = min(trainer.constraint.needed_tokens(a, False) for a in LONG_ACTIONS)
    assert f">= {fits} " in str(stopped.value) and fits > 24
    assert trainer.constraint.counts["no_fit"] == 4 and trainer.state.global_step == 0
    trainer.envs.close()


# ------------------------------------------------------------------------------------------------ point 3
def test_a_users_own_grammar_is_not_refused_for_the_built_in_grammars_budget(tiny_vlm_path, tmp_path):
    """``ACTION: a`` fits 8 tokens; the built-in JSON answer would not: the user's grammar is what counts."""
    task = Task("gym_cards/NumberLine-v0", ("a", "b"), "Move left (a) or right (b).")
    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=8)
    trainer = LetterTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0", task=task)
    assert trainer.constraint.needed_tokens("a", False) > 8
    start_rollout(trainer)
    batch = trainer.collect_rollout()
    assert bool(batch.valid.all()) and all(t.strip() in ("ACTION: a", "ACTION: b") for t in batch.texts)
    trainer.envs.close()


# ------------------------------------------------------------------------------------------------ point 4
class FailingGrammar(VLMPPOTrainer):
    """The hook gives the built-in grammar once (a grammar that never compiles stops the run at its first step), then
    raises: every later step is generated unconstrained and counted."""

    calls = 0

    def answer_grammar(self, info):
        self.calls += 1
        if self.calls == 1:
            return super().answer_grammar(info)
        raise RuntimeError("a bug in the user's hook")


def test_grammar_counters_are_checkpointed_and_apart_from_evaluation(tiny_vlm_path, tmp_path):
    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=12, save_strategy="steps", save_steps=1)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0")
    trainer.train()  # 2 updates of 4 steps
    counts = dict(trainer.constraint.counts)
    assert counts == {"constrained_steps": 8}
    # checkpointed, and restored on resume
    checkpoint = os.path.join(args.output_dir, "checkpoint-2")
    with open(os.path.join(checkpoint, "vlm_env_ppo_state.json")) as f:
        run_state = json.load(f)
    assert run_state["grammar_counts"] == counts
    trainer.constraint.counts.clear()
    trainer._load_run_state(run_state)  # what `train(resume_from_checkpoint=...)` restores the counters with
    assert trainer.constraint.counts == counts
    # evaluation's completions are counted under eval/, not as training's
    metrics = trainer.evaluate(num_episodes=2, seed=0)
    assert dict(trainer.constraint.counts) == counts
    assert metrics["eval/grammar_constrained_steps"] == round(metrics["eval/episode_length"] * 2) > 0
    assert metrics["eval/grammar_errors"] == metrics["eval/grammar_fallbacks"] == 0
    trainer.envs.close()


def constrained_rollout(trainer_class, model_path, tmp_path, env_id):
    """A constrained trainer (12 new tokens) and one rollout of it, with advantages."""
    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=12)
    trainer = trainer_class(model_path, args, env=env_id)
    start_rollout(trainer)
    batch = trainer.collect_rollout()
    trainer.compute_advantages(batch)
    return trainer, batch


def test_grammar_counters_are_summed_over_processes(tiny_vlm_path, tmp_path, monkeypatch):
    """Two processes with the same counts (an all-gather that returns this process's tensor twice) log twice them."""
    trainer, batch = constrained_rollout(FailingGrammar, tiny_vlm_path("llava_next"), tmp_path,
                                         "gym_cards/NumberLine-v0")
    monkeypatch.setattr(trainer.accelerator, "gather", lambda t: torch.cat([t, t]))
    metrics = trainer._rollout_metrics(batch)
    assert metrics["generation/grammar_errors"] == 2 * (4 - 1)
    trainer.envs.close()


# ------------------------------------------------------------------------------------------------ point 5
def test_a_token_outside_its_mask_raises_instead_of_a_finite_wrong_logprob():
    logits = torch.randn(1, 2, 5)
    allowed = pack([[[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]]])
    masked_logprobs(logits, torch.tensor([[0, 4]]), allowed, 1.0)  # inside: fine
    with pytest.raises(RuntimeError, match="position 1 of sample 0 lies outside"):
        masked_logprobs(logits, torch.tensor([[0, 1]]), allowed, 1.0)


def test_an_update_whose_replay_diverged_from_generation_raises(tiny_vlm_path, tmp_path, monkeypatch):
    trainer, batch = constrained_rollout(VLMPPOTrainer, tiny_vlm_path("llava_next"), tmp_path, "gym_cards/Blackjack-v0")
    replay = trainer.constraint.replay

    def diverged(grammars, ids, mask):  # each position gets the next position's mask
        return torch.roll(replay(grammars, ids, mask), -1, dims=1)

    monkeypatch.setattr(trainer.constraint, "replay", diverged)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    with pytest.raises(RuntimeError, match="lies outside the tokens its grammar mask allows"):
        trainer.ppo_update(batch)
    trainer.envs.close()
