"""Issue 15: grammar-constrained decoding. Every output a legal action from the first rollout on, on every built-in
env and a user's task; PPO scores the constrained distribution exactly (hand computations, ratio 1, KL 0)."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import llguidance
import numpy as np
import pytest
import torch
from gymnasium import spaces
from peft import LoraConfig
from test_trainer import assert_update_path_has_ratio_one, make_args, start_rollout
from transformers import AutoProcessor

from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo.actions import ParsedAction, parse_action
from vlm_env_ppo.agent import VLMAgent
from vlm_env_ppo.constrained import GrammarConstraint, masked_logprobs, unpack_bitmask
from vlm_env_ppo.models.value_head import concat_prompt_completion
from vlm_env_ppo.tasks import ALFWORLD, BLACKJACK, COLOR_CHOICE, EZ_POINTS, FROZEN_LAKE, NUMBER_LINE, POINTS_24, Task

EOS, PAD = 1, 0


def pack(allowed_rows) -> torch.Tensor:
    """Bool rows → packed int32 words, as llguidance writes them."""
    rows = np.asarray(allowed_rows, dtype=bool)
    words = -(-rows.shape[-1] // 32) * 32
    padded = np.zeros((*rows.shape[:-1], words), dtype=bool)
    padded[..., : rows.shape[-1]] = rows
    return torch.from_numpy(np.packbits(padded, axis=-1, bitorder="little").view(np.int32).copy())


# ------------------------------------------------------------------------------------------------ log-prob formula
def test_masked_logprobs_equal_a_hand_computation():
    """``z_y/T − logsumexp over the allowed tokens``; a forced token has log-prob 0; the entropy is the restricted
    distribution's."""
    logits = torch.tensor([[[2.0, 1.0, 0.5, -1.0, 3.0], [0.0, 0.0, 1.0, 2.0, -3.0], [1.0, 2.0, 3.0, 4.0, 5.0]]])
    ids = torch.tensor([[1, 3, 0]])
    allowed = pack([[[1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 1]]])
    temperature = 0.5
    logprobs, entropy = masked_logprobs(logits, ids, allowed, temperature, compute_entropy=True)
    z = [2 / 0.5, 1 / 0.5, 0.5 / 0.5]
    first = z[1] - math.log(sum(math.exp(v) for v in z))
    third = 1 / 0.5 - math.log(math.exp(1 / 0.5) + math.exp(5 / 0.5))
    torch.testing.assert_close(logprobs, torch.tensor([[first, 0.0, third]]), atol=1e-6, rtol=0)
    p = [math.exp(v - math.log(sum(math.exp(u) for u in z))) for v in z]
    q = [math.exp(third), 1 - math.exp(third)]
    expected_entropy = [-sum(x * math.log(x) for x in p), 0.0, -sum(x * math.log(x) for x in q)]
    torch.testing.assert_close(entropy, torch.tensor([expected_entropy]), atol=1e-6, rtol=0)
    # gradient only through the allowed logits
    logits.requires_grad_(True)
    masked_logprobs(logits, ids, allowed, temperature)[0].sum().backward()
    assert logits.grad[0, 0, 3:].abs().sum() == 0 and logits.grad[0, 1].abs().sum() == 0


def test_unpack_bitmask_round_trips():
    rng = np.random.default_rng(0)
    rows = rng.random((3, 4, 70)) < 0.3
    assert torch.equal(unpack_bitmask(pack(rows), 70), torch.from_numpy(rows))


# ------------------------------------------------------------------------------------------------ grammar walks
@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_vlm_path):
    return AutoProcessor.from_pretrained(tiny_vlm_path("llava_next")).tokenizer


TEXT_COMMANDS = ("go to countertop 1", "take apple 1 from countertop 1", 'say "hello"', "examine shelf 10", "look")


