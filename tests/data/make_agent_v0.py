"""How ``tests/data/agent_v0`` was made, with the code before the issue-14 layout change: a tiny full-weights agent
saved by `VLMPPOTrainer.save_model` (``training_args.bin`` removed: pickled, nothing loads it) and the greedy outputs
and values it gave, which `tests/test_saved_agent_fixture.py` checks the current code still gives.

Run: ``python tests/data/make_agent_v0.py tests/data/agent_v0 300`` (about 220 KB).
"""

import json
import os
import shutil
import sys
import tempfile

import gymnasium as gym
import torch

from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo.models.tiny import build_tiny_vlm


def main(out: str, vocab_size: int) -> None:
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp()
    small = {"num_hidden_layers": 1, "intermediate_size": 32, "hidden_size": 32, "num_attention_heads": 2}
    base = build_tiny_vlm(
        "llava", os.path.join(tmp, "base"), seed=0, vocab_size=vocab_size,
        text_config={**small, "num_key_value_heads": 1}, vision_config=small, image_size=16, patch_size=8,
    )
    args = VLMPPOConfig(
        output_dir=os.path.join(tmp, "run"), num_envs=2, num_steps=2, total_env_steps=4, num_ppo_epochs=1,
        num_mini_batches=1, per_device_train_batch_size=2, max_new_tokens=6, learning_rate=1e-3,
        activation_checkpointing=False, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
        value_head_hidden_sizes=[16],
    )
    trainer = VLMPPOTrainer(base, args, env="gym_cards/NumberLine-v0")
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    trainer.save_model(out)
    os.remove(os.path.join(out, "training_args.bin"))
    env = gym.make("gym_cards/NumberLine-v0")
    seeds = [100, 101, 102]
    obs, infos = zip(*(env.reset(seed=s) for s in seeds))
    acted = trainer.act(list(obs), list(infos), greedy=True, score=False)
    values = trainer.value_of(list(obs), list(infos))
    with open(os.path.join(out, "expected_outputs.json"), "w") as f:
        json.dump({"env_id": "gym_cards/NumberLine-v0", "reset_seeds": seeds, "greedy_texts": acted.texts,
                   "actions": [p.action for p in acted.parsed], "values": values.tolist()}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
