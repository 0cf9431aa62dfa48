"""The package's layout cannot silently regress: no import cycle among its modules, no module over 600 lines.

Every ``import`` / ``from ... import`` anywhere in a module counts (module level, inside functions, under
``TYPE_CHECKING``), relative or absolute ``vlm_env_ppo.*``. An edge goes to the module an import names: ``from .agent
import VLMAgent`` -> ``vlm_env_ppo.agent``; ``from . import envs`` -> ``vlm_env_ppo.envs`` (a submodule); ``from . import
__version__`` -> ``vlm_env_ppo`` (the package's ``__init__``). The implicit import of a parent package's ``__init__``
is not an edge (every module of a package has it; an ``__init__``'s own imports are edges like any module's).
"""

import ast
from pathlib import Path

PACKAGE = "vlm_env_ppo"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 600
LONG_MODULES_ALLOWED = {"vlm_env_ppo.envs.alfworld_env"}  # ALFWorld's PDDL glue: one piece, kept whole


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` (at ``path``) imports anywhere in its code."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            bases, names = [base], [alias.name for alias in node.names]
        else:
            continue
        for base in bases:
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            # `import vlm_env_ppo.a.b` imports the deepest module it names
            while base not in known and "." in base:
                base = base.rsplit(".", 1)[0]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            targets.update(submodules)
            if len(submodules) < len(names) or not names:  # some name is an attribute of `base` itself
                targets.add(base)
    targets.discard(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_imports_in_functions_and_relative_ones():
    graph = import_graph()
    assert "vlm_env_ppo.envs.adapter" in graph["vlm_env_ppo.tasks"]  # module level, relative
    assert "vlm_env_ppo.trainer" in graph["vlm_env_ppo.cli"]  # inside a function
    assert "vlm_env_ppo.envs" in graph["vlm_env_ppo"]  # `from . import envs`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_is_over_600_lines():
    long = {
        name: n
        for name, path in module_files().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES and name not in LONG_MODULES_ALLOWED
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"