@pytest.mark.parametrize("legal", [
    NUMBER_LINE.action_names, POINTS_24.action_names, BLACKJACK.action_names, COLOR_CHOICE.action_names,
    FROZEN_LAKE.action_names, TEXT_COMMANDS,
], ids=["number_line", "points24", "blackjack", "color_choice", "frozen_lake", "text_commands"])
@pytest.mark.parametrize("budget", [12, 24, 256])
@pytest.mark.parametrize("action_only", [False, True])
def test_random_walks_through_the_answer_grammar_always_parse_and_fit(tiny_tokenizer, legal, budget, action_only):
    """Uniformly random allowed tokens (the worst a model can do): every walk ends with EOS within the budget, and the
    project's parser reads back exactly one legal action."""
    constraint = GrammarConstraint(tiny_tokenizer, 852, [EOS], [PAD], max_new_tokens=budget)
    grammar = constraint.answer_grammar(legal, action_only)
    fitting = [a for a in legal if len(constraint.action_tokens(a)) <= constraint.action_room(action_only)]
    if not fitting:
        assert grammar is None
        return
    rng = np.random.default_rng(budget)
    chosen = set()
    row = np.empty((1, constraint.words), dtype=np.int32)
    for _ in range(30):
        walk, ids = constraint.walk(grammar), []
        while not walk.finished:
            walk.next_mask(row, 0)
            allowed = np.flatnonzero(unpack_bitmask(torch.from_numpy(row), 852)[0].numpy())
            assert PAD not in allowed
            ids.append(int(rng.choice(allowed)))
            walk.advance(ids[-1])
            assert len(ids) <= budget, tiny_tokenizer.decode(ids)
        assert ids[-1] == EOS and not walk.fell_back
        parsed = parse_action(tiny_tokenizer.decode(ids, skip_special_tokens=True), legal)
        assert parsed.valid, tiny_tokenizer.decode(ids)
        chosen.add(legal[parsed.action])
    assert chosen <= set(fitting) and len(chosen) >= min(len(fitting), 2)
    assert constraint.fallbacks == 0


# ------------------------------------------------------------------------------------------------ exactness in PPO
def test_constrained_rollout_scores_exactly_ratio_one_and_zero_kl(tiny_vlm_path, tmp_path, monkeypatch):
    """Fresh LoRA policy, CoT prompt, KL penalty on: the first rollout is all legal actions, its KL to the
    adapter-disabled reference is exactly 0, the update path's ratio is 1, and each completion's log-prob equals a
    float64 hand computation: an independent llguidance matcher walked over the completion, the softmax at the
    temperature restricted to its allowed tokens (not suppressed) at each position."""
    args = make_args(tmp_path, num_envs=4, num_steps=2, total_env_steps=8, constrained_decoding=True,
                     max_new_tokens=20, kl_coef=0.05, cot_logprob_coef=1.0)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/Points24-v0",
                            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    start_rollout(trainer)
    batch = trainer.collect_rollout()
    assert bool(batch.valid.all()) and all(g is not None for g in batch.grammars)
    assert torch.equal(batch.kl, torch.zeros_like(batch.kl))
    assert max(len(c) for c in batch.completions) <= 20 and all(int(c[-1]) in trainer.eos_token_ids for c in batch.completions)
    trainer.compute_advantages(batch)
    assert_update_path_has_ratio_one(trainer, batch, monkeypatch)

    constraint, policy = trainer.constraint, trainer.model.policy
    suppressed = set(trainer.suppress_token_ids) - set(trainer.eos_token_ids)
    for k in range(4):
        ids = batch.completions[k]
        mb = batch.minibatch(torch.tensor([k]), trainer.pad_token_id)
        full = concat_prompt_completion(mb["prompt_inputs"], mb["completion_ids"], mb["completion_mask"])
        with torch.no_grad():
            logits = policy(**full, use_cache=False).logits[0, -len(ids) - 1 : -1].double() / args.temperature
        matcher = llguidance.LLMatcher(constraint.lltok, batch.grammars[k], log_level=0)
        total = 0.0
        for j, token in enumerate(ids.tolist()):
            bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
            allowed = np.flatnonzero(np.unpackbits(bits, bitorder="little")[: logits.shape[-1]])
            allowed = [a for a in allowed if a not in suppressed]
            assert token in allowed
            total += float(logits[j, token] - torch.logsumexp(logits[j, allowed], 0))
            if token not in trainer.eos_token_ids:
                assert matcher.consume_token(token)
        assert batch.logprobs.reshape(-1)[k].item() == pytest.approx(total, abs=1e-4)


