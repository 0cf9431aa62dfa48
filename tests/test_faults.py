"""Fault injection (issue 7): broken envs, NaNs, garbage completions and bad configs.

Each test injects a known number of faults and checks that training completes with counters that match exactly, or
stops with the documented error and a loadable checkpoint. docs/errors.md lists every error tested here.
"""

import ast
import json
import re
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_trainer import make_args, start_rollout
from transformers import AutoProcessor, AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
from transformers.trainer_pt_utils import safe_globals

import vlm_env_ppo
from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo.agent import VLMAgent, generate_completions
from vlm_env_ppo.models.loading import get_tokenizer, load_reference_model
from vlm_env_ppo.rollout import EnvFaultError, FaultTolerantEnv, make_vector_env, unbatch_infos
from vlm_env_ppo.tasks import COLOR_CHOICE, get_task
from vlm_env_ppo.trainer import NumericFaultError

NUMBER_LINE = "gym_cards/NumberLine-v0"
DOCS = Path(__file__).parent.parent / "docs" / "errors.md"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models gain nothing from intra-op threads, and on a loaded 2-core machine spinning OpenMP threads
    make these tests ~8x slower (measured: 12 s instead of ~90 s for this file)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- fault injectors
class ScriptedFaults(gym.Wrapper):
    """Raises on the ``step``/``reset`` calls listed in a log shared by every copy (call numbers start at 1)."""

    def __init__(self, env, log):
        super().__init__(env)
        self.log = log

    def step(self, action):
        self.log["step"] += 1
        n = self.log["step"]
        if n in self.log.get("raise_on_step", ()) or n >= self.log.get("raise_from_step", float("inf")):
            self.log["raised"] += 1
            raise RuntimeError(f"injected step fault at call {n}")
        return self.env.step(action)

    def reset(self, **kwargs):
        self.log["reset"] += 1
        if self.log["reset"] in self.log.get("raise_on_reset", ()):
            self.log["raised"] += 1
            raise ValueError(f"injected reset fault at call {self.log['reset']}")
        return self.env.reset(**kwargs)


def faulty_number_line(**schedule):
    log = {"step": 0, "reset": 0, "raised": 0, **schedule}
    return log, lambda: ScriptedFaults(gym.make(NUMBER_LINE), log)


class NaNInjector:
    """Forward hook on the policy VLM: NaN logits (and, with ``hidden``, a NaN last hidden state, so the value head's
    values are NaN too) on chosen calls of one kind: ``"update"`` (PPO forward, training mode), ``"score"`` (rollout
    log-probs), ``"generate"`` (a decoding step)."""

    def __init__(self, policy, kind, calls, hidden=False, on_inject=None):
        self.kind, self.calls, self.hidden, self.on_inject = kind, calls, hidden, on_inject
        self.count = self.injected = 0
        self.handle = policy.register_forward_hook(self, with_kwargs=True)

    @staticmethod
    def kind_of(module, kwargs):
        if module.training:
            return "update"
        if kwargs.get("use_cache") is False:
            return "score" if kwargs.get("logits_to_keep", 0) > 1 else "value"
        return "generate"

    def __call__(self, module, args, kwargs, output):
        if self.kind_of(module, kwargs) != self.kind:
            return None
        self.count += 1
        if not self.calls(self.count):
            return None
        self.injected += 1
        if self.on_inject is not None:
            self.on_inject()
        output.logits = output.logits + float("nan")
        if self.hidden:
            output.hidden_states = (*output.hidden_states[:-1], output.hidden_states[-1] + float("nan"))
        return output


def count_optimizer_steps():
    counter = {"n": 0}

    def hook(optimizer, args, kwargs):
        counter["n"] += 1

    from torch.optim.optimizer import register_optimizer_step_post_hook

    return counter, register_optimizer_step_post_hook(hook)


