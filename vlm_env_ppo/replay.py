"""Episode replays (self-contained HTML and an animated GIF) and the learning-curve picture, drawn with Pillow.

No plotting library and no network references: the HTML embeds its frames as data URIs, so it opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .evaluation import random_legal_action
from .tasks import to_pil_image


@dataclass
class StepRecord:
    frame: Image.Image
    prompt: str
    completion: str
    action_name: str | None  # the parsed action; None when the output was invalid
    played: str  # the action the env received (the fallback for invalid outputs)
    valid: bool
    reward: float


def prompt_text(messages: list[dict]) -> str:
    """The text of the last user message: the prompt a replay shows for the step (whatever hook wrote it)."""
    content = messages[-1].get("content") if messages else ""
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or () if isinstance(p, dict) and p.get("type") == "text")


def record_episodes(agent, make_env: Callable[[], gym.Env], num_episodes: int, seed: int, greedy: bool = True,
                    max_steps: int = 200) -> list[list[StepRecord]]:
    """Play episodes with a `VLMAgent` (episode ``k`` on seed ``seed + k``) and record every step."""
    env = make_env()
    task = agent.task
    episodes = []
    for k in range(num_episodes):
        obs, info = env.reset(seed=seed + k)
        rng = np.random.default_rng((seed, k))  # the fallback RNG of `evaluate_episodes`
        steps: list[StepRecord] = []
        for _ in range(max_steps):
            parsed, texts = agent.act_batch([obs], [info], greedy=greedy)
            p = parsed[0]
            index = p.action if p.valid else random_legal_action(task, info, env.action_space, rng)  # as in eval
            frame = to_pil_image(obs) or Image.new("RGB", (300, 60), "white")
            prompt = prompt_text(agent.build_messages(obs, info))
            played = task.action_name(index, info)
            action = task.to_env_action(index, info, env.action_space)
            obs, reward, terminated, truncated, info = env.step(action)
            steps.append(StepRecord(frame, prompt, texts[0], played if p.valid else None, played, p.valid,
                                    float(reward)))
            if terminated or truncated:
                break
        episodes.append(steps)
    env.close()
    return episodes


def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_html(episodes: Sequence[Sequence[StepRecord]], path: str, title: str = "vlm-env-ppo replay") -> None:
    """A single self-contained HTML file: per step the frame, the full model output, the parsed action, validity and
    reward. Every text is HTML-escaped (model output is untrusted)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>",
        "body{font-family:sans-serif;margin:2em;background:#fafafa}"
        "table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:6px;vertical-align:top}"
        "pre{white-space:pre-wrap;max-width:40em;margin:0}.ok{color:#176b1f}.bad{color:#b00020}",
        "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for k, steps in enumerate(episodes):
        total = sum(s.reward for s in steps)
        parts.append(f"<h2>Episode {k}: {len(steps)} steps, return {total:g}</h2>")
        parts.append("<table><tr><th>step</th><th>frame</th><th>model output</th><th>action</th><th>reward</th></tr>")
        for t, s in enumerate(steps):
            status = (f"<span class='ok'>{esc(s.action_name)}</span>" if s.valid
                      else f"<span class='bad'>invalid</span> (played {esc(s.played)})")
            parts.append(
                f"<tr><td>{t}</td><td><img src='{_data_uri(s.frame)}' width='{s.frame.width}' alt='frame {t}'></td>"
                f"<td><pre>{esc(s.completion)}</pre><details><summary>prompt</summary><pre>{esc(s.prompt)}</pre>"
                f"</details></td><td>{status}</td><td>{s.reward:g}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


def write_gif(episodes: Sequence[Sequence[StepRecord]], path: str, frame_ms: int = 700) -> None:
    """An animated GIF of all steps, each frame captioned with the action taken and the reward."""
    font = ImageFont.load_default(size=14)
    frames = []
    for k, steps in enumerate(episodes):
        for t, s in enumerate(steps):
            canvas = Image.new("RGB", (s.frame.width, s.frame.height + 24), "white")
            canvas.paste(s.frame, (0, 0))
            caption = f"ep {k} step {t}: {s.action_name if s.valid else 'invalid'} -> reward {s.reward:g}"
            ImageDraw.Draw(canvas).text((4, s.frame.height + 4), caption, fill="black", font=font)
            frames.append(canvas)
    if not frames:
        raise ValueError("No steps to write.")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)


def plot_learning_curve(log_history: Sequence[dict], path: str, size: tuple[int, int] = (640, 480)) -> bool:
    """Success rate and episode return over env steps, two panels, as a PNG. Returns False if nothing to plot."""
    points = [h for h in log_history if "env/total_steps" in h and "env/success_rate" in h]
    points = [h for h in points if np.isfinite(h["env/success_rate"])]
    if not points:
        return False
    x = [h["env/total_steps"] for h in points]
    series = [("success rate", [h["env/success_rate"] for h in points], (31, 119, 180)),
              ("episode return", [h["env/episode_return"] for h in points], (214, 39, 40))]
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    panel_h = (height - 40) // 2
    left, right = 60, width - 20
    x_lo, x_hi = min(x), max(x) if max(x) > min(x) else min(x) + 1
    for i, (name, ys, color) in enumerate(series):
        top = 20 + i * (panel_h + 10)
        bottom = top + panel_h - 20
        y_lo, y_hi = (0.0, 1.0) if name == "success rate" else (min(ys), max(ys))
        if y_hi - y_lo < 1e-9:
            y_lo, y_hi = y_lo - 1, y_hi + 1
        draw.rectangle([left, top, right, bottom], outline="black")
        for frac in (0.0, 0.5, 1.0):
            y = bottom - frac * (bottom - top)
            draw.line([left - 4, y, left, y], fill="black")
            draw.text((4, y - 6), f"{y_lo + frac * (y_hi - y_lo):.2f}", fill="black", font=font)
        coords = [(left + (xv - x_lo) / (x_hi - x_lo) * (right - left),
                   bottom - (yv - y_lo) / (y_hi - y_lo) * (bottom - top)) for xv, yv in zip(x, ys)]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=2)
        for cx, cy in coords:
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=color)
        draw.text((left + 6, top + 4), name, fill=color, font=font)
    draw.text((left, height - 16), f"env steps {x_lo:g} .. {x_hi:g}", fill="black", font=font)
    image.save(path)
    return True
