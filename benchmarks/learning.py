"""The learning yardstick: how fast PPO learns each probe task, and whether it keeps what it learned.

```bash
python benchmarks/learning.py --jobs 2                 # every probe, seeds 0-2 (~1 h on a quiet 2-core CPU)
python benchmarks/learning.py --probes ColorChoice --seeds 0 1 2 --set advantage_std_floor=0   # an A/B arm
python benchmarks/learning.py --quick                  # the CI smoke size: one seed, a few updates per probe
python benchmarks/learning.py --probes ColorChoice Memory --updates 60 --jobs 2 \
    --arms "unconstrained:" "constrained:constrained_decoding=true,warm_start_steps=0" \
    --out benchmarks/constrained_learning.json --plot docs/constrained_learning_curves.png   # both arms, one run
python benchmarks/learning.py --estimators gae grpo gigpo rloo --group-size 4 --updates 15 --jobs 2 \
    --set constrained_decoding=true warm_start_steps=0 \
    --out benchmarks/estimators_learning.json --plot docs/estimators_learning_curves.png   # the four estimators
```

For each probe (ColorChoice and the multi-step probes of `vlm_env_ppo.envs.multistep_probes`, with the settings of
`vlm_env_ppo.probes.PROBE_SETTINGS` that the CI learning tests use) and seed, a tiny LLaVA-NeXT is built offline
(seeded), taught the answer format (random actions, so it stays at chance), and trained with PPO for the probe's
``benchmark_updates`` with one log per update. Reported per probe, over the seeds (median and range):

- ``updates_to_90`` / ``env_steps_to_90``: the first update at which the moving average of the training success
  rate (window `WINDOW` updates) reaches 0.9 (``None``: never);
- ``budget_over_90``: the budget divided by ``updates_to_90`` (the run continues at least 5x past convergence when
  this is >= 5);
- ``worst_after_90``: the lowest moving-average success after it first reached 0.9 (does it hold?);
- ``final_greedy_success`` / ``final_invalid_rate``: greedy evaluation on ``--eval-episodes`` fresh episodes.

Writes a table, `benchmarks/learning_results.json` and `docs/learning_curves.png` (moving-average success per
update, one panel per probe, one line per seed). ``--set key=value`` overrides any `VLMPPOConfig` field on every run
(A/B comparisons of a change to the loss, the log-probs or generation: run both arms, same seeds); ``--arms`` runs
several such arms in one run, ``name:key=value,key=value`` each, reported as ``probe (name)``. ``warm_start_steps``
there replaces the probe's answer-format warm start (0: none). ``--estimators`` adds one arm per advantage estimator
(``advantage_estimator=name``, and ``group_size=--group-size`` for the critic-free ones). Runs go seed-major (every
probe and arm on the first seed, then the next seed), and the JSON is rewritten after every finished run, so a run
cut short still leaves every arm's first seeds on disk (``"complete": false`` until the end).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from vlm_env_ppo.probes import TARGET, WINDOW, convergence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QUICK_UPDATES = 2
# Short names of the probes (`vlm_env_ppo.probes.PROBE_SETTINGS` holds their settings).
PROBES = {
    "ColorChoice": "vlm_env_ppo/ColorChoice-v0",
    "DelayedCredit": "vlm_env_ppo/DelayedCredit-v0",
    "Trap": "vlm_env_ppo/Trap-v0",
    "Memory": "vlm_env_ppo/Memory-v0",
    "GridNav": "vlm_env_ppo/GridNav-v0",
    "SokobanProbe": "vlm_env_ppo/SokobanProbe-v0",
}


def run_one(probe: str, seed: int, overrides: dict, eval_episodes: int, quick: bool, workdir: str,
            updates: int | None = None) -> dict:
    """Train one probe on one seed; returns the per-update curve and the final greedy evaluation."""
    from vlm_env_ppo.models.tiny import build_tiny_vlm
    from vlm_env_ppo.probes import PROBE_SETTINGS, probe_trainer, training_success

    start = time.time()
    env_id = PROBES[probe]
    output_dir = os.path.join(workdir, f"{probe}-{seed}")
    model = build_tiny_vlm("llava_next", os.path.join(output_dir, "tiny-base-model"), seed=seed)
    updates = QUICK_UPDATES if quick else updates or PROBE_SETTINGS[env_id]["benchmark_updates"]
    trainer = probe_trainer(
        model, env_id, output_dir, num_updates=updates, seed=seed, logging_steps=1, disable_tqdm=True, **overrides
    )  # `warm_start_steps` in `overrides` replaces the probe's
    trainer.train()
    success, invalid = training_success(trainer)
    result = trainer.evaluate(num_episodes=eval_episodes, seed=10_000, greedy=True)
    steps_per_update = trainer.args.num_envs * trainer.args.num_steps
    trainer.envs.close()
    out = {
        "seed": seed,
        "updates": len(success),
        "success": success,
        "invalid": invalid,
        **convergence(success),
        # critic-free estimators, per update: share of steps in complete group rounds; GiGPO: in step groups > 1
        **{key.split("/")[1]: [h.get(key) for h in trainer.state.log_history if "env/success_rate" in h]
           for key in ("advantages/grouped_fraction", "advantages/step_group_fraction")
           if overrides.get("advantage_estimator", "gae") != "gae"},
        "final_greedy_success": result["eval/success_rate"],
        "final_invalid_rate": result["eval/invalid_action_rate"],
        "wall_s": round(time.time() - start, 1),
    }
    out["env_steps_to_90"] = None if out["updates_to_90"] is None else out["updates_to_90"] * steps_per_update
    return out


def summarize(runs: list[dict]) -> dict:
    """Median and range over seeds of each reported number (``None``: some seed never reached 90%)."""

    def spread(key):
        values = [r[key] for r in runs]
        if any(v is None for v in values):
            return {"median": None, "min": None, "max": None, "missing": sum(v is None for v in values)}
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    keys = ("updates_to_90", "env_steps_to_90", "budget_over_90", "worst_after_90", "final_greedy_success",
            "final_invalid_rate")
    summary = {key: spread(key) for key in keys}
    summary["holds"] = all(r["worst_after_90"] is not None and r["worst_after_90"] >= 0.8 for r in runs)
    summary["ran_5x_past_90"] = all(r["budget_over_90"] is not None and r["budget_over_90"] >= 5 for r in runs)
    return summary


def fmt(spread: dict, digits: int = 2) -> str:
    if spread["median"] is None:
        return f"never ({spread['missing']})"
    m, lo, hi = spread["median"], spread["min"], spread["max"]
    number = (lambda v: f"{v:.{digits}f}") if isinstance(m, float) and not float(m).is_integer() else str
    return f"{number(m)} [{number(lo)}-{number(hi)}]" if lo != hi else number(m)


def table(summaries: dict) -> str:
    width = max([14, *(len(p) for p in summaries)])
    head = (f"{'probe':<{width}} {'updates to 90%':>16} {'env steps to 90%':>18} {'budget/90%':>12} "
            f"{'worst after 90%':>16} {'greedy success':>15} {'invalid':>8}  holds")
    rows = [head, "-" * len(head)]
    for probe, s in summaries.items():
        rows.append(
            f"{probe:<{width}} {fmt(s['updates_to_90']):>16} {fmt(s['env_steps_to_90']):>18} "
            f"{fmt(s['budget_over_90'], 1):>12} {fmt(s['worst_after_90']):>16} "
            f"{fmt(s['final_greedy_success']):>15} {fmt(s['final_invalid_rate']):>8}  "
            f"{'yes' if s['holds'] else 'NO'}"
        )
    return "\n".join(rows)


def plot(results: dict, path: str, panel: tuple[int, int] = (360, 200)) -> None:
    """Moving-average training success per update: one panel per probe, one line per seed."""
    from PIL import Image, ImageDraw, ImageFont

    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    probes = list(results)
    cols = min(3, len(probes))
    rows = -(-len(probes) // cols)
    w, h = panel
    image = Image.new("RGB", (cols * w, rows * h), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=11)
    for n, probe in enumerate(probes):
        x0, y0 = (n % cols) * w, (n // cols) * h
        left, right, top, bottom = x0 + 34, x0 + w - 10, y0 + 20, y0 + h - 24
        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text((left, y0 + 4), probe, fill="black", font=font)
        for frac in (0.0, 0.5, 0.9, 1.0):
            y = bottom - frac * (bottom - top)
            draw.line([left - 3, y, left, y], fill="black")
            draw.text((x0 + 4, y - 6), f"{frac:.1f}", fill="black", font=font)
        y90 = bottom - TARGET * (bottom - top)
        draw.line([left, y90, right, y90], fill=(200, 200, 200))
        runs = results[probe]
        longest = max(len(r["moving_average"]) for r in runs)
        for k, run in enumerate(runs):
            pts = [(left + i / max(1, longest - 1) * (right - left), bottom - v * (bottom - top))
                   for i, v in enumerate(run["moving_average"]) if np.isfinite(v)]
            if len(pts) > 1:
                draw.line(pts, fill=colors[k % len(colors)], width=2)
        draw.text((left, bottom + 6), f"updates 1..{longest} (seeds: one colour each)", fill="black", font=font)
    image.save(path)


def quiet_run(args: tuple) -> dict:
    """`run_one` with trainer logs kept off the terminal, and one line printed when it is done."""
    import torch

    from run_all import quiet  # this folder is on sys.path when the script runs (and in its spawned workers)

    probe, seed, overrides, eval_episodes, quick, workdir, threads, updates = args
    torch.set_num_threads(threads)
    with quiet(io.StringIO()):
        run = run_one(probe, seed, overrides, eval_episodes, quick, workdir, updates)
    print(f"{probe} seed {seed}: updates to 90%: {run['updates_to_90']}, worst after: {run['worst_after_90']}, greedy "
          f"{run['final_greedy_success']:.3f} ({run['wall_s']:.0f} s)", flush=True)
    return run


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` strings → a dict, values parsed as JSON where they are JSON (numbers, booleans, null)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --set takes key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", nargs="*", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="VLMPPOConfig overrides")
    parser.add_argument("--quick", action="store_true", help="one seed, a few updates per probe (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    parser.add_argument("--updates", type=int, default=None,
                        help="PPO updates per run instead of each probe's benchmark budget (a shorter A/B arm)")
    parser.add_argument("--arms", nargs="*", default=None, metavar="NAME:KEY=VALUE,...",
                        help="several override sets, each run on every probe and seed (e.g. with and without a feature)")
    parser.add_argument("--estimators", nargs="*", default=None, choices=["gae", "grpo", "gigpo", "rloo"],
                        help="one arm per advantage estimator (with --arms: each arm crossed with each estimator)")
    parser.add_argument("--group-size", type=int, default=4, help="group_size of the critic-free estimators' arms")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (one core each)")
    parser.add_argument("--out", default=os.path.join(HERE, "learning_results.json"))
    parser.add_argument("--plot", default=os.path.join(ROOT, "docs", "learning_curves.png"))
    cli = parser.parse_args(argv)
    overrides = parse_overrides(cli.set)
    if cli.quick:
        cli.seeds, cli.eval_episodes = cli.seeds[:1], min(cli.eval_episodes, 8)
    torch.set_num_threads(cli.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start, load_before = time.time(), os.getloadavg()
    arms = {"": overrides}
    if cli.arms:
        arms = {}
        for arm in cli.arms:
            name, _, pairs = arm.partition(":")
            arms[name] = {**overrides, **parse_overrides([p for p in pairs.split(",") if p])}
    if cli.estimators:
        arms = {
            f"{name}{', ' if name else ''}{estimator}": {
                **arm, "advantage_estimator": estimator, **({"group_size": cli.group_size} if estimator != "gae" else {})
            }
            for name, arm in arms.items() for estimator in cli.estimators
        }
    named = bool(cli.arms or cli.estimators)
    jobs = [(probe if not named else f"{probe} ({name})", probe, seed, arm)
            for seed in cli.seeds for probe in cli.probes for name, arm in arms.items()]
    with tempfile.TemporaryDirectory(prefix="vlm-env-ppo-learning-") as workdir:
        args = [(probe, seed, arm, cli.eval_episodes, cli.quick, os.path.join(workdir, label.replace(" ", "_")),
                 cli.threads, cli.updates) for label, probe, seed, arm in jobs]
        runs: list[dict | None] = [None] * len(jobs)

        def finished(k: int, run: dict) -> None:
            runs[k] = run
            write_report(cli, arms if named else None, overrides, jobs, runs, start, load_before, complete=False)

        if cli.jobs > 1:  # one process per run: the runs are independent and single-threaded
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(cli.jobs, mp_context=context) as pool:
                futures = {pool.submit(quiet_run, a): k for k, a in enumerate(args)}
                for future in concurrent.futures.as_completed(futures):
                    finished(futures[future], future.result())
        else:
            for k, a in enumerate(args):
                finished(k, quiet_run(a))
    report = write_report(cli, arms if named else None, overrides, jobs, runs, start, load_before, complete=True)
    results, summaries = report["runs"], report["summary"]
    if cli.plot:
        plot(results, cli.plot)
    print()
    print(table(summaries))
    print(f"\nwall time {report['wall_time_s']:.0f} s; wrote {cli.out}" + (f" and {cli.plot}" if cli.plot else ""))
    return report


def write_report(cli, arms, overrides, jobs, runs, start, load_before, complete: bool) -> dict:
    """The JSON report of the runs finished so far (in job order, seed-major), written to ``cli.out``."""
    import torch
    import transformers

    from vlm_env_ppo.probes import PROBE_SETTINGS

    results: dict[str, list[dict]] = {}
    for (label, *_), run in zip(jobs, runs):
        if run is not None:
            results.setdefault(label, []).append(run)
    summaries = {probe: summarize(runs) for probe, runs in results.items()}
    report = {
        "summary": summaries,
        "settings": {
            "probes": {p: {"env_id": PROBES[p], **PROBE_SETTINGS[PROBES[p]]} for p in cli.probes},
            "overrides": overrides,
            "arms": arms,
            "seeds": cli.seeds,
            "window": WINDOW,
            "target": TARGET,
            "eval_episodes": cli.eval_episodes,
            "quick": cli.quick,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": cli.threads,
        },
        "wall_time_s": round(time.time() - start, 1),
        "complete": complete,
        "runs": results,
    }
    with open(cli.out + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(cli.out + ".tmp", cli.out)
    return report


if __name__ == "__main__":
    main()