def finite_params(module):
    return all(torch.isfinite(p).all() for p in module.parameters())


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def files(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


class Recorder(TrainerCallback):
    """Per update: the trainer's run state and torch RNG state at its end, and the files of its checkpoint."""

    def __init__(self):
        self.trainer, self.run_states, self.rng, self.saved, self.inodes = None, {}, {}, {}, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.run_states[state.global_step] = json.loads(json.dumps(self.trainer._run_state()))
        self.rng[state.global_step] = torch.random.get_rng_state()

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.saved[state.global_step], self.inodes[state.global_step] = files(folder), folder.stat().st_ino


# ----------------------------------------------------------------------------------------------- env faults (tier 2)
def test_fault_tolerant_env_recovers_and_limits_consecutive_faults():
    log, factory = faulty_number_line(raise_on_step={2, 3, 5}, raise_on_reset={2})
    env = FaultTolerantEnv(factory, max_consecutive_errors=2)
    env.reset(seed=0)
    obs, info = env.reset(seed=1)  # reset call 2 raises: recreated, reset again
    assert "env_error" in info and env.errors == 1 and obs.shape == (300, 300, 3)
    env.step(0)  # step 1 ok: the consecutive count goes back to 0
    for _ in range(2):  # steps 2 and 3 raise: truncated, reward 0, no exception
        obs, reward, terminated, truncated, info = env.step(0)
        assert (reward, terminated, truncated) == (0.0, False, True) and "injected step" in info["env_error"]
    assert (env.errors, env.consecutive_errors) == (3, 2)
    env.step(0)  # ok
    env.step(0)  # step 5 raises: 1 in a row
    assert (env.errors, env.consecutive_errors, log["raised"]) == (4, 1, 4)

    log, factory = faulty_number_line(raise_from_step=1)
    env = FaultTolerantEnv(factory, max_consecutive_errors=2)
    env.reset(seed=0)
    env.step(0), env.step(0)
    with pytest.raises(EnvFaultError, match=r"3 times in a row.*max_consecutive_env_errors=2"):
        env.step(0)


def test_fault_recovery_is_reproducible():
    def run():
        _, factory = faulty_number_line(raise_on_step={1, 3})
        env = FaultTolerantEnv(factory)
        frames = [env.reset(seed=7)[0]]
        frames += [env.step(1)[0] for _ in range(4)]
        return frames

    assert all(np.array_equal(a, b) for a, b in zip(run(), run()))


def test_user_vector_env_is_used_as_is():
    vector = gym.vector.SyncVectorEnv(
        [lambda: gym.make(NUMBER_LINE)] * 2, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    assert make_vector_env(vector, 2, max_consecutive_errors=3) is vector
    wrapped = make_vector_env(NUMBER_LINE, 2, max_consecutive_errors=3)
    assert all(isinstance(e, FaultTolerantEnv) for e in wrapped.envs)


# ----------------------------------------------------------------------------------------------- env faults (tier 3)
def test_env_faults_are_survived_counted_and_not_bootstrapped(tiny_vlm_path, tmp_path):
    # Step calls alternate env 0, env 1, so call c is rollout step (c - 1) // 2 of env (c - 1) % 2.
    log, factory = faulty_number_line(raise_on_step={2, 5, 11, 13}, raise_on_reset={2})
    args = make_args(tmp_path, num_steps=4, total_env_steps=16, max_consecutive_env_errors=2)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env=factory, task=get_task(NUMBER_LINE))
    start_rollout(trainer)  # reset call 2 (env 1) raises
    batch = trainer.collect_rollout()  # step calls 1..8: 2 -> (t=0, env 1), 5 -> (t=2, env 0)
    assert trainer.env_errors == log["raised"] == 3
    for t, e in [(0, 1), (2, 0)]:
        assert batch.truncated[t, e] and not batch.terminated[t, e]
        assert batch.env_rewards[t, e] == 0 and batch.final_values[t, e] == 0  # no bootstrap from a broken state
    assert torch.isfinite(batch.values).all()

    trainer.train()  # step calls 9..24: 11 and 13 are env 0 twice in a row (= the limit, not over it)
    assert log["step"] == 24 and log["raised"] == 5
    logs = [h for h in trainer.state.log_history if "env/errors" in h]
    assert [h["env/errors"] for h in logs] == [5, 5] and trainer.env_errors == 5
    assert trainer.state.global_step == args.num_updates == 2


@pytest.mark.parametrize("save_steps", [None, 1], ids=["written-at-the-fault", "already-saved"])
def test_env_fault_limit_stops_with_a_loadable_checkpoint(tiny_vlm_path, tmp_path, save_steps):
    # 2 steps x 2 envs per update; every step call from the 7th raises: update 2's last step and update 3's first are
    # two faults in a row per env (the limit), update 3's second step is env 0's third. The cut rollout of update 3
    # took env steps and ended 2 episodes (truncated by the faults): none of that may reach the checkpoint.
    log, factory = faulty_number_line(raise_from_step=7)
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {}
    args = make_args(tmp_path, total_env_steps=12, max_consecutive_env_errors=2, **saving)
    recorder = Recorder()
    trainer = VLMPPOTrainer(
        tiny_vlm_path("llava_next"), args, env=factory, task=get_task(NUMBER_LINE), callbacks=[recorder]
    )
    recorder.trainer = trainer
    with pytest.raises(EnvFaultError, match=r"max_consecutive_env_errors=2.*checkpoint-2") as caught:
        trainer.train()
    assert log["raised"] == 5 and isinstance(caught.value.__cause__, RuntimeError)
    checkpoint = Path(caught.value.checkpoint)
    assert checkpoint == Path(args.output_dir) / "checkpoint-2"
    # Every counter (and the RNG states) is the one at the end of update 2, like the weights.
    run_state = json.loads((checkpoint / "vlm_env_ppo_state.json").read_text())
    assert run_state == recorder.run_states[2] == trainer._run_state()
    assert run_state["env_errors"] == 2 and run_state["env_steps"] == 2 * 4
    with safe_globals():  # (numpy's state is in it: allowed the way Trainer loads it)
        rng = torch.load(checkpoint / "rng_state.pth", weights_only=True)
    assert torch.equal(rng["cpu"], recorder.rng[2])
    if save_steps:  # the clean checkpoint of update 2 was kept as it was, not written again
        assert files(checkpoint) == recorder.saved[2] and checkpoint.stat().st_ino == recorder.inodes[2]
    agent = VLMAgent.from_pretrained(str(checkpoint), task=get_task(NUMBER_LINE))
    expected = state(trainer.model.policy)
    assert all(torch.equal(v, expected[k]) for k, v in agent.policy.state_dict().items())


# ----------------------------------------------------------------------------------------------- numeric faults
def test_nan_losses_skip_exactly_those_minibatches(tiny_vlm_path, tmp_path):
    # 2 updates x 2 epochs x 2 minibatches of one micro-batch: 8 PPO forwards; NaN logits on the 2nd and 7th.
    args = make_args(tmp_path, num_ppo_epochs=2, per_device_train_batch_size=2)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env=NUMBER_LINE)
    before = state(trainer.model)
    injector = NaNInjector(trainer.model.policy, "update", lambda n: n in (2, 7))
    steps, handle = count_optimizer_steps()
    try:
        trainer.train()
    finally:
        handle.remove()
        injector.handle.remove()
    assert injector.count == 8 and injector.injected == 2
    assert trainer.skipped_minibatches == 2 and steps["n"] == 8 - 2
    logs = [h for h in trainer.state.log_history if "train/skipped_minibatches" in h]
    assert [h["train/skipped_minibatches"] for h in logs] == [1, 2]
    assert all(np.isfinite(h[k]) for h in logs for k in ("losses/policy_loss", "losses/value_loss", "losses/grad_norm"))
    assert finite_params(trainer.model)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_nan_limit_stops_with_the_last_good_weights(tiny_vlm_path, tmp_path):
    # Update 1: 4 good PPO forwards. Update 2: the 5th is good, every later one NaN: skipped (1 allowed), then stop.
    # Update 2 then ends early: its rollout and its one optimizer step are in checkpoint-2; checkpoint-1 is untouched.
    args = make_args(
        tmp_path, num_ppo_epochs=2, per_device_train_batch_size=2, max_skipped_minibatches=1,
        save_strategy="steps", save_steps=1,
    )  # fmt: skip
    recorder = Recorder()
    # One-step episodes: a consistent checkpoint has as many episodes as env steps.
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="vlm_env_ppo/ColorChoice-v0", callbacks=[recorder])
    recorder.trainer = trainer
    good = {}
    injector = NaNInjector(
        trainer.model.policy, "update", lambda n: n >= 6, on_inject=lambda: good.setdefault("w", state(trainer.model))
    )
    try:
        with pytest.raises(NumericFaultError, match=r"max_skipped_minibatches=1.*checkpoint-2") as caught:
            trainer.train()
    finally:
        injector.handle.remove()
    assert injector.injected == 2 and trainer.skipped_minibatches == 2
    assert Path(caught.value.checkpoint) == Path(args.output_dir) / "checkpoint-2"
    assert files(Path(args.output_dir) / "checkpoint-1") == recorder.saved[1]
    now = state(trainer.model)
    assert all(torch.equal(now[k], v) for k, v in good["w"].items()), "a skipped minibatch changed the weights"
    agent = VLMAgent.from_pretrained(caught.value.checkpoint)
    saved = {f"policy.{k}": v for k, v in agent.policy.state_dict().items()}
    saved |= {f"value_head.{k}": v for k, v in agent.value_head.state_dict().items()}
    assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in now)
    checkpoint = Path(caught.value.checkpoint)
    run_state = json.loads((checkpoint / "vlm_env_ppo_state.json").read_text())
    assert run_state["skipped_minibatches"] == 2
    assert run_state["env_steps"] == run_state["total_episodes"] == 2 * 4 == trainer.env_steps
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    # the schedule is at the end of update 2, as if its last two minibatches had been skipped
    scheduler = torch.load(checkpoint / "scheduler.pt", weights_only=True)
    assert scheduler["last_epoch"] == 2 * args.optimizer_steps_per_update


