"""A saved agent: loading it back (`VLMAgent`), acting with it, and evaluating it on fixed seeds.

Built on `vlm_env_ppo.policy` (acting), `vlm_env_ppo.evaluation` and `vlm_env_ppo.saved_agent` (the folder format).
A saved agent folder (from `VLMPPOTrainer.save_model`, a checkpoint, or the Hub) holds the policy (a LoRA adapter
or full weights), ``value_head.safetensors``, the processor, and ``vlm_env_ppo.json`` (env id, base model, prompt
variant, generation settings).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import gymnasium as gym
import torch
from transformers import AutoProcessor

from .actions import ParsedAction, checked_parse
from .constrained import GrammarConstraint, output_vocab_size
from .envs.adapter import HistoryWrapper, adapted_factory

# Re-exported: they lived here before the evaluation harness, the acting code and the saved-folder format got
# modules of their own (`from vlm_env_ppo.agent import evaluate_episodes` and the like keep working).
from .evaluation import (  # noqa: F401
    ActBatch,
    EpisodeRecord,
    EvalResult,
    evaluate_episodes,
    random_legal_action,
)
from .models.loading import (
    check_model_path,
    generation_suppress_token_ids,
    get_tokenizer,
)
from .models.value_head import VALUE_HEAD_WEIGHTS, ValueHead, policy_forward
from .policy import (  # noqa: F401
    NEUTRAL_GENERATION_SETTINGS,
    _has_image,
    build_model_inputs,
    eos_token_ids,
    fill_image_placeholders,
    generate_completions,
    mask_after_eos,
    neutral_generation_settings,
)
from .saved_agent import (  # noqa: F401
    ADAPTER_CONFIG,
    AGENT_CONFIG,
    download_agent,
    load_agent_policy,
    load_value_head,
    read_agent_config,
)
from .tasks import Task, UnknownEnvError, get_task  # noqa: F401  (get_task: re-exported)
from .user_code import load_task


logger = logging.getLogger(__name__)


class VLMAgent:
    """A trained agent loaded back for acting and evaluation (no trainer, no optimizer).

    ```python
    agent = VLMAgent.from_pretrained("nl-ppo")          # a saved agent folder or checkpoint
    action, parsed, text = agent.act(frame, info)
    print(agent.evaluate(num_episodes=100, seed=0))
    ```
    """

    def __init__(self, policy, processing_class, value_head: ValueHead | None, task: Task | None, config: dict):
        self.policy = policy.eval()
        self.processing_class = processing_class
        self.value_head = value_head.eval() if value_head is not None else None
        self.task = task
        self.config = config
        self.parse_errors = 0  # outputs whose parse_action raised or returned something unusable
        tokenizer = get_tokenizer(processing_class)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id = tokenizer.pad_token_id
        self.suppress_token_ids = generation_suppress_token_ids(
            processing_class, policy.config, keep_ids=eos_token_ids(policy, tokenizer)
        )
        # Constrained decoding as the agent was trained (``constrained_decoding`` in its config): every output a
        # legal action, sampled or greedy. Set ``agent.constraint = None`` to see the unconstrained policy.
        self.constraint = None
        if config.get("constrained_decoding"):
            self.constraint = GrammarConstraint(
                tokenizer, output_vocab_size(policy), eos_token_ids(policy, tokenizer), self.suppress_token_ids,
                config.get("max_new_tokens", 256),
            )

    @classmethod
    def from_pretrained(
        cls, path: str, task: Task | None = None, device: str | torch.device | None = None,
        constrained_decoding: bool | None = None, trust_remote_code: bool = False, **model_kwargs,
    ) -> VLMAgent:
        """Load a saved agent folder (local path or Hub repo id).

        Args:
            task: the prompt/parser/grammar to act with; default the one recorded with the agent
                (`vlm_env_ppo.user_code.load_task`), or for an older agent the registered task of its env id.
            constrained_decoding: override the recorded setting (None: act as the agent was trained).
            trust_remote_code: allow importing the user code the agent names as its task (a `Task` subclass, a
                trainer subclass with hooks, their functions). Off by default: importing a module runs its code.
        """
        check_model_path(path)
        if not os.path.isdir(path):
            path = download_agent(path)
        config = read_agent_config(path)
        if constrained_decoding is not None:
            config = {**config, "constrained_decoding": bool(constrained_decoding)}
        if task is None:  # before the weights: an untrusted or missing task fails in a second, not after the load
            task = load_task(config, trust_remote_code)
        policy = load_agent_policy(path, config, is_trainable=False, **model_kwargs)
        processor = AutoProcessor.from_pretrained(path)
        value_head = load_value_head(path) if os.path.isfile(os.path.join(path, VALUE_HEAD_WEIGHTS)) else None
        device = torch.device(device) if device is not None else policy.device
        policy.to(device)
        if value_head is not None:
            value_head.to(device)
        return cls(policy, processor, value_head, task, config)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def build_messages(self, observation, info: dict) -> list[dict]:
        """The task's chat messages for one observation (`Task.build_messages`)."""
        if self.task is None:
            raise ValueError(
                "This agent has no task (it was saved without one it could record): pass `task=` to "
                "`VLMAgent.from_pretrained` (on the command line, `--env_id` of an env with a registered task)."
            )
        return self.task.build_messages(observation, info, action_only=self.config.get("action_only", False))

    def parse_action(self, completion: str, info: dict) -> ParsedAction:
        """The task's parser (`Task.parse_action`), checked: a hook that raises or returns something other than a
        valid `ParsedAction` gives an invalid one (counted in ``parse_errors``, the first logged)."""
        parsed, problem = checked_parse(self.task.parse_action, completion, info, len(self.task.legal_actions(info))
                                        if self.task.action_names is None else len(self.task.action_names))
        if problem is not None:
            self.parse_errors += 1
            if self.parse_errors == 1:
                logger.warning("%s; treated as invalid (only this first one is logged).", problem)
        return parsed

    def answer_grammar(self, info: dict) -> str | None:
        """The grammar of this step's completion under constrained decoding: the task's (`Task.answer_grammar`)."""
        if self.task is None:
            return None
        return self.task.answer_grammar(info, self.constraint, self.config.get("action_only", False))

    def _inputs(self, observations, infos) -> dict[str, torch.Tensor]:
        messages = [fill_image_placeholders(self.build_messages(o, i), o, i) for o, i in zip(observations, infos)]
        inputs = build_model_inputs(self.processing_class, messages)
        dtype = self.policy.dtype
        return {k: v.to(self.device, dtype=dtype) if torch.is_floating_point(v) else v.to(self.device) for k, v in inputs.items()}

    @torch.no_grad()
    def act_batch(self, observations, infos: list[dict], greedy: bool = True) -> tuple[list[ParsedAction], list[str]]:
        """Parsed actions and completion texts for a batch of observations (one `generate` call)."""
        _, _, texts = generate_completions(
            self.policy,
            self.processing_class,
            self._inputs(observations, infos),
            greedy=greedy,
            temperature=self.config.get("temperature", 1.0),
            top_p=self.config.get("top_p", 1.0),
            max_new_tokens=self.config.get("max_new_tokens", 256),
            suppress_token_ids=self.suppress_token_ids,
            pad_token_id=self.pad_token_id,
            logits_processor=None if self.constraint is None else self.constraint.logits_processor(
                [self.answer_grammar(i) for i in infos]
            ),
        )
        return [self.parse_action(t, i) for t, i in zip(texts, infos)], texts

    def act(self, observation, info: dict, greedy: bool = True) -> tuple[int | None, ParsedAction, str]:
        """``(action or None if invalid, parsed, completion text)`` for one observation."""
        parsed, texts = self.act_batch([observation], [info], greedy=greedy)
        return parsed[0].action, parsed[0], texts[0]

    @torch.no_grad()
    def value(self, observations, infos: list[dict]) -> torch.Tensor:
        """Critic values ``(batch,)`` of observations."""
        if self.value_head is None:
            raise ValueError("This agent was saved without a value head.")
        inputs = self._inputs(observations, infos)
        empty = inputs["input_ids"][:, :0]
        _, _, values = policy_forward(self.policy, self.value_head, inputs, empty, empty, 1.0)
        return values.float().cpu()

    def evaluate(
        self,
        env: str | Callable[[], gym.Env] | None = None,
        num_episodes: int = 32,
        seed: int = 0,
        greedy: bool = True,
        batch_size: int = 8,
        **env_kwargs,
    ) -> EvalResult:
        """Play ``num_episodes`` on seeds ``seed, seed + 1, ...``; greedy by default."""
        return evaluate_episodes(
            lambda obs, infos: self.act_batch(obs, infos, greedy=greedy)[0],
            self.env_factory(env, **env_kwargs),
            num_episodes,
            seed,
            batch_size,
            task=self.task,
        )

    def env_factory(self, env: str | Callable[[], gym.Env] | None = None, **env_kwargs) -> Callable[[], gym.Env]:
        """A zero-argument factory of the env this agent acts in, as the trainer made it: from ``env`` (an id or a
        factory; default the training env id with its ``env_kwargs``), adapted (`vlm_env_ppo.envs.adapter.make_env`)
        and, for an agent trained with ``history_length`` > 0, wrapped in a `HistoryWrapper`."""
        if env is None:
            env = self.config.get("env_id")
            env_kwargs = {**(self.config.get("env_kwargs") or {}), **env_kwargs}
            if env is None:
                raise UnknownEnvError(
                    "This agent records no env id (it was trained on an env given as a factory): pass `env=` (an id or "
                    "a factory; `--env_id` on the command line), or train it with a registered env id."
                )
        make = adapted_factory(env, **env_kwargs)
        length = int(self.config.get("history_length") or 0)
        if not length:
            return make
        names = self.task.action_names if self.task is not None else None
        return lambda: HistoryWrapper(make(), length, names)

