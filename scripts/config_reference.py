"""Write the README's config reference: every `VLMPPOConfig` field of our own, and the `TrainingArguments` fields
whose defaults or meaning we change, with its default and help (from `vlm_env_ppo/config.py`).

    python scripts/config_reference.py           # rewrite the table between the README's config-reference markers
    python scripts/config_reference.py --check   # exit 1 if the README's table is not what the config says (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def reference() -> str:
    from transformers import TrainingArguments

    from vlm_env_ppo.config import VLMPPOConfig

    inherited = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    rows = ["| field | default | |", "|---|---|---|"]
    for f in dataclasses.fields(VLMPPOConfig):
        if not f.init:
            continue
        base = inherited.get(f.name)
        if base is not None and base.default == f.default and base.metadata.get("help") == f.metadata.get("help"):
            continue  # a TrainingArguments field we leave as it is
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        help_text = " ".join(f.metadata.get("help", "").split()).replace("|", "\\|")
        marker = " (TrainingArguments)" if base is not None else ""
        rows.append(f"| `{f.name}`{marker} | `{default!r}` | {help_text} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README is out of date instead of writing")
    opts = parser.parse_args()
    text = README.read_text()
    if START not in text or END not in text:
        sys.exit(f"{README} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{reference()}\n{END}{tail}"
    if opts.check:
        if updated != text:
            print("README.md's config reference is out of date: run `python scripts/config_reference.py`.")
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
