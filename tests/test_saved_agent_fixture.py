"""An agent saved by an earlier version of the package (``tests/data/agent_v0``, see ``tests/data/make_agent_v0.py``)
still loads, as an agent and as a trainer's starting point, and acts and values exactly as it did when saved."""

import json
from pathlib import Path

import gymnasium as gym
import torch
from test_trainer import make_args

from vlm_env_ppo import VLMPPOTrainer
from vlm_env_ppo.agent import VLMAgent

AGENT_V0 = Path(__file__).parent / "data" / "agent_v0"


def saved_observations():
    expected = json.loads((AGENT_V0 / "expected_outputs.json").read_text())
    env = gym.make(expected["env_id"])
    obs, infos = zip(*(env.reset(seed=s) for s in expected["reset_seeds"]))
    return list(obs), list(infos), expected


def test_agent_saved_by_an_earlier_version_loads_and_acts_as_it_did():
    obs, infos, expected = saved_observations()
    agent = VLMAgent.from_pretrained(str(AGENT_V0))
    assert agent.config["env_id"] == "gym_cards/NumberLine-v0" and agent.task is not None
    parsed, texts = agent.act_batch(obs, infos, greedy=True)
    assert texts == expected["greedy_texts"]
    assert [p.action for p in parsed] == expected["actions"]
    torch.testing.assert_close(agent.value(obs, infos), torch.tensor(expected["values"]), atol=1e-5, rtol=0)


def test_agent_saved_by_an_earlier_version_continues_training(tmp_path):
    obs, infos, expected = saved_observations()
    trainer = VLMPPOTrainer(str(AGENT_V0), make_args(tmp_path, max_new_tokens=6), env="gym_cards/NumberLine-v0")
    assert not trainer.is_peft
    assert trainer.act(obs, infos, greedy=True, score=False).texts == expected["greedy_texts"]
    torch.testing.assert_close(trainer.value_of(obs, infos), torch.tensor(expected["values"]), atol=1e-5, rtol=0)
    trainer.train()  # one short run from the old folder