def test_nan_in_rollout_is_contained(tiny_vlm_path, tmp_path):
    """NaN logits in one decoding step must not crash sampling; NaN log-probs and values of one rollout step (the 2
    samples of step t=0, flat indices 0 and 1: no earlier step of their episodes reads them) must not poison GAE or
    the whitening: exactly the minibatches holding one of them are skipped, the others train."""
    args = make_args(tmp_path, num_ppo_epochs=2, per_device_train_batch_size=2)
    generator = torch.Generator().manual_seed(args.seed)  # the update's shuffling (`ppo_update`)
    minibatches = [mb for _ in range(2) for mb in torch.randperm(4, generator=generator).split(2)]
    expected = sum(bool({0, 1} & set(mb.tolist())) for mb in minibatches)
    assert expected < len(minibatches), "the check needs some clean minibatches"
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env=NUMBER_LINE)
    in_generate = NaNInjector(trainer.model.policy, "generate", lambda n: n == 1)
    in_scoring = NaNInjector(trainer.model.policy, "score", lambda n: n == 1, hidden=True)
    try:
        trainer.train()
    finally:
        in_generate.handle.remove()
        in_scoring.handle.remove()
    assert in_generate.injected == 1 and in_scoring.injected == 1
    first, second = [h for h in trainer.state.log_history if "train/skipped_minibatches" in h]
    assert (first["train/nonfinite_rollout_samples"], first["train/skipped_minibatches"]) == (2, expected)
    assert (second["train/nonfinite_rollout_samples"], second["train/skipped_minibatches"]) == (0, expected)
    assert np.isfinite(first["values/mean"]) and np.isfinite(first["losses/policy_loss"])
    assert finite_params(trainer.model)