# ------------------------------------------------------------------------------------------------ every env
class ShiftingLegalSubset(gym.Env):
    """A user's env whose legal actions change every step (`info["legal"]`); an illegal action raises."""

    metadata: dict = {"render_modes": []}

    def __init__(self):
        self.observation_space = spaces.Box(0, 255, (32, 32, 3), np.uint8)
        self.action_space = spaces.Discrete(6)

    def _info(self):
        k = int(self.np_random.integers(1, 4))
        self.legal = sorted(self.np_random.choice(6, size=k, replace=False).tolist())
        return {"legal": [SHIFTING.action_names[i] for i in self.legal]}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((32, 32, 3), np.uint8), self._info()

    def step(self, action):
        if int(action) not in self.legal:
            raise RuntimeError(f"illegal action {action}, legal {self.legal}")
        self.t += 1
        reward = float(action == self.legal[0])
        return np.zeros((32, 32, 3), np.uint8), reward, self.t >= 3, False, self._info()


SHIFTING = Task("ShiftingLegalSubset", ("north", "south", "east", "west", "wait", "pick up"),
                "Pick the first legal action.", admissible_actions=lambda info: info.get("legal") or ())


def _env_cases():
    cases = [(env_id, {}, 18) for env_id in ("gym_cards/NumberLine-v0", "gym_cards/EZPoints-v0",
                                               "gym_cards/Points24-v0", "gym_cards/Blackjack-v0",
                                               "vlm_env_ppo/ColorChoice-v0", "MiniGrid-Empty-5x5-v0", "FrozenLake-v1")]
    return cases + [("vlm_env_ppo/TextWorld-v0", "textworld", 40), ("vlm_env_ppo/ALFWorld-v0", "alfworld", 40),
                    ("shifting", {}, 18)]


@pytest.mark.parametrize("env_id, env_kwargs, max_new_tokens", _env_cases(), ids=lambda x: str(x)[:24])
def test_no_invalid_output_in_any_update_or_evaluation(tiny_vlm_path, tmp_path, request, env_id, env_kwargs,
                                                       max_new_tokens):
    """A random tiny model, chain-of-thought prompts and a tight budget: invalid-action rate exactly 0 in every
    update and in greedy and sampled evaluation, no completion cut, no grammar fallback."""
    task = None
    if env_kwargs == "textworld":
        env_kwargs = {"game_files": request.getfixturevalue("textworld_games")}
    elif env_kwargs == "alfworld":
        env_kwargs = {"data_dir": str(request.getfixturevalue("alfworld_data"))}
    if env_id == "shifting":
        env_id, task = ShiftingLegalSubset, SHIFTING
    args = make_args(tmp_path, num_envs=2, num_steps=3, total_env_steps=12, constrained_decoding=True,
                     max_new_tokens=max_new_tokens, env_kwargs=env_kwargs or None)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env=env_id, task=task)
    try:
        trainer.train()
        logs = [h for h in trainer.state.log_history if "env/invalid_action_rate" in h]
        assert len(logs) == 2
        for log in logs:
            assert log["env/invalid_action_rate"] == 0.0 and log["generation/truncated_completions"] == 0
            assert log["generation/grammar_fallbacks"] == 0 and log["generation/grammar_errors"] == 0
            assert log["env/errors"] == 0
        for greedy in (True, False):
            result = trainer.evaluate(num_episodes=2, seed=0, greedy=greedy)
            assert result["eval/invalid_action_rate"] == 0.0
    finally:
        trainer.envs.close()


# ------------------------------------------------------------------------------------------------ user grammars
class LetterTrainer(VLMPPOTrainer):
    """A user's own answer format, ``ACTION: <letter>``, with its grammar (a regex) for constrained decoding."""

    def parse_action(self, completion, info):
        text = completion.strip()
        names = self.task.action_names
        if text.startswith("ACTION: ") and text[8:] in names:
            return ParsedAction(names.index(text[8:]), True, 0, "ok")
        return ParsedAction(None, False, None, "no_action_key")

    def answer_grammar(self, info):
        return llguidance.LLMatcher.grammar_from_regex("ACTION: (" + "|".join(self.task.action_names) + ")")


def test_a_custom_parser_supplies_its_own_grammar(tiny_vlm_path, tmp_path):
    task = Task("gym_cards/NumberLine-v0", ("a", "b"), "Move left (a) or right (b).")
    args = make_args(tmp_path, num_envs=2, num_steps=2, total_env_steps=8, constrained_decoding=True,
                     max_new_tokens=12)
    trainer = LetterTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0", task=task)
    start_rollout(trainer)
    batch = trainer.collect_rollout()
    assert bool(batch.valid.all()), batch.texts
    assert all(t.strip() in ("ACTION: a", "ACTION: b") for t in batch.texts)


