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
