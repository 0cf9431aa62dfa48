"""The saved agent folder, read side: its file names, its config, and loading its policy and value head back.

A folder from `VLMPPOTrainer.save_model` (or a checkpoint, or the Hub) holds the policy (a LoRA adapter or full
weights, safetensors only), ``value_head.safetensors``, the processor and ``vlm_env_ppo.json``; an SFT model folder
(`vlm_env_ppo.sft.run_sft`) holds a plain merged model and ``vlm_env_ppo_sft.json``. `VLMAgent.from_pretrained`,
`VLMPPOTrainer(model=folder)` and resuming from a checkpoint read them through here (the write side is
`vlm_env_ppo.checkpointing`).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models.value_head import ValueHead

# Only file names and `json` at import: `vlm_env_ppo.sft` reads `SFT_CONFIG` from here and stays light to import
# (torch, transformers and peft are imported by the loaders, when they run).
AGENT_CONFIG = "vlm_env_ppo.json"
ADAPTER_CONFIG = "adapter_config.json"
# What `run_sft` records next to the model. Not ``vlm_env_ppo.json``: that file marks a saved PPO agent, which
# `VLMPPOTrainer` resumes with its recorded base model as the KL reference; an SFT folder must load as a plain model
# path, so that PPO's reference (and ``base_model``) is the SFT model itself.
SFT_CONFIG = "vlm_env_ppo_sft.json"


def read_agent_config(path: str) -> dict:
    """A saved agent's ``vlm_env_ppo.json``, or an SFT model's ``vlm_env_ppo_sft.json`` (`vlm_env_ppo.sft.run_sft`:
    env id, prompt variant and action names of a plain, merged model folder)."""
    for name in (AGENT_CONFIG, SFT_CONFIG):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as f:
                return json.load(f)
    raise FileNotFoundError(
        f"{path} is not a saved vlm-env-ppo agent (no {AGENT_CONFIG}) nor an SFT model (no {SFT_CONFIG})."
    )


def download_agent(repo_id: str) -> str:
    """The local folder of a saved agent on the Hub (``huggingface_hub.snapshot_download``). A failed download (no
    network, offline mode, no such repo, no access) is one `ModelNotFoundError` that says what to check, not a
    traceback of the HTTP stack."""
    from huggingface_hub import snapshot_download

    from .models.loading import ModelNotFoundError

    try:
        return snapshot_download(repo_id)
    except Exception as err:  # noqa: BLE001 - every download failure gets the same actionable message
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelNotFoundError(
            f"Could not download the agent {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {reason}). "
            "Check the repo id, your network and HF_HUB_OFFLINE, and your access to the repo (`hf auth login`), or "
            "pass a local folder."
        ) from err


def load_agent_policy(path: str, config: dict, is_trainable: bool, **model_kwargs):
    """The policy of a saved agent: base model + LoRA adapter (a `PeftModel`), or the full fine-tuned model.

    Weights are read from safetensors only (issue 7): a folder with only pickled ``*.bin`` weights is refused, since
    unpickling a downloaded file can run code.
    """
    from .models.loading import auto_model_from_pretrained

    model_kwargs = {"dtype": "auto", "use_safetensors": True, **model_kwargs}
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        from peft import PeftModel

        if not os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
            raise FileNotFoundError(
                f"{path} has an adapter config but no adapter_model.safetensors; only safetensors weights are loaded."
            )
        with open(os.path.join(path, ADAPTER_CONFIG)) as f:
            base = config.get("base_model") or json.load(f)["base_model_name_or_path"]
        base_model = auto_model_from_pretrained(base, **model_kwargs)
        return PeftModel.from_pretrained(base_model, path, is_trainable=is_trainable)
    return auto_model_from_pretrained(path, **model_kwargs)


def load_value_head(path: str) -> ValueHead:
    """Load a value head saved by `VLMPPOTrainer.save_model`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .models.value_head import VALUE_HEAD_WEIGHTS, ValueHead

    file = os.path.join(path, VALUE_HEAD_WEIGHTS)
    with safe_open(file, "pt") as f:
        meta = json.loads(f.metadata()["config"])
    head = ValueHead(meta["hidden_size"], meta["hidden_sizes"])
    head.load_state_dict(load_file(file))
    return head


def load_policy_weights(policy, path: str) -> None:
    """Load a saved agent's policy weights (LoRA adapter or full, single-file or sharded) into ``policy``."""
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    from .models.loading import auto_model_from_pretrained

    adapter = os.path.join(path, "adapter_model.safetensors")
    if isinstance(policy, PeftModel):
        if not os.path.isfile(adapter):
            raise FileNotFoundError(f"{path} has no adapter_model.safetensors to resume the LoRA policy from.")
        result = set_peft_model_state_dict(policy, load_file(adapter))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"Adapter in {path} does not match the policy: {result.unexpected_keys[:5]}")
        return
    # Full weights are saved in the checkpoint key layout of the model's family (transformers maps keys on save), so
    # load them the way a user would, on the CPU, and copy the tensors over.
    saved = auto_model_from_pretrained(path, dtype=policy.dtype, device_map="cpu", use_safetensors=True)
    policy.load_state_dict(saved.state_dict(), strict=True)
    del saved
