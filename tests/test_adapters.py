"""Issue 8: any gymnasium env through the adapter (MiniGrid, gymnasium's toy-text FrozenLake, text-only envs),
text action spaces with admissible commands, multi-turn history, and text-only language models."""

from __future__ import annotations

import json
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from transformers import AutoProcessor

from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo.agent import VLMAgent, build_model_inputs
from vlm_env_ppo.buffer import collate_inputs, split_inputs
from vlm_env_ppo.envs.adapter import HistoryWrapper, VLMEnvAdapter, make_env
from vlm_env_ppo.models.tiny import build_tiny_vlm
from vlm_env_ppo.rollout import episode_success
from vlm_env_ppo.tasks import FROZEN_LAKE, MINIGRID_ACTIONS, Task, get_task

MINIGRID = "MiniGrid-Empty-5x5-v0"


class KeyDoorText(gym.Env):
    """A two-room text adventure: take the key, open the door, go north. Text observations, text commands, the
    legal commands in ``info["admissible_commands"]``; 10 steps at most."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self):
        self.observation_space = spaces.Text(max_length=500)
        self.action_space = spaces.Text(max_length=50)

    def _admissible(self) -> list[str]:
        commands = ["look", "inventory"]
        if not self.has_key:
            commands.append("take key")
        elif not self.open:
            commands.append("open door")
        else:
            commands.append("go north")
        return commands

    def _out(self, text):
        return text, {"admissible_commands": self._admissible(), "is_success": self.won}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.has_key = self.open = self.won = False
        self.t = 0
        return self._out("You are in a hall. A key lies on the floor; a locked door leads north.")

    def step(self, command):
        self.t += 1
        reward = 0.0
        if command not in self._admissible():
            text = "That is not a verb I recognise."
        elif command == "take key":
            self.has_key, text, reward = True, "You take the key.", 0.1
        elif command == "open door":
            self.open, text, reward = True, "You unlock the door and open it.", 0.1
        elif command == "go north":
            self.won, text, reward = True, "You walk through the door. You win!", 1.0
        else:
            text = "You are in a hall."
        obs, info = self._out(text)
        return obs, reward, self.won, self.t >= 10 and not self.won, info


KEY_DOOR = Task(
    env_id="tests/KeyDoorText-v0",
    action_names=None,
    description="You are playing a text adventure. Escape through the door.",
    admissible_actions=lambda info: info["admissible_commands"],
)


class Blank(gym.Env):
    """No frames and no text: nothing for the model to see."""

    metadata: ClassVar[dict] = {"render_modes": []}
    observation_space = spaces.Discrete(3)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        return 0, 0.0, True, False, {}


# ------------------------------------------------------------------------------------------------ adapter, no model
def test_minigrid_is_shown_as_its_rendered_frame_with_the_mission_in_the_prompt():
    env = make_env(MINIGRID)
    frame, info = env.reset(seed=0)
    assert isinstance(env, VLMEnvAdapter) and env.unwrapped.render_mode == "rgb_array"
    assert frame.dtype == np.uint8 and frame.shape == env.observation_space.shape == (160, 160, 3)
    assert info["observation_text"] == "mission: get to the green goal square"
    task = get_task(MINIGRID)
    prompt = task.prompt(info)
    assert "mission: get to the green goal square" in prompt
    assert json.dumps(["turn left", "turn right", "move forward"]) in prompt  # movement only offered
    assert task.parse_action('{"action": "move forward"}', info).action == 2
    assert not task.parse_action('{"action": "toggle"}', info).valid  # a MiniGrid action, but not offered
    rng = np.random.default_rng(0)
    assert {task.sample_action(info, rng) for _ in range(200)} == {0, 1, 2}
    # Turning right then moving forward twice changes the frame (the agent moved) but not the mission.
    before = frame.copy()
    for action in (1, 2):
        frame, _, terminated, truncated, info = env.step(task.to_env_action(action, info, env.action_space))
    assert not (terminated or truncated) and not np.array_equal(before, frame)
    # Any other MiniGrid id gets a task with all seven actions.
    assert get_task("MiniGrid-DoorKey-5x5-v0").legal_actions({}) == MINIGRID_ACTIONS


def test_frozen_lake_toy_text_is_rendered_and_solved_through_the_task():
    env = make_env("FrozenLake-v1", is_slippery=False)
    frame, info = env.reset(seed=0)
    assert frame.shape == (256, 256, 3) and info["observation_text"] == ""
    path = ["down", "down", "right", "right", "down", "right"]  # the 4x4 map's safe path
    frames = [frame]
    for name in path:
        parsed = FROZEN_LAKE.parse_action(json.dumps({"thoughts": "the path", "action": name}), info)
        assert parsed.valid
        frame, reward, terminated, truncated, info = env.step(FROZEN_LAKE.to_env_action(parsed.action, info,
                                                                                        env.action_space))
        frames.append(frame)
    assert terminated and reward == 1.0 and episode_success(info, reward, terminated)
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))  # the elf is drawn where it is


def test_text_only_env_observes_text_and_plays_commands():
    env = VLMEnvAdapter(KeyDoorText())
    assert isinstance(env.observation_space, spaces.Text)
    obs, info = env.reset(seed=0)
    assert obs == info["observation_text"] and "locked door" in obs
    messages = KEY_DOOR.build_messages(obs, info)
    assert [part["type"] for part in messages[-1]["content"]] == ["text"]
    assert "locked door" in messages[-1]["content"][0]["text"]
    assert KEY_DOOR.legal_actions(info) == ("look", "inventory", "take key")
    parsed = KEY_DOOR.parse_action('{"action": "take key"}', info)
    assert parsed.valid and KEY_DOOR.to_env_action(parsed.action, info, env.action_space) == "take key"
    assert not KEY_DOOR.parse_action('{"action": "go north"}', info).valid  # legal later, not now
    for command in ("take key", "open door", "go north"):
        obs, reward, terminated, _, info = env.step(command)
    assert terminated and info["is_success"] and reward == 1.0
    with pytest.raises(ValueError, match="no frames and its observation has no text"):
        VLMEnvAdapter(Blank()).reset(seed=0)
    with pytest.raises(ValueError, match="needs `action_names`.*or `admissible_actions`"):
        Task("x", None, "no actions at all")


def test_history_wrapper_keeps_the_last_turns_of_the_episode_only():
    env = HistoryWrapper(make_env(MINIGRID), length=2, action_names=MINIGRID_ACTIONS)
    _, info = env.reset(seed=0)
    assert info["history"] == []
    first_frame = None
    for t, action in enumerate((1, 2, 0)):
        frame, _, _, _, info = env.step(action)
        if t == 0:
            first_frame = info["history"][0]["frame"]
    turns = info["history"]
    assert [turn["action"] for turn in turns] == ["move forward", "turn left"]  # the last two of three
    assert all(turn["text"] == "mission: get to the green goal square" for turn in turns)
    assert first_frame.shape == (160, 160, 3) and not np.array_equal(turns[-1]["frame"], frame)
    _, info = env.reset(seed=1)
    assert info["history"] == []
    text_env = HistoryWrapper(VLMEnvAdapter(KeyDoorText()), length=3)
    _, info = text_env.reset(seed=0)
    _, _, _, _, info = text_env.step("take key")
    assert info["history"] == [{"frame": None, "text": text_env.unwrapped.reset(seed=0)[0], "action": "take key"}]


def test_history_reaches_the_last_info_of_an_episode():
    """The info of the step that ends an episode (the vector env's ``final_info``, with which a truncated episode's
    final observation is valued) carries the episode's history like every other step; the next reset starts empty."""
    env = HistoryWrapper(make_env("FrozenLake-v1", is_slippery=False, max_episode_steps=3), length=2,
                         action_names=("left", "down", "right", "up"))
    env.reset(seed=0)
    steps = [env.step(action) for action in (0, 0, 2)]  # left, left (stays in the corner), right: time limit
    assert [(s[2], s[3]) for s in steps] == [(False, False), (False, False), (False, True)]
    infos = [s[-1] for s in steps]
    assert [len(i["history"]) for i in infos] == [1, 2, 2]
    assert [turn["action"] for turn in infos[-1]["history"]] == ["left", "right"]
    assert env.reset(seed=0)[1]["history"] == []


