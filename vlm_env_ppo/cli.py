"""`vlm-env-ppo` command line: ``vlm-env-ppo train [--config file.yaml] [--flag value ...]``.

With no ``--model_name_or_path`` (and no ``--config``), ``train`` runs the embedded quickstart
(`configs/quickstart.yaml`): a tiny VLM built locally learns a visual task on the CPU, no downloads.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources

QUICKSTART_CONFIG = resources.files("vlm_env_ppo") / "configs" / "quickstart.yaml"


@dataclass
class TrainScriptArguments:
    """Arguments of ``vlm-env-ppo train`` that are not `VLMPPOConfig` or `trl.ModelConfig` fields."""

    env_id: str = field(
        default="gym_cards/NumberLine-v0", metadata={"help": "Registered gymnasium env id to train on."}
    )
    tiny_family: str = field(
        default="llava_next",
        metadata={"help": "Family of the tiny VLM built locally when no `--model_name_or_path` is given."},
    )
    final_eval_episodes: int = field(
        default=32, metadata={"help": "Greedy evaluation episodes after training (0: none); goes into the model card."}
    )
    warm_start_steps: int = field(
        default=0,
        metadata={
            "help": "Supervised steps that teach the answer format (random actions, so not the task) before PPO. "
            "For untrained/tiny models only; real runs start from an SFT checkpoint instead."
        },
    )


def _parser():
    from trl import ModelConfig, TrlParser

    from .config import VLMPPOConfig

    return TrlParser((TrainScriptArguments, VLMPPOConfig, ModelConfig), prog="vlm-env-ppo train")


def parse_train_args(argv: list[str] | None = None, default_config=None, defaults: dict | None = None):
    """Parse ``argv`` (default ``sys.argv[1:]``) as ``vlm-env-ppo train`` does, with TRL's
    ``TrlParser((TrainScriptArguments, VLMPPOConfig, ModelConfig))``; returns the three dataclasses.

    Precedence, lowest first: the dataclass defaults, ``defaults`` (a dict of field values), the YAML ``--config``
    (``default_config`` when ``argv`` names none), flags on the command line. The example scripts call this with
    their own YAML, so they take exactly the flags of ``vlm-env-ppo train``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if default_config is not None and "--config" not in argv:
        argv = ["--config", str(default_config), *argv]
    parser = _parser()
    unknown = parser.set_defaults_with_config(**(defaults or {}))
    if unknown:
        raise ValueError(f"Unknown fields in `defaults`: {unknown[::2]}; see `vlm-env-ppo train --help`.")
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as error:
        raise _friendlier_config_error(error, parser) from None


def _friendlier_config_error(error: ValueError, parser) -> ValueError:
    """TRL's message for unknown YAML keys speaks to developers ("add them to the dataclass"): name the unknown
    fields, the closest known ones, and where to look them up instead."""
    import difflib
    import re

    match = re.match(r"Unknown arguments from config file: \[(.*)\]", str(error))
    if match is None:
        return error
    names = [n.strip(" '\"").removeprefix("--") for n in match.group(1).split(",") if n.strip(" '\"").startswith("--")]
    known = [a.dest for a in parser._actions]
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ValueError(f"Unknown field(s) in the config file: {', '.join(hints)}. `--help` lists every field.")


def build_trainer(script_args: TrainScriptArguments, args, model_args, trainer_cls=None, **trainer_kwargs):
    """Model, quantization and LoRA from `trl.ModelConfig`, then a `VLMPPOTrainer` (or ``trainer_cls``).

    With no ``model_name_or_path`` a tiny VLM is built locally in ``output_dir/tiny-base-model``. Examples call this
    too, so the command line and the example scripts build trainers the same way.
    """
    from trl import get_peft_config

    from .models.loading import model_init_kwargs
    from .models.tiny import build_tiny_vlm
    from .trainer import VLMPPOTrainer

    model = model_args.model_name_or_path
    if model is None:
        model = os.path.join(args.output_dir, "tiny-base-model")
        if not os.path.isfile(os.path.join(model, "config.json")):  # a resumed quickstart keeps its base model
            build_tiny_vlm(script_args.tiny_family, model, seed=args.seed)
    args.model_init_kwargs = model_init_kwargs(model_args, args.model_init_kwargs)
    trainer_cls = trainer_cls or VLMPPOTrainer
    env = trainer_kwargs.pop("env", script_args.env_id)
    return trainer_cls(model, args, env=env, peft_config=get_peft_config(model_args), **trainer_kwargs)


