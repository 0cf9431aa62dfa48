"""`vlm-env-ppo train`'s arguments: every config field documented in ``--help``; YAML configs and flags combined."""

import dataclasses
import inspect

import pytest

from vlm_env_ppo.cli import TrainScriptArguments, main, parse_train_args
from vlm_env_ppo.config import VLMPPOConfig


def train_help(capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_train_help_documents_every_config_field(capsys):
    text = train_help(capsys)
    squashed = "".join(text.split())  # argparse re-wraps help text (and breaks lines at hyphens)
    own_fields = set(inspect.get_annotations(VLMPPOConfig)) | set(inspect.get_annotations(TrainScriptArguments))
    flags = [f for cls in (VLMPPOConfig, TrainScriptArguments) for f in dataclasses.fields(cls) if f.init]
    assert {"num_envs", "cot_logprob_coef", "env_id", "learning_rate"} <= {f.name for f in flags}
    for f in flags:
        assert f"--{f.name}" in text, f"`--{f.name}` is not in `vlm-env-ppo train --help`"
        if f.name in own_fields:  # defined in vlm_env_ppo (not inherited from TrainingArguments): must say what it does
            help_text = f.metadata.get("help", "")
            assert help_text.strip(), f"`{f.name}` has no help text: add metadata={{'help': ...}} to its field"
            assert "".join(help_text.split()) in squashed, f"the help of `--{f.name}` is not shown"


def test_yaml_config_and_flags_combine(tmp_path):
    """Precedence, lowest first: dataclass defaults, `defaults=`, the YAML, the flags (parsed as `train` parses)."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "env_id: gym_cards/Blackjack-v0\nnum_envs: 3\nnum_steps: 5\nlora_r: 64\nenv_kwargs: {sab: true}\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    script_args, args, model_args = parse_train_args(
        ["--config", str(config), "--num_steps", "7", "--lora_r", "8"],
        defaults={"num_envs": 2, "num_ppo_epochs": 3},
    )
    assert script_args.env_id == "gym_cards/Blackjack-v0" and args.env_kwargs == {"sab": True}  # YAML
    assert args.num_envs == 3  # the YAML beats `defaults`
    assert args.num_ppo_epochs == 3  # `defaults` beats the dataclass default (4)
    assert args.num_steps == 7 and model_args.lora_r == 8  # flags beat the YAML
    assert args.batch_size == 21  # derived from the YAML's num_envs and the flag's num_steps
    assert args.temperature == 0.2 and model_args.lora_alpha == 32  # untouched defaults

    # `default_config` is read only when no --config is given; unknown `defaults` are an error, not ignored.
    other = tmp_path / "other.yaml"
    other.write_text(f"num_envs: 6\noutput_dir: {tmp_path / 'out'}\n")
    assert parse_train_args(["--config", str(config)], default_config=other)[1].num_envs == 3
    assert parse_train_args([], default_config=other)[1].num_envs == 6
    with pytest.raises(ValueError, match="num_env"):
        parse_train_args([], default_config=other, defaults={"num_env": 2})


def test_readme_config_reference_is_current():
    """The README's config table is generated from `VLMPPOConfig`: a field added or changed without regenerating it
    (`python scripts/config_reference.py`) fails here."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "config_reference.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


# ----------------------------------------------------------------------------------------------- errors a user meets
def one_line_error(capsys, argv) -> str:
    """Run the CLI; it must exit as argparse does for a bad argument (status 2, ``prog: error: ...``, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err.splitlines()[-1]  # (the quickstart's tiny-model build may print progress bars before it)


def test_bad_flag_value_is_one_error_line_with_the_fix(tmp_path, capsys):
    err = one_line_error(capsys, ["train", "--num_envs", "3", "--num_steps", "3", "--num_mini_batches", "2",
                                  "--output_dir", str(tmp_path)])
    assert err.startswith("vlm-env-ppo train: error: ") and "divide batch_size" in err
    with pytest.raises(SystemExit) as exit_info:  # a value TrainingArguments rejects, in `vlm-env-ppo sft` too
        main(["sft", "--load_best_model_at_end", "true", "--save_strategy", "steps", "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "vlm-env-ppo sft: error: " in err and "load_best_model_at_end" in err


def test_missing_model_folder_says_so_not_repo_id_rules(tmp_path, capsys, monkeypatch):
    from vlm_env_ppo.models.loading import ModelNotFoundError, check_model_path, load_policy

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelNotFoundError, match="No folder .*no-such-model' exists.*not a Hugging Face Hub id"):
        load_policy(missing, None, trust_remote_code=False)
    assert isinstance(ModelNotFoundError("x"), OSError)  # callers catching transformers' OSError still catch it
    check_model_path("Qwen/Qwen3-VL-8B-Instruct")  # a possible Hub id is for transformers to resolve: no error
    check_model_path(str(tmp_path))  # an existing folder: no error

    err = one_line_error(capsys, ["train", "--model_name_or_path", missing, "--output_dir", str(tmp_path / "out")])
    assert "No folder" in err and "Repo id must use" not in err
    err = one_line_error(capsys, ["eval", missing])
    assert err.startswith("vlm-env-ppo eval: error: No folder")
    err = one_line_error(capsys, ["train", "--env_id", "NoSuchEnv-v0", "--output_dir", str(tmp_path / "out2")])
    assert "No such env 'NoSuchEnv-v0'" in err  # a typo is not "no task" (issue 24)
    err = one_line_error(capsys, ["train", "--env_id", "CliffWalking-v1", "--output_dir", str(tmp_path / "out3")])
    assert "No task is registered for env id 'CliffWalking-v1'" in err  # an env without a task


def test_real_crashes_keep_their_traceback(tmp_path, monkeypatch):
    import vlm_env_ppo.cli as cli

    def crash(*args, **kwargs):
        raise RuntimeError("a bug, not a bad flag")

    monkeypatch.setattr(cli, "build_trainer", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--output_dir", str(tmp_path)])
