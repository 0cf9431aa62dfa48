"""Issue 24: what a user writes about their own env (prompt, parser, grammar, action names, in their own module) travels
with the saved agent to the Hub, `VLMAgent.from_pretrained` in a fresh process, and ``vlm-env-ppo eval/play``.

The env is gymnasium's CliffWalking (used nowhere else in the project); the user module is written into ``tmp_path``
and found through ``sys.path`` / ``PYTHONPATH``, as a user's own package would be installed.
"""

import html
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
from test_trainer import make_args

from vlm_env_ppo import ParsedAction, Task, VLMAgent, VLMPPOTrainer
from vlm_env_ppo.cli import main
from vlm_env_ppo.envs.adapter import adapted_factory
from vlm_env_ppo.tasks import UnknownEnvError, UnknownTaskError
from vlm_env_ppo.user_code import UntrustedCodeError

ROOT = Path(__file__).resolve().parents[1]
ENV_KWARGS = {"max_episode_steps": 3}  # CliffWalking has no time limit of its own

# A user's module: a Task subclass with its own prompt (a "Move: <direction>" answer, not the built-in JSON), parser
# and grammar, for an env nothing in the package knows.
USER_MODULE = '''
import re

from PIL import Image

from vlm_env_ppo import ParsedAction, Task

ACTIONS = ("up", "right", "down", "left")  # CliffWalking's action order
MOVE = re.compile(r"Move: (up|right|down|left)\\s*$")


class CliffTask(Task):
    def build_messages(self, observation, info=None, action_only=False):
        text = self.description + " Think, then end with one line: Move: <direction>"
        frame = Image.fromarray(observation).resize((96, 32))  # the 768x256 render, small enough for a tiny VLM
        return [{"role": "user", "content": [{"type": "image", "image": frame}, {"type": "text", "text": text}]}]

    def parse_action(self, completion, info=None):
        match = MOVE.search(completion)
        if match is None:
            return ParsedAction(None, False, None, "no_action_key")
        return ParsedAction(ACTIONS.index(match.group(1)), True, match.start(), "ok")

    def answer_grammar(self, info, constraint, action_only=False):
        room = constraint.max_new_tokens - len("\\nMove: right".encode()) - 1
        moves = " | ".join(f'"{a}"' for a in ACTIONS)
        return f'start: thoughts "\\\\nMove: " move\\nthoughts[max_tokens={room}]: /[a-z ]*/\\nmove: {moves}\\n'


TASK = CliffTask("CliffWalking-v1", ACTIONS, "Walk from the bottom left to the bottom right, not off the cliff.")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "cliff_agent.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("cliff_agent", None)


def cliff_observations(seeds=(0, 1)):
    env = adapted_factory("CliffWalking-v1", **ENV_KWARGS)()
    obs, infos = zip(*(env.reset(seed=s) for s in seeds))
    return list(obs), list(infos)


def run(args, folder, timeout=300):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]), "SDL_VIDEODRIVER": "dummy"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_own_env_round_trip_train_save_push_reload_eval_play(tiny_vlm_path, tmp_path, user_module, capsys):
    from peft import LoraConfig

    import cliff_agent

    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=20, env_kwargs=ENV_KWARGS,
                     hub_model_id="someone/cliff-agent")
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="CliffWalking-v1", task=cliff_agent.TASK,
                            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer.train()
    assert trainer.parse_errors == 0 and trainer.grammar_errors == 0
    obs, infos = cliff_observations()
    before = [trainer.act([o], [i], greedy=True, score=False) for o, i in zip(obs, infos)]  # one at a time, as play
    assert all(b.parsed[0].valid for b in before), [b.texts for b in before]  # the user's grammar and parser agree
    evaluation = trainer.evaluate(num_episodes=2, seed=0, greedy=True)
    trainer.save_model(args.output_dir)

    hub = tmp_path / "hub"  # what the mocked upload received: the Hub's copy of the agent
    api = mock.MagicMock()
    api.create_repo.return_value = mock.MagicMock(repo_id="someone/cliff-agent")
    api.upload_folder.side_effect = lambda repo_id, folder_path, **kw: shutil.copytree(
        folder_path, hub, ignore=shutil.ignore_patterns("_*", "checkpoint-*", "tiny-base-model")
    ) and mock.MagicMock()
    with mock.patch("transformers.trainer.hf_api", return_value=api):
        trainer.push_to_hub()
    trainer.envs.close()
    config = json.loads((hub / "vlm_env_ppo.json").read_text())
    assert config["env_id"] == "CliffWalking-v1" and config["env_kwargs"] == ENV_KWARGS
    assert config["action_names"] == ["up", "right", "down", "left"]
    assert config["task"]["class"] == "cliff_agent:CliffTask"
    assert "trust_remote_code=True" in (hub / "README.md").read_text()

    # Fresh processes, as a user who downloaded the agent, with no Python of their own: eval and play. The same
    # evaluation, and the same greedy completions and actions on the first frames of the replayed episodes.
    out = run(["-m", "vlm_env_ppo.cli", "eval", str(hub), "--trust_remote_code", "--num_episodes", "2"], user_module)
    assert "CliffWalking-v1" in out and f"{evaluation['eval/episode_return']:.3f}" in out, out
    assert f"{evaluation['eval/invalid_action_rate']:.3f}" in out
    replay = tmp_path / "replay"
    out = run(["-m", "vlm_env_ppo.cli", "play", str(hub), "--trust_remote_code", "--num_episodes", "2",
               "--env_kwargs", '{"max_episode_steps": 2}', "--output", str(replay)], user_module)
    assert "4 steps, 2 episodes" in out  # --env_kwargs reached the env: a 2-step time limit
    episodes = (tmp_path / "replay.html").read_text().split("<h2>")[1:]
    for episode, b in zip(episodes, before):
        first_step = episode.split("<tr><td>1</td>")[0]
        assert f"<pre>{html.escape(b.texts[0])}</pre>" in first_step
        assert f"<span class='ok'>{cliff_agent.ACTIONS[b.parsed[0].action]}</span>" in first_step
        assert html.escape("Move: <direction>") in first_step  # the user's prompt, shown per step

    # Not trusted: one line naming the class and the flag, before any weights load (here for the Hub id).
    capsys.readouterr()
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(hub)), pytest.raises(SystemExit) as exit_info:
        main(["eval", "someone/cliff-agent"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "cliff_agent:CliffTask" in error and "--trust_remote_code" in error


def test_user_code_that_cannot_be_imported_is_one_clear_error(tmp_path):
    folder = tmp_path / "agent"
    folder.mkdir()
    record = {"class": "no_such_module_24:CliffTask", "fields": {}, "functions": {}}
    (folder / "vlm_env_ppo.json").write_text(json.dumps({"env_id": "CliffWalking-v1", "task": record}))
    with pytest.raises(UntrustedCodeError, match="no_such_module_24:CliffTask.*cannot be imported") as info:
        VLMAgent.from_pretrained(str(folder), trust_remote_code=True)
    assert "\n" not in str(info.value)
    with pytest.raises(UntrustedCodeError, match="trust_remote_code"):
        VLMAgent.from_pretrained(str(folder))


# ------------------------------------------------------------------------------------------------------- point 1
class CliffTrainer(VLMPPOTrainer):
    """The README's other way: a trainer subclass that overrides the hooks (module level, so it can be recorded)."""

    def build_messages(self, observation, info):
        import cliff_agent

        return cliff_agent.TASK.build_messages(observation, info)

    def parse_action(self, completion, info):
        import cliff_agent

        return cliff_agent.TASK.parse_action(completion, info)

    def answer_grammar(self, info):
        import cliff_agent

        return cliff_agent.TASK.answer_grammar(info, self.constraint)


def test_trainer_subclass_with_hooks_takes_an_env_id_and_its_agent_loads_back(tiny_vlm_path, tmp_path, user_module):
    """Issue 24, point 1: a subclass that overrides the hooks can be given an env id with no registered task, a
    mistyped env id says "no such env", and the saved agent records the trainer's hooks, which act again."""
    args = make_args(tmp_path, constrained_decoding=True, max_new_tokens=20, env_kwargs=ENV_KWARGS)
    with pytest.raises(UnknownEnvError, match="No such env.*CliffWalkin.*Did you mean"):
        CliffTrainer(tiny_vlm_path("llava_next"), args, env="CliffWalkin-v1")
    with pytest.raises(UnknownTaskError, match="No task is registered"):  # no hooks: a task is still needed
        VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="CliffWalking-v1")
    trainer = CliffTrainer(tiny_vlm_path("llava_next"), args, env="CliffWalking-v1")
    obs, infos = cliff_observations()
    before = trainer.act(obs, infos, greedy=True, score=False)
    assert all(p.valid for p in before.parsed)
    path = str(tmp_path / "agent")
    trainer.save_model(path)
    trainer.envs.close()
    config = json.loads((tmp_path / "agent" / "vlm_env_ppo.json").read_text())
    assert config["task"]["trainer_hooks"] and config["task"]["class"] == "test_own_env:CliffTrainer"
    assert config["action_names"] == ["0", "1", "2", "3"]
    agent = VLMAgent.from_pretrained(path, trust_remote_code=True)
    parsed, texts = agent.act_batch(obs, infos, greedy=True)
    assert texts == before.texts and [p.action for p in parsed] == [p.action for p in before.parsed]


# ------------------------------------------------------------------------------------------------------- point 3
def test_a_stale_evaluation_is_not_reported_as_the_final_one(tiny_vlm_path, tmp_path, capsys):
    """Issue 24, point 3: a sampled evaluation before training, then ``final_eval_episodes=0``: the summary must not
    call it the final evaluation, and the saved config and card say when and how it was taken. Also point 5: no
    metric dicts printed over the progress bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from vlm_env_ppo.cli import TrainScriptArguments, run_training

    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), make_args(tmp_path), env="gym_cards/NumberLine-v0")
    trainer.evaluate(num_episodes=2, greedy=False)
    capsys.readouterr()
    run_training(trainer, TrainScriptArguments(final_eval_episodes=0))
    trainer.envs.close()
    out = capsys.readouterr().out
    assert "Final evaluation" not in out and "Not evaluated after training" in out
    assert "{'env/" not in out  # Trainer's printer would print every logged dict
    assert not any(type(c) in (ProgressCallback, PrinterCallback) for c in trainer.callback_handler.callbacks)
    last = json.loads((tmp_path / "out" / "vlm_env_ppo.json").read_text())["last_eval"]
    assert last["eval/update"] == 0 and last["eval/greedy"] is False
    card = (tmp_path / "out" / "README.md").read_text()
    assert "sampled, at update 0, 2 update(s) before these weights (not this agent's result)" in card


# ------------------------------------------------------------------------------------------------------- point 4
def test_hooks_that_return_the_wrong_type_get_clear_errors_or_are_counted(tiny_vlm_path, tmp_path, caplog):
    """Issue 24, point 4: a parser returning a tuple or an out-of-range action is counted as invalid and logged once
    (no raw AttributeError, no warning per step); messages that are not chat messages are a TypeError naming the
    hook; messages without the image frame warn that the agent is blind."""
    from test_trainer import start_rollout

    class TupleParser(VLMPPOTrainer):
        def parse_action(self, completion, info):
            return (0, True, None) if info.get("Target", 0) % 2 else ParsedAction(7, True, 0)

    trainer = TupleParser(tiny_vlm_path("llava_next"), make_args(tmp_path, num_steps=3), env="gym_cards/NumberLine-v0")
    start_rollout(trainer)
    with caplog.at_level("WARNING"):
        batch = trainer.collect_rollout()
    assert not bool(batch.valid.any()) and trainer.parse_errors == 6
    assert len([r for r in caplog.records if "parse_action returned" in r.getMessage()]) == 1
    trainer.envs.close()

    class StrMessages(VLMPPOTrainer):
        def build_messages(self, observation, info):
            return "Which way: + or -?"

    trainer = StrMessages(tiny_vlm_path("llava_next"), make_args(tmp_path), env="gym_cards/NumberLine-v0")
    start_rollout(trainer)
    with pytest.raises(TypeError, match="`build_messages` must return a non-empty list of chat messages.*str"):
        trainer.collect_rollout()
    trainer.envs.close()

    class ParserOnly(Task):  # its parser reads a format the built-in JSON grammar would not produce
        def parse_action(self, completion, info=None):
            return ParsedAction(None, False, None, "no_action_key")

    task = ParserOnly("gym_cards/NumberLine-v0", ("-", "+"), "Move to the target.")
    with pytest.raises(ValueError, match="ParserOnly overrides `parse_action` but not `answer_grammar`"):
        VLMPPOTrainer(tiny_vlm_path("llava_next"), make_args(tmp_path, constrained_decoding=True, max_new_tokens=20),
                      env="gym_cards/NumberLine-v0", task=task)

    class Blind(VLMPPOTrainer):
        def build_messages(self, observation, info):
            return [{"role": "user", "content": [{"type": "text", "text": "Which way: + or -?"}]}]

    trainer = Blind(tiny_vlm_path("llava_next"), make_args(tmp_path), env="gym_cards/NumberLine-v0")
    start_rollout(trainer)
    with pytest.warns(UserWarning, match="no image .* never sees its frames"):
        trainer.act(trainer._obs, trainer._infos, score=False)
    trainer.envs.close()


# ------------------------------------------------------------------------------------------------------- point 5
def test_small_things(tmp_path, monkeypatch, capsys):
    """Issue 24, point 5: a YAML typo names the field and a close one; a Hub id while offline is one line, no
    traceback; `VLMAgent` is importable from the package."""
    import huggingface_hub.constants

    import vlm_env_ppo
    from vlm_env_ppo.agent import VLMAgent as agent_class
    from vlm_env_ppo.cli import parse_train_args

    assert vlm_env_ppo.VLMAgent is agent_class and "VLMAgent" in vlm_env_ppo.__all__
    agent = agent_class.__new__(agent_class)  # an agent trained on a factory records no env id (point 2)
    agent.config = {"env_id": None}
    with pytest.raises(UnknownEnvError, match="records no env id.*--env_id"):  # a CLI usage error, not a traceback
        agent.env_factory()
    config = tmp_path / "typo.yaml"
    config.write_text(f"output_dir: {tmp_path}\nnum_envz: 2\n")
    typo = r"Unknown field\(s\) in the config file: 'num_envz' \(did you mean 'num_envs'"
    with pytest.raises(ValueError, match=typo):
        parse_train_args(["--config", str(config)])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "someone/no-such-agent-24"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Could not download the agent 'someone/no-such-agent-24'" in error