def run_training(trainer, script_args: TrainScriptArguments) -> dict:
    """Warm start (if asked), train (resuming if asked), evaluate, save the agent and its learning curve, and print
    a summary. Returns the last logged training metrics."""
    from .replay import plot_learning_curve
    from .warm_start import teach_answer_format

    args = trainer.args
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    if script_args.warm_start_steps and not resume:
        teach_answer_format(trainer, steps=script_args.warm_start_steps, seed=args.seed)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    # The live bar replaces Trainer's own, which writes the whole metric dict over the bar at every logging step.
    trainer.pop_callback(ProgressCallback)
    trainer.pop_callback(PrinterCallback)
    trainer.add_callback(LiveSuccessCallback())
    trainer.train(resume_from_checkpoint=resume)
    if script_args.final_eval_episodes:
        trainer.evaluate(num_episodes=script_args.final_eval_episodes)
    trainer.save_model(args.output_dir)
    curve = os.path.join(args.output_dir, "learning_curve.png")
    plot_learning_curve(trainer.state.log_history, curve)
    history = [h for h in trainer.state.log_history if "env/success_rate" in h]
    first, last = history[0], history[-1]
    ended = [h for h in history if h.get("env/episodes", 0) > 0]  # updates in which some episode finished
    episodes_text = (
        f"success rate {ended[0]['env/success_rate']:.2f} -> {ended[-1]['env/success_rate']:.2f}, episode return "
        f"{ended[0]['env/episode_return']:.2f} -> {ended[-1]['env/episode_return']:.2f}"
        if ended
        else "no episode ended during training"
    )
    final_eval = getattr(trainer, "last_eval", None) or {}
    # Only an evaluation of the trained policy is the final one: one from before or during training is not.
    current = final_eval.get("eval/update") == trainer.state.global_step
    eval_text = (
        f" Final evaluation ({final_eval['eval/episodes']} episodes, "
        f"{'greedy' if final_eval.get('eval/greedy', True) else 'sampled'}): success rate "
        f"{final_eval['eval/success_rate']:.2f}, return {final_eval['eval/episode_return']:.2f}, invalid outputs "
        f"{final_eval['eval/invalid_action_rate']:.2f} (each played a random legal action)."
        if final_eval and current
        else " Not evaluated after training (final_eval_episodes=0)."
    )
    print(
        f"\nvlm-env-ppo: {trainer.env_steps} env steps on {trainer.env_id or 'custom env'}. {episodes_text}, invalid "
        f"outputs {first['env/invalid_action_rate']:.2f} -> {last['env/invalid_action_rate']:.2f}.{eval_text} Agent "
        f"saved to {args.output_dir} (learning curve: {curve})"
    )
    return last


def train(argv: list[str]) -> dict:
    """``vlm-env-ppo train``: parse ``argv`` (YAML ``--config`` + flags), train, save, summarize."""
    argv = list(argv)
    quickstart = "--model_name_or_path" not in argv and not any(a.startswith("--model_name_or_path=") for a in argv)
    try:
        script_args, args, model_args = parse_train_args(
            argv, default_config=QUICKSTART_CONFIG if quickstart else None
        )
    except (ValueError, TypeError) as error:  # a flag value the config rejects: its message says what to change
        _usage_error("vlm-env-ppo train", error)
    return run_training(build_trainer(script_args, args, model_args), script_args)


class LiveSuccessCallback:
    """Shows the latest success rate, return and invalid-output rate on the progress bar instead of printing dicts."""

    def __new__(cls):
        from transformers.trainer_callback import ProgressCallback

        class _Callback(ProgressCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and self.training_bar is not None and logs:
                    shown = {
                        "success": logs.get("env/success_rate"),
                        "return": logs.get("env/episode_return"),
                        "invalid": logs.get("env/invalid_action_rate"),
                    }
                    shown = {k: f"{v:.2f}" for k, v in shown.items() if v is not None}
                    if shown:
                        self.training_bar.set_postfix(shown, refresh=True)

        return _Callback()


def _agent_parser(prog: str, play: bool):
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="Evaluate a saved agent on fixed seeds." if not play
                                     else "Play episodes with a saved agent; write an HTML replay and a GIF.")
    parser.add_argument("agent", help="Saved agent folder, checkpoint, or Hub repo id.")
    parser.add_argument("--env_id", default=None, help="Env id (default: the one the agent was trained on).")
    parser.add_argument("--num_episodes", type=int, default=3 if play else 32)
    parser.add_argument("--seed", type=int, default=0, help="Episode k is reset with seed + k.")
    parser.add_argument("--sample", action="store_true", help="Sample at the training temperature (default greedy).")
    parser.add_argument("--constrained_decoding", choices=("true", "false"), default=None,
                        help="Generate under the answer grammar or not (default: as the agent was trained).")
    parser.add_argument("--env_kwargs", type=_json_dict, default=None,
                        help='Keyword arguments for gymnasium.make, as JSON, e.g. \'{"max_episode_steps": 20}\' '
                        "(default: those the agent was trained with; these override them).")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="Allow importing the user code (its Task or trainer class) the agent names as its task.")
    if play:
        parser.add_argument("--output", default="replay", help="Writes OUTPUT.html and OUTPUT.gif.")
    return parser