def test_history_turns_become_chat_turns_and_split_per_prompt(tiny_vlm_path):
    processor = AutoProcessor.from_pretrained(tiny_vlm_path("llava_next"))
    env = HistoryWrapper(make_env(MINIGRID), length=2, action_names=MINIGRID_ACTIONS)
    task = get_task(MINIGRID)
    frame0, info0 = env.reset(seed=0)
    env.step(2)
    frame2, _, _, _, info2 = env.step(1)
    messages = [task.build_messages(frame0, info0), task.build_messages(frame2, info2)]
    assert [m["role"] for m in messages[1]] == ["user", "assistant", "user", "assistant", "user"]
    assert json.loads(messages[1][1]["content"][0]["text"]) == {"action": "move forward"}
    inputs = build_model_inputs(processor, messages)
    assert inputs["pixel_values"].shape[0] == 1 + 3  # one image, then three
    samples = split_inputs(inputs, 2, images_per_sample=[1, 3])
    assert [s["pixel_values"].shape[0] for s in samples] == [1, 3]
    assert [s["image_sizes"].shape[0] for s in samples] == [1, 3]
    again = collate_inputs(samples[::-1], processor.tokenizer.pad_token_id)
    assert torch.equal(again["pixel_values"][:3], samples[1]["pixel_values"])
    with pytest.raises(ValueError, match="Every prompt must carry the same number of images"):
        split_inputs({**inputs, "image_grid_thw": torch.ones(3, 3, dtype=torch.long)}, 2)