def test_nonfinite_rollout_samples_do_not_spread_through_gae():
    """Tier 2, no model: a NaN value mid-trajectory is masked with the earlier steps of its episode (their advantages
    were bootstrapped through it) and nothing else; every other advantage is finite and whitened."""
    from types import SimpleNamespace

    from vlm_env_ppo.buffer import RolloutBatch

    batch = RolloutBatch(num_steps=4, num_envs=2)
    batch.values = torch.linspace(-1, 1, 8).view(4, 2)
    batch.rewards = torch.ones(4, 2)
    batch.values[2, 0] = float("nan")
    batch.logprobs[1, 1] = float("inf")
    batch.terminated[0, 0] = True  # env 0's first episode ended after step 0: step 0 does not read step 2
    fake = SimpleNamespace(
        args=SimpleNamespace(
            gamma=0.9, lam=0.95, whiten_advantages=True, advantage_std_floor=0.0, advantage_estimator="gae"
        ),
        accelerator=SimpleNamespace(device="cpu", gather=lambda t: t),
    )
    VLMPPOTrainer.compute_advantages(fake, batch)
    bad = torch.zeros(4, 2, dtype=torch.bool)
    bad[1:3, 0] = bad[0:2, 1] = True  # the non-finite steps and the earlier steps of their episodes
    assert fake._nonfinite_samples == 2
    assert batch.advantages[bad].isnan().all() and batch.returns[bad].isnan().all()
    good = batch.advantages[~bad]
    assert torch.isfinite(good).all() and torch.isfinite(batch.returns[~bad]).all()
    assert abs(float(good.mean())) < 1e-5 and abs(float(good.std(unbiased=False)) - 1) < 1e-3


# ----------------------------------------------------------------------------------------------- model-output faults
def scripted_generate(policy, script):
    """Replace ``policy.generate``: each call returns the prompt plus the next completions of ``script`` (token ids),
    right-padded to ``max_new_tokens``, as `generate` does."""
    calls = iter(script)

    def generate(input_ids, max_new_tokens, pad_token_id, **kwargs):
        rows = [next(calls) for _ in range(input_ids.shape[0])]
        out = torch.full((input_ids.shape[0], max_new_tokens), pad_token_id, dtype=torch.long)
        for i, ids in enumerate(rows):
            assert len(ids) <= max_new_tokens
            out[i, : len(ids)] = torch.tensor(ids)
        return torch.cat([input_ids, out], dim=1)

    policy.generate = generate