def _json_dict(text: str) -> dict:
    import argparse
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def _load_agent(opts):
    from .agent import VLMAgent
    from .tasks import get_task

    from .tasks import UnknownEnvError, UnknownTaskError

    task = None
    if opts.env_id:
        try:
            task = get_task(opts.env_id)  # another env's registered task; else the agent's own task acts in it
        except UnknownEnvError:
            raise
        except UnknownTaskError:
            pass
    return VLMAgent.from_pretrained(opts.agent, task=task, constrained_decoding=_flag(opts.constrained_decoding),
                                    trust_remote_code=opts.trust_remote_code)


def _flag(value: str | None) -> bool | None:
    return None if value is None else value == "true"


def evaluate_command(argv: list[str]) -> dict:
    """``vlm-env-ppo eval AGENT``: success rate, return, length, invalid-action rate on fixed seeds, as a table."""
    opts = _agent_parser("vlm-env-ppo eval", play=False).parse_args(argv)
    agent = _load_agent(opts)
    result = agent.evaluate(opts.env_id, num_episodes=opts.num_episodes, seed=opts.seed, greedy=not opts.sample,
                            **(opts.env_kwargs or {}))
    rows = [("agent", opts.agent), ("env", opts.env_id or agent.config.get("env_id")),
            ("episodes", result.num_episodes), ("seeds", f"{opts.seed}..{opts.seed + opts.num_episodes - 1}"),
            ("decoding", ("sampled" if opts.sample else "greedy")
             + (", constrained" if agent.constraint is not None else "")), ("success rate", f"{result.success_rate:.3f}"),
            ("mean return", f"{result.mean_return:.3f}"), ("mean episode length", f"{result.mean_episode_length:.2f}"),
            ("invalid-action rate", f"{result.invalid_action_rate:.3f}")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return result.metrics()


def play_command(argv: list[str]) -> tuple[str, str]:
    """``vlm-env-ppo play AGENT``: record episodes to a self-contained HTML replay and an animated GIF."""
    from .replay import record_episodes, write_gif, write_html

    opts = _agent_parser("vlm-env-ppo play", play=True).parse_args(argv)
    agent = _load_agent(opts)
    env_id = opts.env_id or agent.config.get("env_id")
    episodes = record_episodes(
        agent, agent.env_factory(opts.env_id, **(opts.env_kwargs or {})), opts.num_episodes, opts.seed,
        greedy=not opts.sample,
    )
    html_path, gif_path = f"{opts.output}.html", f"{opts.output}.gif"
    write_html(episodes, html_path, title=f"{env_id}: {opts.agent}")
    write_gif(episodes, gif_path)
    print(f"Wrote {html_path} and {gif_path} ({sum(len(e) for e in episodes)} steps, {len(episodes)} episodes).")
    return html_path, gif_path


def sft_command(argv: list[str]) -> dict:
    """``vlm-env-ppo sft``: expert data from the env, SFT with TRL's SFTTrainer (LoRA, merged), evaluation before
    and after (`vlm_env_ppo.sft.sft_main`). No model: the embedded SFT quickstart (tiny VLM, CPU, no downloads)."""
    from .sft import sft_main

    return sft_main(argv)


COMMANDS = {"train": train, "eval": evaluate_command, "play": play_command, "sft": sft_command}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = (
        "usage: vlm-env-ppo {sft,train,eval,play} ...\n"
        "  sft [--config file.yaml] [--flag value ...]    expert data + SFT warm start (no model: a CPU quickstart)\n"
        "  train [--config file.yaml] [--flag value ...]  PPO training (no model: the embedded quickstart)\n"
        "  eval AGENT [--num_episodes N --seed S]         evaluate a saved agent on fixed seeds\n"
        "  play AGENT [--output replay]                   HTML replay + GIF of a few episodes\n"
        "each command has --help"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f"Unknown command {command!r}.\n{usage}")
    from .models.loading import ModelNotFoundError
    from .tasks import UnknownTaskError
    from .user_code import UntrustedCodeError

    try:
        COMMANDS[command](rest)
    except (ModelNotFoundError, UnknownTaskError, UntrustedCodeError) as error:  # a typo or a missing flag: no crash
        _usage_error(f"vlm-env-ppo {command}", error)


def _usage_error(prog: str, error: Exception) -> None:
    """Exit as argparse does for a bad argument: ``prog: error: message`` on stderr, status 2, no traceback (the
    message says what to change). Tracebacks stay for real crashes."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    sys.exit(2)


def __getattr__(name: str):
    # `model_init_kwargs` moved to `vlm_env_ppo.models.loading` (`sft` needs it too, and must not import the CLI);
    # imported on first use so that `vlm-env-ppo --help` stays quick.
    if name == "model_init_kwargs":
        from .models.loading import model_init_kwargs

        return model_init_kwargs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
