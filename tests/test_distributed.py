"""Two CPU processes with accelerate (gloo): the multi-process guarantees of issue 6.

`tests/distributed_script.py` runs two PPO updates per process, launched with the shipped DDP config
(`examples/accelerate_configs/ddp.yaml`), and writes per-rank records that these tests check. The ranks' episodes end
at different times (rank 0: one step, terminated; rank 1: three steps, truncated) and their rewards differ.

Under DDP a critic forward is local, so uneven episode ends could not hang it; the FSDP2 run (model sharded by hand:
accelerate enables FSDP only with GPUs) makes every forward an all-gather, as under ZeRO-3, with the adapter-disabled
reference forward too (kl_coef > 0). Without equal forward counts per rank that run dies with a collective mismatch.
A hang fails the test through the subprocess timeout instead of blocking CI.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    """Kill the launcher and every worker under it (torchrun starts each worker in a session of its own, so killing
    the launcher's process group would leave them running)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(processes, timeout=30)


def launch(tiny_vlm_path, out, *extra) -> list[dict]:
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.fail("the `accelerate` command is not installed next to this Python")
    command = [
        accelerate, "launch",
        "--config_file", os.path.join(ROOT, "examples", "accelerate_configs", "ddp.yaml"),
        "--mixed_precision", "no",
        "--main_process_port", str(free_port()),
        os.path.join(ROOT, "tests", "distributed_script.py"),
        "--model", tiny_vlm_path("llava_next"),
        "--out", str(out),
        *extra,
    ]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"2-process run did not finish in {TIMEOUT_S} s (a hung collective?)\n{stderr[-4000:]}")
    assert process.returncode == 0, f"2-process run failed:\n{stdout[-2000:]}\n{stderr[-6000:]}"
    records = []
    for rank in range(2):
        with open(out / f"rank{rank}.json") as f:
            records.append(json.load(f))
    return records


@pytest.fixture(scope="module")
def ranks(tiny_vlm_path, tmp_path_factory):
    return launch(tiny_vlm_path, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def fsdp2_ranks(tiny_vlm_path, tmp_path_factory):
    return launch(tiny_vlm_path, tmp_path_factory.mktemp("fsdp2"), "--fsdp2", "--kl_coef", "0.05")


def test_runs_as_two_processes_and_finishes_with_uneven_episodes(ranks):
    """Rank 1 needs bootstrap values for truncated episodes, rank 0 none; both finish every update and run the same
    number of critic forwards (extra ones would be unmatched collectives under ZeRO-3/FSDP)."""
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert all(r["distributed_type"].endswith("MULTI_CPU") for r in ranks)
    assert ranks[0]["truncated"] == 0 and ranks[1]["truncated"] > 0
    assert [r["global_step"] for r in ranks] == [2, 2]
    assert ranks[0]["env_steps"] == ranks[1]["env_steps"] == 2 * 4 * 2 * 2
    assert ranks[0]["value_forwards"] == ranks[1]["value_forwards"] > 0


def test_evaluation_is_shared_between_processes_and_merged(ranks):
    """Under DDP the 5 evaluation episodes are split (rank 0: episodes 0, 2, 4 on its 1-step env; rank 1: 1, 3 on
    its 3-step env) and merged: both ranks report the same 5 episodes, mean length (3 * 1 + 2 * 3) / 5. Had each
    rank played all 5, rank 0 would report 1.0 and rank 1 3.0."""
    assert ranks[0]["eval"] == ranks[1]["eval"]
    assert ranks[0]["eval"]["eval/episodes"] == 5
    assert ranks[0]["eval"]["eval/episode_length"] == 1.8


def test_ranks_use_different_env_seeds(ranks):
    assert ranks[0]["env_seed"] != ranks[1]["env_seed"]
    assert ranks[0]["first_frame_sha1"] != ranks[1]["first_frame_sha1"]


def test_parameters_identical_across_ranks_after_updates(ranks):
    """Different data on each rank, so identical replicas after the updates means gradients were all-reduced."""
    assert ranks[0]["params_before"] == ranks[1]["params_before"]
    assert ranks[0]["params_after"] == ranks[1]["params_after"]
    assert ranks[0]["params_after"] != ranks[0]["params_before"], "no update changed the parameters"


def test_advantages_whitened_over_all_processes(ranks):
    """Rank 0 earns +1 per step and rank 1 −1, so whitening per process would centre each rank at 0; global
    whitening centres the union and leaves the ranks on opposite sides."""
    for update in range(2):
        local = [np.asarray(r["advantages"][update]) for r in ranks]
        raw = [np.asarray(r["raw_advantages"][update]) for r in ranks]
        union = np.concatenate(local)
        assert abs(union.mean()) < 1e-5 and abs(union.std() - 1) < 1e-4
        assert local[0].mean() > 0.3 and local[1].mean() < -0.3
        everything = np.concatenate(raw)  # the same affine map on both ranks
        expected = [(a - everything.mean()) / (everything.std() + 1e-8) for a in raw]
        for got, want in zip(local, expected):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_fsdp2_uneven_episodes_finish_with_identical_shards(fsdp2_ranks):
    """Sharded weights: generation (root unsharded once per env step), scoring, the adapter-disabled reference and
    the critic forwards are collectives; the run completes, with equal forward counts and identical parameters."""
    ranks = fsdp2_ranks
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert ranks[0]["truncated"] == 0 and ranks[1]["truncated"] > 0
    assert [r["global_step"] for r in ranks] == [2, 2]
    assert ranks[0]["value_forwards"] == ranks[1]["value_forwards"] > 0
    assert all(r["kl_abs_sum"] > 0 for r in ranks), "the reference forward did not run"
    assert ranks[0]["params_after"] == ranks[1]["params_after"] != ranks[0]["params_before"]