def test_garbage_completions_take_the_invalid_action_path(tiny_vlm_path, tmp_path):
    max_new = 16
    args = make_args(tmp_path, num_steps=4, total_env_steps=8, max_new_tokens=max_new, invalid_action_penalty=-1.0)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env=NUMBER_LINE)
    tok = get_tokenizer(trainer.processing_class)
    enc = lambda text: tok.encode(text, add_special_tokens=False)
    ids = tok.convert_tokens_to_ids
    eos = [tok.eos_token_id]
    lone_bytes = ids(["Ã", "Ģ", "Ã"])  # byte-level tokens that are no valid UTF-8 on their own
    specials = ids(["<|user|>", "<s>", "<|assistant|>", tok.unk_token])
    script = [
        eos,  # empty
        enc('{"thoughts": "' + "the target is larger so I should go up " * 4)[:max_new],  # cut by max_new_tokens
        enc('{"action": "') + eos,  # cut right after the key
        enc('{"action": "+-"}') + eos,  # two actions
        specials + eos,  # only special tokens
        specials[:1] + enc('{"action": "+"}') + specials[2:3] + eos,  # specials around a valid answer: valid
        lone_bytes + eos,  # undecodable bytes only
        enc('{"action": "') + lone_bytes + enc('"}') + eos,  # undecodable bytes as the value
    ]
    assert len(script[1]) == max_new and eos[0] not in script[1]
    scripted_generate(trainer.model.policy, script)
    trainer.train()
    logs = trainer.state.log_history[-1]
    reasons = {k.rsplit("/", 1)[1]: v for k, v in logs.items() if k.startswith("env/invalid_reason/")}
    assert reasons == {"no_action_key": 4, "no_legal_action": 2, "multiple_actions": 1}
    assert logs["env/invalid_action_rate"] == pytest.approx(7 / 8)
    assert logs["generation/truncated_completions"] == 1 and logs["generation/parse_errors"] == 0
    assert np.isfinite(logs["losses/policy_loss"])


class _StubPolicy:
    """Just enough of a model for `generate_completions`: returns the prompt plus fixed completion ids."""

    def __init__(self, completions, eos_id):
        self.completions = completions
        self.generation_config = type("GenerationConfig", (), {"eos_token_id": eos_id})()

    def generate(self, input_ids, pad_token_id, max_new_tokens, **kwargs):
        assert kwargs["remove_invalid_values"] is True  # NaN logits must not crash sampling
        out = torch.full((len(self.completions), max_new_tokens), pad_token_id)
        for i, c in enumerate(self.completions):
            out[i, : len(c)] = torch.tensor(c)
        return torch.cat([input_ids, out], dim=1)


def test_decoding_strips_image_and_special_tokens_and_survives_bad_bytes(tiny_vlm_path):
    processor = AutoProcessor.from_pretrained(tiny_vlm_path("llava_next"))
    tok = processor.tokenizer
    image, eos = tok.convert_tokens_to_ids("<image>"), tok.eos_token_id
    answer = tok.encode('{"action": "+"}', add_special_tokens=False)
    completions = [[image] * 3 + answer + [eos], tok.convert_tokens_to_ids(["Ã", "Ã"]) + [eos, image]]
    prompt = {"input_ids": torch.ones((2, 3), dtype=torch.long)}
    _, mask, texts = generate_completions(
        _StubPolicy(completions, eos), processor, prompt, greedy=True, temperature=1.0, top_p=1.0, max_new_tokens=12,
        suppress_token_ids=[image], pad_token_id=tok.pad_token_id,
    )
    assert texts[0] == '{"action": "+"}' and "<image>" not in texts[0]
    assert set(texts[1]) == {"\ufffd"}  # replacement characters, no exception
    assert mask[1].tolist()[:3] == [1, 1, 1] and mask[1, 3:].sum() == 0  # the image token after EOS is cut
    assert get_task(NUMBER_LINE).parse_action(texts[0]).action == 1
    assert get_task(NUMBER_LINE).parse_action(texts[1]).reason == "no_action_key"


