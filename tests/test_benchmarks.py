"""The benchmark scripts keep working (their numbers are reported, not asserted: README, benchmarks/README.md)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_run_all_measures_every_metric_with_forced_completion_lengths(tmp_path):
    """A short `run_all.py --quick` on 8-token completions: every metric of the table is measured. The rollout
    benchmark asserts inside that every completion had exactly `max_new_tokens` tokens, so a change that lets
    completions end early (the two sides of a ratio would no longer do identical work) fails here."""
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", "--max-new-tokens", "8", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["goals"]) <= set(results), "a metric of the goals table was not measured"
    for key in results["goals"]:
        assert math.isfinite(results[key]) and results[key] > 0, (key, results[key])
    assert results["settings"]["max_new_tokens"] == 8


def test_learning_benchmark_smoke_writes_every_reported_number(tmp_path):
    """`learning.py --quick` on two probes (2 updates each): the table's numbers are in the JSON for every probe and
    seed, and the curves picture is written. Learning itself is asserted by tests/test_learning.py."""
    out, picture = tmp_path / "learning.json", tmp_path / "curves.png"
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "learning.py"), "--quick", "--probes", "ColorChoice", "GridNav",
         "--out", str(out), "--plot", str(picture)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"ColorChoice", "GridNav"}
    for probe, runs in report["runs"].items():
        assert len(runs) == 1 and runs[0]["updates"] == 2, probe
        assert {"updates_to_90", "worst_after_90", "final_greedy_success", "final_invalid_rate"} <= set(runs[0])
        assert 0.0 <= runs[0]["final_greedy_success"] <= 1.0
    assert picture.stat().st_size > 1000 and "ColorChoice" in proc.stdout