def _tokens(rows_of_ids):
    """Left-padded ``input_ids`` / ``attention_mask`` for lists of token ids (pad 0)."""
    width = max(len(r) for r in rows_of_ids)
    ids = torch.zeros(len(rows_of_ids), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows_of_ids):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return {"input_ids": ids, "attention_mask": mask}


def test_split_shares_out_tiles_by_image_tokens_and_names_the_hook_when_it_cannot():
    """InternVL-style outputs: every tile of every image stacked in one ``pixel_values``, 4 image tokens (id 9) per
    tile. Prompt 0: one image of 3 tiles; prompt 1: two images of 5 and 1 tiles; prompt 2: no image."""
    inputs = _tokens([[1] + [9] * 12 + [2], [1] + [9] * 20 + [3] + [9] * 4, [1, 2, 3]])
    inputs["pixel_values"] = torch.arange(9.0).reshape(9, 1, 1, 1).expand(9, 3, 2, 2).clone()
    samples = split_inputs(inputs, 3, images_per_sample=[1, 2, 0], image_token_ids=[9])
    assert [s["pixel_values"][:, 0, 0, 0].tolist() for s in samples] == [[0, 1, 2], [3, 4, 5, 6, 7, 8], []]
    assert torch.equal(collate_inputs(samples, 0)["pixel_values"], inputs["pixel_values"])  # in the given order
    again = collate_inputs([samples[1], samples[0]], 0)
    assert again["pixel_values"][:, 0, 0, 0].tolist() == [3, 4, 5, 6, 7, 8, 0, 1, 2]
    # Per-prompt rows (Idefics3, SmolVLM) are still per prompt, whatever the image tokens say.
    per_prompt = {**_tokens([[9] * 4, [9] * 8]), "pixel_values": torch.zeros(2, 2, 3, 2, 2)}
    assert [s["pixel_values"].shape for s in split_inputs(per_prompt, 2, [1, 2], [9])] == [(1, 2, 3, 2, 2)] * 2
    # 7 rows for 12 + 24 image tokens: no whole number of rows per prompt, so the user must reshape the outputs.
    bad = {**inputs, "pixel_values": torch.zeros(7, 3, 2, 2)}
    with pytest.raises(ValueError, match=r"image tokens per prompt: \[12, 24, 0\].*build_model_inputs"):
        split_inputs(bad, 3, images_per_sample=[1, 2, 0], image_token_ids=[9])
    with pytest.raises(ValueError, match="build_model_inputs"):  # without the image token, no rule fits
        split_inputs(inputs, 3, images_per_sample=[1, 2, 0])


# ---------------------------------------------------------------------------------------------------- training
def _config(tmp_path, **overrides) -> VLMPPOConfig:
    values = {
        "output_dir": str(tmp_path / "run"),
        "num_envs": 2,
        "num_steps": 4,
        "total_env_steps": 16,
        "num_mini_batches": 2,
        "per_device_train_batch_size": 2,
        "max_new_tokens": 16,  # the shortest answer with thoughts needs 13 (constrained decoding)
        "temperature": 1.0,
        "learning_rate": 1e-3,
        "activation_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_steps": 1,
        "seed": 0,
    }
    values.update(overrides)
    return VLMPPOConfig(**values)


def _record_steps(trainer) -> list:
    played = []
    step = trainer.envs.step

    def recording_step(actions):
        played.append(actions)
        return step(actions)

    trainer.envs.step = recording_step
    return played


