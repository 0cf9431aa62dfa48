"""What a user writes about their env, recorded with a saved agent and found again when it loads.

The one object is a `vlm_env_ppo.tasks.Task`: the prompt (``build_messages``), the parser (``parse_action``), the
answer grammar (``answer_grammar``) and the action names. A `Task` subclass with its own hooks, or a trainer subclass
that overrides the trainer's hooks (the older way, still supported: `TrainerHooksTask` wraps it), is recorded in
``vlm_env_ppo.json`` as an importable path ``"module:QualName"`` plus the JSON-able fields it was built with
(`task_record`). `load_task` builds it again for `VLMAgent.from_pretrained`, ``vlm-env-ppo eval/play`` and an agent
downloaded from the Hub.

Why a path and not the code itself: the hooks belong with the env, whose code a user must install anyway to act in
it (its gymnasium registration, its package's own imports), so the agent names the module the user installs, as
``gym.make("module:Env-v0")`` does, instead of copying one file out of its package (which breaks on that file's own
imports and silently goes stale when the package is fixed). Importing a module runs its code, so loading anything
outside this package is opt-in, as transformers' ``trust_remote_code`` is: `UntrustedCodeError` otherwise.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import sys
from types import SimpleNamespace

from .tasks import Task, UnknownEnvError, UnknownTaskError, get_task

logger = logging.getLogger(__name__)

# The fields of the agent's config a trainer's hooks may read as ``self.args.<field>`` once the agent is loaded back.
HOOK_ARGS = ("action_only", "max_new_tokens", "temperature", "top_p", "history_length", "env_kwargs",
             "constrained_decoding", "cot_logprob_coef")
TRAINER_HOOKS = ("build_messages", "parse_action", "answer_grammar")
_OWN_MODULE = __name__.split(".")[0]


class UntrustedCodeError(ImportError):
    """A saved agent names user code (its task) that is not trusted (``trust_remote_code``) or cannot be imported."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def code_path(obj) -> str | None:
    """``"module:QualName"`` under which ``obj`` (a class or function) can be imported again, or `None` (a lambda, a
    local class, an object the path does not resolve to). A script's ``__main__`` is recorded under the script's file
    name, the module it is when its folder is on ``PYTHONPATH``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        return None
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        file = getattr(main, "__file__", None)
        if spec is not None and spec.name:
            module = spec.name
        elif file:
            module = file.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".py")
        else:
            return None
        return f"{module}:{qualname}"
    try:
        if _resolve(module, qualname) is not obj:
            return None
    except Exception:  # noqa: BLE001 - not importable under its own name: not recordable
        return None
    return f"{module}:{qualname}"


def _resolve(module: str, qualname: str):
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def import_code(path: str, trust_remote_code: bool, what: str = "task"):
    """The class or function ``path`` (``"module:QualName"``) names. Code outside vlm_env_ppo is imported only with
    ``trust_remote_code``; anything that goes wrong is one `UntrustedCodeError` line that says what to do."""
    module, _, qualname = path.partition(":")
    if module.split(".")[0] != _OWN_MODULE and not trust_remote_code:
        raise UntrustedCodeError(
            f"This agent's {what} is user code, {path}: loading it imports (runs) module {module!r}. If you trust it, "
            "pass `trust_remote_code=True` to `VLMAgent.from_pretrained` (`--trust_remote_code` on the command line), "
            "or pass your own `task=` (`--env_id` of a registered task)."
        )
    try:
        return _resolve(module, qualname)
    except Exception as err:  # noqa: BLE001 - any failure to import becomes the one-line error
        reason = (str(err).strip().splitlines() or [""])[0]
        raise UntrustedCodeError(
            f"This agent's {what} is user code, {path}, which cannot be imported ({type(err).__name__}: {reason}). "
            f"Install the package that provides {module!r} or put its folder on PYTHONPATH, or pass your own `task=`."
        ) from err


# ------------------------------------------------------------------------------------------------------ the record
def task_record(task: Task | None) -> dict | None:
    """What `load_task` needs to build ``task`` again: ``{"class": "module:QualName", "fields": {...}}`` with each
    dataclass field as JSON, a function field as its ``"module:name"`` (under ``"functions"``). `None`, with a
    warning, for a task that cannot be recorded (a local class, a lambda): the agent then needs ``task=`` to load."""
    if task is None:
        return None
    if isinstance(task, TrainerHooksTask):
        return task.record()
    cls_path = code_path(type(task))
    fields, functions, problems = {}, {}, []
    for f in dataclasses.fields(task):
        if not f.init:
            continue
        value = getattr(task, f.name)
        if callable(value):
            path = code_path(value)
            functions[f.name] = path
            if path is None:
                problems.append(f"`{f.name}` ({value!r}) is not an importable function")
            continue
        if isinstance(value, tuple):
            value = list(value)
        try:
            json.dumps(value)
        except TypeError:
            problems.append(f"`{f.name}` is not JSON")
            continue
        fields[f.name] = value
    if cls_path is None:
        problems.append(f"its class {type(task).__qualname__} is not importable (define it at a module's top level)")
    if problems:
        logger.warning("The task of this agent cannot be recorded with it: %s. Loading the agent will need `task=`.",
                       "; ".join(problems))
        return None
    return {"class": cls_path, "fields": fields, "functions": functions}


def load_task(config: dict, trust_remote_code: bool = False) -> Task | None:
    """The task a saved agent's config records (`task_record`), or, for an agent saved before tasks were recorded,
    the registered task of its env id; `None` when there is neither."""
    record = config.get("task")
    if record is None:
        return get_task(config["env_id"]) if config.get("env_id") else None
    if record.get("trainer_hooks"):
        return TrainerHooksTask.from_record(record, config, trust_remote_code)
    cls = import_code(record["class"], trust_remote_code)
    functions = {name: import_code(path, trust_remote_code, what=f"task's `{name}`")
                 for name, path in (record.get("functions") or {}).items() if path is not None}
    fields = {k: tuple(v) if k == "action_names" and v is not None else v for k, v in record["fields"].items()}
    return cls(**fields, **functions)


# ------------------------------------------------------------------------------------------- trainer-subclass hooks
def resolve_task(env, task: Task | None, hooks: list[str]) -> Task | None:
    """The trainer's task: ``task``, else the registered task of an env id. An env id with no registered task is
    fine when the trainer's own ``build_messages`` and ``parse_action`` (``hooks``) are the prompt and the parser; a
    mistyped env id is `UnknownEnvError` ("no such env") either way."""
    if task is not None or not isinstance(env, str):
        return task
    try:
        return get_task(env)
    except UnknownEnvError:
        raise
    except UnknownTaskError:
        if {"build_messages", "parse_action"} <= set(hooks):
            return None
        raise


def overridden_hooks(trainer_cls: type) -> list[str]:
    """Which of the trainer hooks (`TRAINER_HOOKS`) a `VLMPPOTrainer` subclass overrides: those that a class outside
    this package defines."""
    overridden = []
    for name in TRAINER_HOOKS:
        owner = next((klass for klass in trainer_cls.__mro__ if name in vars(klass)), None)
        if owner is not None and owner.__module__.split(".")[0] != _OWN_MODULE:
            overridden.append(name)
    return overridden


@dataclasses.dataclass(frozen=True)
class TrainerHooksTask(Task):
    """A `Task` whose prompt, parser and grammar are the hooks of a `VLMPPOTrainer` subclass (the README's "override
    the hooks" way): the agent saved from such a trainer records the trainer class, and loads back with this.

    The hooks run on an instance of that class made without ``__init__`` (no model, no env), on which they find
    ``self.task`` (the task the trainer was given, or `None`), ``self.args`` (the recorded `HOOK_ARGS`: prompt
    variant, ``max_new_tokens``, ...) and, inside ``answer_grammar``, ``self.constraint``. A hook that reads anything
    else of the trainer cannot run without one: move that into a `Task` subclass instead.
    """

    hooks: object = dataclasses.field(default=None, repr=False, compare=False)
    base: Task | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_trainer(cls, trainer) -> TrainerHooksTask:
        """The task of a trainer that overrides hooks: its task's action names (and admissible actions), else
        ``"0"``, ``"1"``, ... for the env's `Discrete` actions."""
        base = trainer.task
        if base is not None:
            names, admissible = base.action_names, base.admissible_actions
        else:
            names, admissible = tuple(str(i) for i in range(int(trainer.action_space.n))), None
        return cls(trainer.env_id or "custom", names, description="", admissible_actions=admissible, hooks=trainer,
                   base=base)

    def record(self) -> dict | None:
        cls_path = code_path(type(self.hooks))
        if cls_path is None:
            logger.warning("The trainer class %s is not importable (define it at a module's top level): the agent "
                           "cannot record its hooks, and loading it will need `task=`.", type(self.hooks).__qualname__)
            return None
        names = list(self.action_names) if self.action_names is not None else None
        return {"trainer_hooks": True, "class": cls_path, "env_id": self.env_id, "action_names": names,
                "base": task_record(self.base)}

    @classmethod
    def from_record(cls, record: dict, config: dict, trust_remote_code: bool) -> TrainerHooksTask:
        trainer_cls = import_code(record["class"], trust_remote_code, what="trainer (its hooks)")
        base = load_task({"task": record["base"]}, trust_remote_code) if record.get("base") else None
        hooks = trainer_cls.__new__(trainer_cls)  # no __init__: the hooks need no model and no env
        hooks.__dict__.update(task=base, constraint=None, args=SimpleNamespace(**{k: config.get(k) for k in HOOK_ARGS}),
                              _default_parser="parse_action" not in overridden_hooks(trainer_cls))
        names = tuple(record["action_names"]) if record.get("action_names") is not None else None
        return cls(record.get("env_id") or "custom", names, description="", hooks=hooks, base=base,
                   admissible_actions=base.admissible_actions if base is not None else None)

    def build_messages(self, observation, info: dict | None = None, action_only: bool = False) -> list[dict]:
        return self.hooks.build_messages(observation, info if info is not None else {})

    def parse_action(self, completion: str, info: dict | None = None):
        return self.hooks.parse_action(completion, info if info is not None else {})

    def answer_grammar(self, info: dict, constraint, action_only: bool = False) -> str | None:
        self.hooks.constraint = constraint
        return self.hooks.answer_grammar(info)