def test_custom_parser_without_grammar_is_unconstrained_and_says_so(tiny_vlm_path, tmp_path, caplog):
    class OwnParser(VLMPPOTrainer):
        def parse_action(self, completion, info):
            return self.task.parse_action(completion, info)

    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=12)
    with caplog.at_level("WARNING"):
        trainer = OwnParser(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0")
    assert "answer_grammar" in caplog.text
    start_rollout(trainer)
    assert trainer.collect_rollout().grammars == [None] * 4


def test_a_grammar_that_never_compiles_is_an_error_and_a_later_failing_one_is_counted(tiny_vlm_path, tmp_path):
    """Issue 24: a grammar that fails on the very first step is a bug (one warning, then a whole run unconstrained
    and invalid, was the old behaviour): an error. One that fails after others compiled is counted, and its step runs
    unconstrained."""
    class BadGrammar(VLMPPOTrainer):
        def answer_grammar(self, info):
            return "start: this is not lark ((("

    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=12)
    trainer = BadGrammar(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0")
    with pytest.raises(ValueError, match="cannot compile on the first step"):
        trainer.train()

    class SometimesBadGrammar(VLMPPOTrainer):
        calls = 0

        def answer_grammar(self, info):
            type(self).calls += 1
            return super().answer_grammar(info) if type(self).calls == 1 else "start: this is not lark((("

    trainer = SometimesBadGrammar(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0")
    trainer.train()
    log = [h for h in trainer.state.log_history if "generation/grammar_errors" in h][-1]
    assert log["generation/grammar_errors"] == 7


def test_configuration_errors(tiny_vlm_path, tmp_path):
    with pytest.raises(ValueError, match="top_p=1"):
        VLMPPOConfig(output_dir=str(tmp_path), constrained_decoding=True, top_p=0.9)
    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=6)
    with pytest.raises(ValueError, match="too small for constrained decoding"):
        VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/Points24-v0")


# ------------------------------------------------------------------------------------------------ saved agent
def test_saved_agent_records_and_honours_constrained_decoding(tiny_vlm_path, tmp_path, capsys):
    from vlm_env_ppo.cli import evaluate_command

    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=14)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/Blackjack-v0")
    trainer.train()
    path = str(tmp_path / "agent")
    trainer.save_model(path)
    trainer.envs.close()
    assert json.loads((tmp_path / "agent" / "vlm_env_ppo.json").read_text())["constrained_decoding"] is True
    agent = VLMAgent.from_pretrained(path)
    assert agent.constraint is not None
    for greedy in (True, False):
        assert agent.evaluate(num_episodes=3, seed=0, greedy=greedy).invalid_action_rate == 0.0
    assert VLMAgent.from_pretrained(path, constrained_decoding=False).constraint is None
    metrics = evaluate_command([path, "--num_episodes", "2"])
    assert metrics["eval/invalid_action_rate"] == 0.0 and "greedy, constrained" in capsys.readouterr().out


def test_a_fallback_is_counted_once_per_completion_not_per_replay(tiny_tokenizer):
    """A grammar that rejects what was generated falls back in generation (counted once); the update's replays of
    that completion, once per epoch, fall back the same way but are not counted again."""
    constraint = GrammarConstraint(tiny_tokenizer, 852, [EOS], [PAD], max_new_tokens=12)
    grammar = constraint.answer_grammar(NUMBER_LINE.action_names, action_only=True)
    ids = torch.tensor([[tiny_tokenizer.encode("x", add_special_tokens=False)[0], EOS]])
    walk, row = constraint.walk(grammar), np.empty((1, constraint.words), dtype=np.int32)
    walk.next_mask(row, 0)
    walk.advance(int(ids[0, 0]))  # not allowed by the grammar: continues unconstrained
    assert walk.fell_back and constraint.fallbacks == 1
    for _ in range(3):
        replayed = constraint.replay([grammar], ids, torch.ones_like(ids))
        assert torch.equal(replayed[0, 1], torch.from_numpy(constraint.base_mask))  # unconstrained after the fallback
    assert constraint.fallbacks == 1