def test_trains_on_minigrid_with_history_and_reloads_for_evaluation(tiny_vlm_path, tmp_path):
    """MiniGrid-Empty-5x5 by id (the task is built in): two PPO updates with two earlier turns in every prompt; the
    played actions stay in the three offered ones; the saved agent evaluates on the same adapted env."""
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), _config(tmp_path, history_length=2), env=MINIGRID)
    played = _record_steps(trainer)
    collected = []
    collect = trainer.collect_rollout
    trainer.collect_rollout = lambda: collected.append(collect()) or collected[-1]
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.env_steps == 16
    assert {int(a) for actions in played for a in actions} <= {0, 1, 2}
    # The 5x5 goal is at least 5 moves away, so no episode ends in the first 4 steps: step t holds min(t, 2) earlier
    # frames plus the current one (LLaVA-NeXT: one pixel_values row per image).
    first = collected[0]
    images = [first.prompts[t * 2 + e]["pixel_values"].shape[0] for t in range(4) for e in range(2)]
    assert images == [1, 1, 2, 2, 3, 3, 3, 3]
    assert all(np.isfinite(h["losses/policy_loss"]) for h in trainer.state.log_history if "losses/policy_loss" in h)
    trainer.save_model(str(tmp_path / "agent"))
    agent = VLMAgent.from_pretrained(str(tmp_path / "agent"))
    assert agent.config["history_length"] == 2 and agent.config["env_id"] == MINIGRID
    result = agent.evaluate(num_episodes=2, seed=0, batch_size=2)
    assert result.num_episodes == 2 and 0 < result.mean_episode_length <= 100


def test_text_env_trains_a_text_only_language_model(tmp_path):
    """A text-only Llama on a text adventure with text commands: the env receives admissible command strings only
    (valid outputs and random admissible fallbacks), training runs, and the agent reloads and plays."""
    model = build_tiny_vlm("text", tmp_path / "tiny-text-lm")
    with pytest.raises(ValueError, match="text-only language model.*allow_text_only_model=True"):
        VLMPPOTrainer(model, _config(tmp_path), env=KeyDoorText, task=KEY_DOOR)
    with pytest.raises(ValueError, match="invalid_action='fixed'"):
        VLMPPOTrainer(model, _config(tmp_path, allow_text_only_model=True, invalid_action="fixed"), env=KeyDoorText,
                      task=KEY_DOOR)
    trainer = VLMPPOTrainer(
        model, _config(tmp_path, allow_text_only_model=True, history_length=1), env=KeyDoorText, task=KEY_DOOR
    )
    played = _record_steps(trainer)
    trainer.train()
    assert trainer.state.global_step == 2
    commands = [c for actions in played for c in actions]
    assert len(commands) == 16 and all(isinstance(c, str) for c in commands)
    assert set(commands) <= {"look", "inventory", "take key", "open door", "go north"}
    assert "take key" in commands  # the only progress command at the start is drawn among three
    trainer.save_model(str(tmp_path / "agent"))
    agent = VLMAgent.from_pretrained(str(tmp_path / "agent"), task=KEY_DOOR)
    result = agent.evaluate(KeyDoorText, num_episodes=2, batch_size=2)
    assert result.num_episodes == 2 and result.mean_episode_length <= 10


def test_text_lm_trains_on_textworld_games_by_env_id(textworld_games, tmp_path):
    """TextWorld through its registered id and `env_kwargs`: the adapter makes it text-only, the built-in task lists
    each step's admissible commands and keeps the goal in the prompt, and every command the games receive was
    admissible at its step."""
    model = build_tiny_vlm("text", tmp_path / "tiny-text-lm")
    args = _config(tmp_path, allow_text_only_model=True, env_kwargs={"game_files": textworld_games})
    trainer = VLMPPOTrainer(model, args, env="vlm_env_ppo/TextWorld-v0")
    assert isinstance(trainer.envs.single_observation_space, spaces.Text)
    _, info = trainer.envs.envs[0].reset(seed=0)
    prompt = trainer.task.prompt(info)
    assert f"Your task: {info['task_description']}" in prompt and info["observation_text"] in prompt
    assert json.dumps(list(info["admissible_commands"])) in prompt
    checked = []
    step = trainer.envs.step

    def checking_step(commands):
        for command, info in zip(commands, trainer._infos):
            assert command in info["admissible_commands"]
            checked.append(command)
        return step(commands)

    trainer.envs.step = checking_step
    trainer.train()
    assert trainer.state.global_step == 2 and len(checked) == 16
    rates = [h["env/invalid_action_rate"] for h in trainer.state.log_history if "env/invalid_action_rate" in h]
    assert len(rates) == 2 and all(0 <= r <= 1 for r in rates)
