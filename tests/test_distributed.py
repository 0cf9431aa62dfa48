"""Two CPU processes with accelerate (gloo): the multi-process guarantees of issues 6 and 28.

`tests/distributed_script.py` runs two PPO updates per process, launched with a shipped accelerate config
(`examples/accelerate_configs/`: DDP, DeepSpeed ZeRO-2 and ZeRO-3), and writes per-rank records that these tests
check. The ranks' episodes end at different times (rank 0: one step, terminated; rank 1: three steps, truncated) and
their rewards differ.

Under DDP a critic forward is local, so uneven episode ends could not hang it; under ZeRO-3 and FSDP2 (model sharded
by hand: accelerate enables FSDP only with GPUs) every forward and every `act` is a collective, the FSDP2 run with the
adapter-disabled reference forward too (kl_coef > 0). Without equal counts per rank those runs die with a collective
mismatch or hang. A hang fails the test through the launch's watchdog timeout instead of blocking CI.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from vlm_env_ppo.tasks import COLOR_CHOICE

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


def launch(tiny_vlm_path, out, *extra, config="ddp.yaml", deepspeed=False) -> list[dict]:
    """Run `distributed_script.py` with 2 processes under the shipped accelerate ``config`` and return the ranks'
    records. ``deepspeed``: without ``ACCELERATE_USE_CPU`` (which would select accelerate's MULTI_CPU data parallel
    instead of DeepSpeed) and with a torch-extensions cache of its own, so that a lock left in the shared cache by a
    killed op build elsewhere cannot block the run."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.fail("the `accelerate` command is not installed next to this Python")
    command = [
        accelerate, "launch",
        "--config_file", os.path.join(ROOT, "examples", "accelerate_configs", config),
        "--mixed_precision", "no",
        "--main_process_port", str(free_port()),
        os.path.join(ROOT, "tests", "distributed_script.py"),
        "--model", tiny_vlm_path("llava_next"),
        "--out", str(out),
        *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if deepspeed:
        env["TORCH_EXTENSIONS_DIR"] = str(out / "torch_extensions")
    else:
        env["ACCELERATE_USE_CPU"] = "true"
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
        with open(out / f"rank{rank}{'_resumed' if '--resume' in extra else ''}.json") as f:
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


def test_fsdp2_evaluation_split_between_processes_in_lock_step(fsdp2_ranks):
    """Each `act` unshards the root, a collective: rank 0 (2 batched steps for its episodes) acts once more on a
    placeholder while rank 1 plays its third step, and both report the merged 5 episodes."""
    ranks = fsdp2_ranks
    assert ranks[0]["eval"] == ranks[1]["eval"]
    assert ranks[0]["eval"]["eval/episodes"] == 5 and ranks[0]["eval"]["eval/episode_length"] == 1.8
    assert ranks[0]["eval_acts"] == ranks[1]["eval_acts"] == 3


# ---------------------------------------------------------------------------------------------------- DeepSpeed
# The shipped ZeRO-2/3 accelerate configs, launched on 2 CPU processes as a user would (`--mixed_precision no`, as
# the CPU has no bf16 autocast here): DeepSpeed's CPU accelerator, gloo collectives, constrained decoding on.


@pytest.fixture(scope="module")
def zero3_run(tiny_vlm_path, tmp_path_factory):
    """Train 2 updates (checkpoint after each), evaluate, save the agent; then a new launch resumes from the last
    checkpoint for a third update through a `deepspeed=` ZeRO-3 config (the other way to ask for DeepSpeed)."""
    out = tmp_path_factory.mktemp("zero3")
    ranks = launch(tiny_vlm_path, out, "--save", config="zero3.yaml", deepspeed=True)
    resumed = launch(tiny_vlm_path, out, "--resume", "--zero_stage", "3", deepspeed=True)
    return out, ranks, resumed


@pytest.fixture(scope="module")
def zero2_run(tiny_vlm_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero2")
    return out, launch(tiny_vlm_path, out, "--save", config="zero2.yaml", deepspeed=True)


def check_deepspeed_training(ranks, stage: int) -> None:
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert [r["distributed_type"] for r in ranks] == ["DistributedType.DEEPSPEED"] * 2
    assert [r["zero_stage"] for r in ranks] == [stage, stage]
    assert ranks[0]["truncated"] == 0 and ranks[1]["truncated"] > 0
    assert [r["global_step"] for r in ranks] == [2, 2]
    assert ranks[0]["rollout_acts"] == ranks[1]["rollout_acts"] == 2 * 4
    assert ranks[0]["value_forwards"] == ranks[1]["value_forwards"] > 0
    assert ranks[0]["params_after"] == ranks[1]["params_after"] != ranks[0]["params_before"]
    # DeepSpeed's CPU backend would compile its shared-memory op here (minutes); `VLMPPOConfig` skips it.
    assert [r["shm_op_built"] for r in ranks] == [False, False]


def check_merged_evaluation(ranks) -> None:
    """As under DDP: rank 0 plays episodes 0, 2, 4 on its 1-step env, rank 1 episodes 1, 3 on its 3-step env, and
    both report the merged 5 (mean length 1.8; each rank playing all 5 would report 1.0 and 3.0). Before `train`
    (no DeepSpeed engine yet; under ZeRO-3 the loaded policy is partitioned already): episodes 0, 2 and 1."""
    assert ranks[0]["eval"] == ranks[1]["eval"]
    assert ranks[0]["eval"]["eval/episodes"] == 5
    assert ranks[0]["eval"]["eval/episode_length"] == 1.8
    assert ranks[0]["eval_before"] == ranks[1]["eval_before"]
    assert ranks[0]["eval_before"]["eval/episodes"] == 3
    assert ranks[0]["eval_before"]["eval/episode_length"] == pytest.approx(5 / 3)


def check_saved_agent(out, ranks) -> None:
    """The folder `save_model` wrote holds whole weights: loaded alone, the agent values and answers `FRAME` as the
    trained policy did in the run."""
    from distributed_script import FRAME

    from vlm_env_ppo.agent import VLMAgent

    agent = VLMAgent.from_pretrained(str(out / "agent"), task=COLOR_CHOICE)
    assert ranks[0]["frame_value"] == ranks[1]["frame_value"]
    np.testing.assert_allclose(float(agent.value([FRAME], [{}])[0]), ranks[0]["frame_value"], atol=1e-5)
    assert agent.act(FRAME, {})[2] == ranks[0]["frame_text"]
    assert ranks[0]["checkpoints"] == ["checkpoint-1", "checkpoint-2"]


def test_zero3_trains_with_constrained_decoding(zero3_run):
    """ZeRO-3 partitions the weights at load: constrained decoding reads the vocabulary size from DeepSpeed's full
    shape (a shard's is 0), and the parameters, gathered, are identical on both ranks after the updates."""
    check_deepspeed_training(zero3_run[1], stage=3)


def test_zero3_evaluation_split_between_processes_in_lock_step(zero3_run):
    """Rank 0's share takes 2 batched steps and rank 1's 3; under ZeRO-3 each step gathers the weights, so rank 0
    acts once more on a placeholder (without it the run hangs in that gather and the watchdog fails the test)."""
    ranks = zero3_run[1]
    check_merged_evaluation(ranks)
    assert ranks[0]["eval_acts"] == ranks[1]["eval_acts"] == 3


def test_zero3_saved_agent_has_full_weights(zero3_run):
    out, ranks, _ = zero3_run
    check_saved_agent(out, ranks)


def test_zero3_resumes_from_checkpoint_through_deepspeed_config(zero3_run):
    """A new run (`deepspeed=` config: accelerate must count both processes, or DeepSpeed stops on the batch size)
    loads checkpoint-2's partitioned weights and optimizer states, and trains a third update on both ranks."""
    _, ranks, resumed = zero3_run
    assert [r["num_processes"] for r in resumed] == [2, 2]
    assert [r["distributed_type"] for r in resumed] == ["DistributedType.DEEPSPEED"] * 2
    assert [r["resumed_from"] for r in resumed] == ["checkpoint-2"] * 2
    assert [r["params_resumed"] for r in resumed] == [ranks[0]["params_after"]] * 2
    assert [r["env_steps_resumed"] for r in resumed] == [32, 32]
    assert [r["global_step"] for r in resumed] == [3, 3]
    assert [r["env_steps"] for r in resumed] == [48, 48]
    assert resumed[0]["params_after"] == resumed[1]["params_after"] != resumed[0]["params_resumed"]


def test_zero2_trains_evaluates_and_saves(zero2_run):
    out, ranks = zero2_run
    check_deepspeed_training(ranks, stage=2)
    check_merged_evaluation(ranks)
    check_saved_agent(out, ranks)


# ---------------------------------------------------------------------------------------------------- units


def test_output_vocab_size_of_a_zero3_partitioned_head(tiny_vlm_path):
    """Under ZeRO-3 a process's weight is an empty shard; DeepSpeed records the full shape in ``ds_shape``."""
    from transformers import AutoModelForImageTextToText

    from vlm_env_ppo.constrained import output_vocab_size

    policy = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path("llava_next"))
    vocab = policy.get_output_embeddings().weight.shape[0]
    shard = torch.nn.Parameter(torch.empty(0))
    shard.ds_shape = torch.Size([vocab, policy.config.text_config.hidden_size])
    policy.get_output_embeddings().weight = shard
    assert output_vocab_size(policy) == vocab


def test_deepspeed_without_gpu_gets_gloo_and_skips_the_shm_op(monkeypatch):
    """What transformers' device setup sees when DeepSpeed is asked for (`deepspeed=`) in a launched process on a
    machine without GPUs: the accelerate-config branch (it passes ``ddp_backend``), gloo, and the shm op marked
    unavailable; the config and the environment are restored afterwards."""
    import deepspeed.ops

    from vlm_env_ppo import distributed

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, distributed.SHM_OP, True)
    args = types.SimpleNamespace(deepspeed={"zero_optimization": {"stage": 3}}, use_cpu=False, ddp_backend=None)
    seen = {}

    def setup():
        seen.update(deepspeed=args.deepspeed, backend=args.ddp_backend, env=os.environ.get("ACCELERATE_USE_DEEPSPEED"))
        return torch.device("cpu")

    distributed.setup_devices(args, setup)
    assert seen == {"deepspeed": None, "backend": "gloo", "env": "true"}
    assert args.deepspeed == {"zero_optimization": {"stage": 3}} and "ACCELERATE_USE_DEEPSPEED" not in os.environ
    assert deepspeed.ops.__compatible_ops__[distributed.SHM_OP] is False
    # With a GPU nothing changes.
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    args.ddp_backend = None
    distributed.setup_devices(args, setup)
    assert seen == {"deepspeed": {"zero_optimization": {"stage": 3}}, "backend": None, "env": None}


def test_lock_step_actor_keeps_a_process_without_episodes_in_step():
    """One process of two with no episode at all (fewer episodes than processes): it acts on the first observation
    of a fresh env (reset on the evaluation seed) for as long as the other process reports it is still playing."""
    from vlm_env_ppo.distributed import LockStepActor

    other_active = [True, True, True, False]  # the other process's flag at each agreement

    class TwoProcesses:
        device = torch.device("cpu")

        def gather(self, flag):
            return torch.cat([flag, torch.tensor([int(other_active.pop(0))])])

    seeds, acted = [], []

    class Env:
        def reset(self, seed):
            seeds.append(seed)
            return "first frame", {"seed": seed}

        def close(self):
            pass

    actor = LockStepActor(lambda obs, infos: acted.append((obs, infos)), TwoProcesses(), Env, seed=7)
    actor.finish()
    assert seeds == [7] and actor.idle_calls == 3 and not other_active
    assert acted == [(["first frame"], [{"seed": 7}])] * 3
