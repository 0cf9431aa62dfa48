"""`rollout_backend` on the main suite's side (no vLLM here): settings (their errors are in tests/test_faults.py's
table), the error without vLLM, and the merged weights a vLLM engine is given. The engine itself is tested in the vLLM
lane (tests/test_vllm_lane.py)."""

import importlib.util

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText

from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo.vllm_engine import VLLMRollout, engine_weights


def test_engine_kwargs_from_the_command_line_are_json(tmp_path):
    args = VLMPPOConfig(output_dir=str(tmp_path), vllm_engine_kwargs='{"enforce_eager": true, "dtype": "float32"}')
    assert args.vllm_engine_kwargs == {"enforce_eager": True, "dtype": "float32"}
    assert VLMPPOConfig(output_dir=str(tmp_path)).rollout_backend == "hf"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this venv has vLLM")
def test_vllm_backend_without_vllm_says_how_to_install_it(tiny_vlm_path, tmp_path):
    args = VLMPPOConfig(
        output_dir=str(tmp_path), num_envs=2, num_steps=2, total_env_steps=4, per_device_train_batch_size=2,
        report_to="none", rollout_backend="vllm",
    )
    with pytest.raises(ImportError, match="pip install vllm"):
        VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="vlm_env_ppo/ColorChoice-v0")


def test_lora_weights_reach_the_engine_merged_under_checkpoint_names(tiny_vlm_path):
    """What `VLLMRollout.push_weights` hands the engine for a PEFT policy: every weight of the base checkpoint, under
    its own name (no ``base_layer``, no LoRA matrices), with the adapters merged in (W + scale * B A)."""
    path = tiny_vlm_path("llava_next")
    plain = AutoModelForImageTextToText.from_pretrained(path)
    names = set(plain.state_dict())
    policy = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(path), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    for name, param in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    policy.merge_adapter()
    merged = {name: tensor.clone() for name, tensor in engine_weights(policy)}  # views: unmerging changes them
    policy.unmerge_adapter()
    assert set(merged) == names
    changed = [n for n in names if not torch.equal(merged[n], plain.state_dict()[n])]
    assert changed and all(n.endswith("q_proj.weight") for n in changed), changed
    layer, target = next((m, n) for n, m in policy.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A"))
    # one layer by hand: W + (alpha / r) * B @ A
    key = target.replace("base_model.model.", "") + ".weight"
    by_hand = plain.state_dict()[key] + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(merged[key], by_hand)


@pytest.mark.parametrize(
    "policy_kind, message",
    [("no checkpoint", "this policy has none"), ("4-bit", r"a 4-bit or 8-bit \(bitsandbytes\) policy has none")],
)
def test_engine_refuses_a_policy_it_cannot_load(tiny_vlm_path, policy_kind, message):
    """Checked before vLLM is imported: the engine loads the policy's checkpoint, then takes its weights as they are."""
    policy = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path("llava_next"))
    if policy_kind == "no checkpoint":
        policy.config._name_or_path = ""
    else:
        policy.is_loaded_in_4bit = True  # what bitsandbytes loading sets
    with pytest.raises(ValueError, match=message):
        VLLMRollout(
            policy, None, constraint=None, suppress_token_ids=(), eos_token_ids=(2,), vocab_size=10, seed=0,
            max_images=1, gpu_memory_utilization=0.3, max_model_len=None, engine_kwargs=None,
        )