# ----------------------------------------------------------------------------------------------- config errors
# (overrides, message): every config error of docs/errors.md, with a fragment of its message.
CONFIG_ERRORS = [
    ("num_envs", {"num_envs": 0}, "`num_envs` must be an int > 0"),
    ("num_steps", {"num_steps": -1}, "`num_steps` must be an int > 0"),
    ("num_steps", {"num_steps": True}, "`num_steps` must be an int > 0, got True"),
    ("total_env_steps", {"total_env_steps": 0}, "`total_env_steps` must be an int > 0"),
    ("num_ppo_epochs", {"num_ppo_epochs": 0}, "`num_ppo_epochs` must be an int > 0"),
    ("max_new_tokens", {"max_new_tokens": 1.5}, "`max_new_tokens` must be an int > 0"),
    ("temperature", {"temperature": 0.0}, "`temperature` must be > 0"),
    ("temperature", {"temperature": float("nan")}, "`temperature` must be a finite number"),
    ("eval_episodes", {"eval_episodes": 0}, "`eval_episodes` must be an int > 0"),
    ("per_device_train_batch_size", {"per_device_train_batch_size": 0}, "`per_device_train_batch_size` must be an int"),
    ("vf_coef", {"vf_coef": -0.5}, "`vf_coef` must be >= 0"),
    ("vf_coef", {"vf_coef": float("inf")}, "`vf_coef` must be a finite number"),
    ("kl_coef", {"kl_coef": -0.1}, "`kl_coef` must be >= 0"),
    ("cliprange", {"cliprange": float("nan")}, "`cliprange` must be >= 0"),
    ("learning_rate", {"learning_rate": -1e-5}, "`learning_rate` must be >= 0"),
    ("weight_decay", {"weight_decay": -0.1}, "`weight_decay` must be >= 0"),
    ("adam_epsilon", {"adam_epsilon": -1.0}, "`adam_epsilon` must be >= 0"),
    ("invalid_action_penalty", {"invalid_action_penalty": float("-inf")}, "`invalid_action_penalty` must be a finite"),
    ("max_grad_norm", {"max_grad_norm": 0.0}, "`max_grad_norm` must be a finite number > 0"),
    ("invalid_action_index", {"invalid_action_index": -1}, "`invalid_action_index` must be an int >= 0"),
    ("max_consecutive_env_errors", {"max_consecutive_env_errors": -1}, "`max_consecutive_env_errors` must be an int"),
    ("max_skipped_minibatches", {"max_skipped_minibatches": 1.5}, "`max_skipped_minibatches` must be an int >= 0"),
    ("history_length", {"history_length": -2}, "`history_length` must be an int >= 0"),
    ("eval_seed", {"eval_seed": -1}, "`eval_seed` must be an int >= 0"),
    ("env_kwargs", {"env_kwargs": "{not json"}, "`env_kwargs` must be a dict or a JSON object string"),
    ("model_init_kwargs", {"model_init_kwargs": "[1, 2]"}, "`model_init_kwargs` must be a dict or a JSON object"),
    ("cliprange_value", {"cliprange_value": 0.0}, "`cliprange_value` must be > 0, or None"),
    ("gamma", {"gamma": 1.5}, r"`gamma` must be in \[0, 1\]"),
    ("lam", {"lam": -0.1}, r"`lam` must be in \[0, 1\]"),
    ("cot_logprob_coef", {"cot_logprob_coef": 2.0}, r"`cot_logprob_coef` must be in \[0, 1\]"),
    ("top_p", {"top_p": 0.0}, r"`top_p` must be in \(0, 1\]"),
    ("constrained_decoding", {"constrained_decoding": True, "top_p": 0.9}, "needs `top_p=1`"),
    ("invalid_action", {"invalid_action": "skip"}, "`invalid_action` must be one of"),
    ("kl_estimator", {"kl_estimator": "k2"}, "`kl_estimator` must be one of"),
    ("ref_model_quantization", {"ref_model_quantization": "2bit"}, "`ref_model_quantization` must be one of"),
    ("value_head_hidden_sizes", {"value_head_hidden_sizes": [64, 0]}, "`value_head_hidden_sizes` must be positive"),
    ("value_head_hidden_sizes", {"value_head_hidden_sizes": ["a"]}, "`value_head_hidden_sizes` must be positive"),
    ("model_init_kwargs", {"env_kwargs": {"a": 1}, "model_init_kwargs": 3}, "`model_init_kwargs` must be a dict or a JSON"),
    ("num_mini_batches", {"num_mini_batches": 2, "mini_batch_size": 2}, "Set either `num_mini_batches` or"),
    ("num_mini_batches", {"num_envs": 3, "num_steps": 3, "num_mini_batches": 2}, r"`num_mini_batches` \(2\) must be"),
    ("mini_batch_size", {"num_mini_batches": None, "mini_batch_size": 3}, r"mini_batch_size \(3\) must divide"),
    ("per_device_train_batch_size", {"num_mini_batches": None, "mini_batch_size": 2, "per_device_train_batch_size": 3},
     r"per_device_train_batch_size \(3\) must divide mini_batch_size"),
    ("gradient_accumulation_steps", {"gradient_accumulation_steps": 3}, r"gradient_accumulation_steps \(3\) disagrees"),
    ("total_env_steps", {"total_env_steps": 3}, r"total_env_steps \(3\) is smaller than one update"),
    ("advantage_estimator", {"advantage_estimator": "ppo"}, r"`advantage_estimator` must be one of"),
    ("gigpo_step_weight", {"gigpo_step_weight": -1.0}, r"`gigpo_step_weight` must be a finite number >= 0"),
    ("gigpo_gamma", {"gigpo_gamma": 1.5}, r"`gigpo_gamma` must be in \[0, 1\]"),
    ("rollout_backend", {"rollout_backend": "vllm-gpu"}, r"`rollout_backend` must be one of"),
    ("vllm_gpu_memory_utilization", {"vllm_gpu_memory_utilization": 0.0}, r"`vllm_gpu_memory_utilization` must be in"),
    ("vllm_gpu_memory_utilization", {"vllm_gpu_memory_utilization": 1.5}, r"`vllm_gpu_memory_utilization` must be in"),
    ("vllm_importance_sampling_cap", {"vllm_importance_sampling_cap": 0.5}, r"`vllm_importance_sampling_cap` must be a"),
    ("vllm_importance_sampling_cap", {"vllm_importance_sampling_cap": float("inf")},
     r"`vllm_importance_sampling_cap` must be a finite number >= 1"),
    ("vllm_max_model_len", {"vllm_max_model_len": 0}, r"`vllm_max_model_len` must be an int > 0"),
    ("vllm_engine_kwargs", {"vllm_engine_kwargs": "{not json"}, r"`vllm_engine_kwargs` must be a dict or a JSON"),
    ("group_size", {"advantage_estimator": "grpo", "group_size": 1}, r"`group_size` must be an int >= 2"),
    ("group_size", {"advantage_estimator": "grpo", "num_envs": 3, "group_size": 2, "num_mini_batches": 1},
     r"`num_envs` \(3\) must be a multiple of `group_size` \(2\)"),
]


@pytest.mark.parametrize("option, overrides, message", CONFIG_ERRORS,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(CONFIG_ERRORS)])
def test_config_errors_are_raised_with_their_documented_message(tmp_path, option, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def documented_config_errors() -> dict[str, list[str]]:
    """docs/errors.md §1 as {option: [message pattern]}: each `{placeholder}` of a message matches any text."""
    section = DOCS.read_text().split("## 1.")[1].split("## 2.")[0]
    table: dict[str, list[str]] = {}
    for option, message in re.findall(r"^\| `(\w+)` \|[^|]*\| (.*) \|$", section, flags=re.MULTILINE):
        span = re.match(r"``\s(.*?)\s``", message) or re.match(r"`(.*)`$", message)
        table.setdefault(option, []).append(re.sub(r"\\\{\w+\\\}", ".*", re.escape(span.group(1))))
    return table


def test_every_config_error_is_in_the_docs_table(tmp_path):
    """Each error's actual message is one of its option's rows in docs/errors.md, and the cases above reach every
    `raise ValueError` in config.py, so a new check without a row (or a reworded message) fails here."""
    table = documented_config_errors()
    config_file = str(Path(vlm_env_ppo.config.__file__))
    reached: set[int] = set()

    def tracer(frame, event, arg):
        if frame.f_code.co_filename != config_file:
            return None
        if event == "line":
            reached.add(frame.f_lineno)
        return tracer

    for option, overrides, _ in CONFIG_ERRORS:
        sys.settrace(tracer)
        try:
            with pytest.raises(ValueError) as err:
                make_args(tmp_path, **overrides)
        finally:
            sys.settrace(None)
        patterns = table.get(option, [])
        assert any(re.fullmatch(p, str(err.value), flags=re.DOTALL) for p in patterns), (option, str(err.value))
    raises = {
        node.lineno
        for node in ast.walk(ast.parse(Path(config_file).read_text()))
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and getattr(node.exc.func, "id", "") == "ValueError"
    }
    assert raises and raises <= reached, f"config.py lines {sorted(raises - reached)} raise errors no case reaches"


def test_json_strings_from_the_command_line_become_dicts(tmp_path):
    args = make_args(tmp_path, env_kwargs='{"max_position": 4}', model_init_kwargs='{"dtype": "float32"}')
    assert args.env_kwargs == {"max_position": 4} and args.model_init_kwargs == {"dtype": "float32"}


@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test if the trainer gets to PEFT wrapping, a reference model or the Trainer base class."""

    def forbidden(*args, **kwargs):
        raise AssertionError("an input error must be raised before any compute is spent")

    for name in ("load_reference_model", "get_peft_model", "freeze_vision_tower"):
        monkeypatch.setattr(f"vlm_env_ppo.trainer.{name}", forbidden)


def tiny_text_only_model(tokenizer):
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def test_input_errors_come_before_any_compute(tiny_vlm_path, tmp_path, no_compute):
    path = tiny_vlm_path("llava_next")
    kl = {"kl_coef": 0.1}  # would load a 4-bit reference model after the checks
    tokenizer = AutoTokenizer.from_pretrained(path)
    with pytest.raises(ValueError, match="has no vision tower.*allow_text_only_model=True"):
        VLMPPOTrainer(tiny_text_only_model(tokenizer), make_args(tmp_path, **kl), env=NUMBER_LINE,
                      processing_class=tokenizer)
    processor = AutoProcessor.from_pretrained(path)
    processor.chat_template = processor.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template.*override `VLMPPOTrainer.build_model_inputs`"):
        VLMPPOTrainer(path, make_args(tmp_path, **kl), env=NUMBER_LINE, processing_class=processor)
    ez_points = get_task("gym_cards/EZPoints-v0")
    with pytest.raises(ValueError, match=rf"The task has {len(ez_points.action_names)} action names but the env has 2"):
        VLMPPOTrainer(path, make_args(tmp_path, **kl), env=NUMBER_LINE, task=ez_points)
    with pytest.raises(ValueError, match=r"`invalid_action_index` \(2\) is not an action of the env"):
        VLMPPOTrainer(path, make_args(tmp_path, invalid_action="fixed", invalid_action_index=2, **kl), env=NUMBER_LINE)
    with pytest.raises(TypeError, match="Only Discrete and Text action spaces"):
        VLMPPOTrainer(path, make_args(tmp_path, **kl), env=lambda: gym.make("Pendulum-v1"), task=COLOR_CHOICE)


def test_text_only_model_is_allowed_when_opted_in(tiny_vlm_path, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_path("llava_next"))
    args = make_args(tmp_path, allow_text_only_model=True)
    trainer = VLMPPOTrainer(tiny_text_only_model(tokenizer), args, env=NUMBER_LINE, processing_class=tokenizer)
    obs, infos = trainer.envs.reset(seed=0)
    out = trainer.act(obs, unbatch_infos(infos, 2))
    assert torch.isfinite(out.logprobs).all() and torch.isfinite(out.values).all()


# ----------------------------------------------------------------------------------------------- security
def test_no_eval_exec_or_pickle_in_the_package():
    banned_calls = {"eval", "exec", "compile", "__import__"}
    banned_modules = {"pickle", "dill", "marshal", "shelve"}
    for file in Path(vlm_env_ppo.__file__).parent.rglob("*.py"):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in banned_calls, f"{file}:{node.lineno}"
            if isinstance(node, ast.Import):
                assert not {a.name for a in node.names} & banned_modules, f"{file}:{node.lineno}"
            if isinstance(node, ast.ImportFrom):
                assert node.module not in banned_modules, f"{file}:{node.lineno}"
            if isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name):
                assert node.value.id != "torch", f"torch.load (pickle) at {file}:{node.lineno}"


def test_trust_remote_code_is_off_by_default(tmp_path):
    assert VLMPPOConfig.__dataclass_fields__["trust_remote_code"].default is False
    assert make_args(tmp_path).trust_remote_code is False


def test_pickled_weights_are_refused(tiny_vlm_path, tmp_path):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_vlm_path("llava_next"), folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "vlm_env_ppo.json").write_text(json.dumps({"env_id": NUMBER_LINE}))
    with pytest.raises(OSError, match=re.compile("safetensors", re.IGNORECASE)):
        VLMAgent.from_pretrained(str(folder))
    with pytest.raises((OSError, ValueError), match=re.compile("safetensors", re.IGNORECASE)):
        VLMPPOTrainer(str(folder), make_args(tmp_path), env=NUMBER_LINE)
    with pytest.raises(OSError, match=re.compile("safetensors", re.IGNORECASE)):  # the KL reference copy too
        load_reference_model(str(folder), "none", torch.float32, trust_remote_code=False)
