"""Small, safe arithmetic evaluators for the points games' formulas (never `eval`), one per rule set.

- ``"exact"`` (`evaluate`, our rules): exact rational arithmetic over one token per number.
- ``"rl4vlm"`` (`evaluate_rl4vlm`): what RL4VLM's gym_cards computed with Python's ``eval`` on the tokens joined
  without separators, reproduced by a parser of Python's own expression grammar, with hard bounds.

Grammar of ``"exact"`` (recursive descent, usual precedence, left-associative)::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := ("+" | "-") factor | NUMBER | "(" expr ")"

Arithmetic is exact (`fractions.Fraction`), so ``8 / (3 - 8 / 3)`` is exactly 24. There is no exponent operator
(``**`` is a syntax error) and no other syntax. Unary ``+``/``-`` are accepted because RL4VLM evaluated formulas
with Python's ``eval``, which accepts them.

Anything that is not a valid formula — a syntax error, division by zero, an empty formula, text over the length
cap, nesting deeper than the depth cap, a number literal longer than `MAX_NUMBER_DIGITS` digits, a value of the
wrong type — gives `None`. `evaluate` never raises, and its work is bounded by the caps.

>>> evaluate("8 / (3 - 8 / 3)")
Fraction(24, 1)
>>> evaluate(["(", "10", "-", "4", ")", "*", "4"])
Fraction(24, 1)
>>> evaluate("1 / (2 - 2)") is None
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

MAX_FORMULA_LENGTH = 256  # characters of a string formula, or tokens of a token sequence
MAX_DEPTH = 32  # nested parentheses plus chained unary signs
MAX_NUMBER_DIGITS = 12
HARD_MAX_DEPTH = 200  # any max_depth is clamped to this, so the recursion stays far below Python's limit

OPERATORS = frozenset("+-*/()")
BLANK = " "  # what the points envs append for an invalid number (RL4VLM); the evaluator skips it


class _Invalid(Exception):
    """Internal: the formula is not valid. Never escapes `evaluate`."""


def tokenize(formula, max_length: int = MAX_FORMULA_LENGTH) -> list[str] | None:
    """Split a formula into tokens (numbers as digit strings, operators, parentheses); `None` if it cannot be.

    ``formula`` is a string (whitespace is skipped; adjacent digits form one number) or a list/tuple of tokens,
    where each token is an operator, a digit string, a non-negative integer, or blank (skipped). In a token
    sequence each token is one atom: ``["1", "0"]`` is two numbers (a syntax error later), not ten.
    """
    if isinstance(formula, str):
        if len(formula) > max_length:
            return None
        return _tokenize_text(formula)
    if isinstance(formula, (list, tuple)):
        if len(formula) > max_length:
            return None
        tokens = []
        for item in formula:
            token = _token_from_item(item)
            if token is None:
                return None
            if token:
                tokens.append(token)
        return tokens
    return None


def _tokenize_text(text: str) -> list[str] | None:
    tokens: list[str] = []
    digits = ""
    for char in text:
        if char.isascii() and char.isdigit():
            digits += char
            continue
        if digits:
            tokens.append(digits)
            digits = ""
        if char in OPERATORS:
            tokens.append(char)
        elif not char.isspace():
            return None
    if digits:
        tokens.append(digits)
    return tokens


def _token_from_item(item) -> str | None:
    """One token from a token-sequence item: the token, ``""`` for a blank to skip, `None` when invalid."""
    if isinstance(item, bool):
        return None
    if isinstance(item, numbers.Integral):
        value = int(item)
        return str(value) if value >= 0 else None
    if not isinstance(item, str):
        return None
    item = item.strip()
    if not item:
        return ""
    if item in OPERATORS or (item.isascii() and item.isdigit()):
        return item
    return None


def evaluate(formula, max_length: int = MAX_FORMULA_LENGTH, max_depth: int = MAX_DEPTH) -> Fraction | None:
    """The exact value of ``formula`` (a string or a token sequence, see `tokenize`), or `None` if it is invalid.

    Never raises. Invalid: a syntax error, division by zero, an empty formula, more than ``max_length``
    characters/tokens, nesting deeper than ``max_depth`` (at most `HARD_MAX_DEPTH`), or a number with more than
    `MAX_NUMBER_DIGITS` digits.
    """
    tokens = tokenize(formula, max_length=max_length)
    if not tokens:
        return None
    if any(token.isdigit() and len(token) > MAX_NUMBER_DIGITS for token in tokens):
        return None
    parser = _Parser(tokens, min(int(max_depth), HARD_MAX_DEPTH))
    try:
        value = parser.expr(0)
        if parser.pos != len(tokens):
            raise _Invalid(f"unexpected {tokens[parser.pos]!r}")
    except (_Invalid, ZeroDivisionError):
        return None
    return value


class _Parser:
    """Recursive descent over a token list; ``depth`` counts open parentheses and unary signs."""

    def __init__(self, tokens: Sequence[str], max_depth: int):
        self.tokens = tokens
        self.pos = 0
        self.max_depth = max_depth

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            right = self.term(depth)
            value = value + right if op == "+" else value - right
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            right = self.factor(depth)
            value = value * right if op == "*" else value / right  # Fraction / 0 raises ZeroDivisionError
        return value

    def factor(self, depth: int) -> Fraction:
        if depth > self.max_depth:
            raise _Invalid("nested too deeply")
        token = self._peek()
        if token is None:
            raise _Invalid("unexpected end of formula")
        self.pos += 1
        if token.isdigit():
            return Fraction(int(token))
        if token in ("+", "-"):
            value = self.factor(depth + 1)
            return value if token == "+" else -value
        if token == "(":
            value = self.expr(depth + 1)
            if self._peek() != ")":
                raise _Invalid("missing ')'")
            self.pos += 1
            return value
        raise _Invalid(f"unexpected {token!r}")


def formula_value_equals(formula, target) -> bool:
    """Whether ``formula`` is valid and its exact value equals ``target``."""
    value = evaluate(formula)
    return value is not None and value == target


# ---------------------------------------------------------------------------------------------------- rule sets
RULES = ("exact", "rl4vlm")
DEFAULT_RULES = "exact"


def check_rules(rules) -> str:
    """``rules`` if it names a rule set (`RULES`); a `ValueError` naming the allowed values otherwise."""
    if not isinstance(rules, str) or rules not in RULES:
        allowed = ", ".join(repr(name) for name in RULES)
        raise ValueError(f"`rules` must be one of {allowed}, got {rules!r}.")
    return rules


def evaluate_with_rules(formula, rules: str = DEFAULT_RULES, max_length: int = MAX_FORMULA_LENGTH):
    """The value of ``formula`` under ``rules`` (`evaluate` or `evaluate_rl4vlm`); `None` if it is invalid."""
    if check_rules(rules) == "rl4vlm":
        return evaluate_rl4vlm(formula, max_length=max_length)
    return evaluate(formula, max_length=max_length)


def formula_equals(formula, target, rules: str = DEFAULT_RULES, max_length: int = MAX_FORMULA_LENGTH) -> bool:
    """Whether ``formula`` is valid and equals ``target`` under ``rules``: exactly for ``"exact"``; with Python's
    ``==`` on the computed int/float/complex for ``"rl4vlm"`` (so 23.999999999999996 is not 24, as in RL4VLM)."""
    value = evaluate_with_rules(formula, rules, max_length)
    return value is not None and value == target


def join_formula(tokens: Sequence, rules: str = DEFAULT_RULES) -> str:
    """The formula as text: tokens joined by spaces (``"exact"``: one token per number, so ``"2 4"``) or without
    separators (``"rl4vlm"``: RL4VLM's prompt showed ``"".join(Formula)``, so its model read ``"24"``; blanks stay
    as spaces, as they did there)."""
    separator = "" if check_rules(rules) == "rl4vlm" else " "
    return separator.join(str(token) for token in tokens)


# ---------------------------------------------------------------------------------------------------- "rl4vlm"
# RL4VLM ran Python's built-in evaluator on ``"".join(formula)`` and compared the result with ``==`` to the target. Joining without
# separators gives Python's lexing: adjacent digits form one number ("2", "4" -> 24), "*" "*" is a power and "/" "/"
# floor division; "/" is float division. The parser below follows Python's grammar for these tokens:
#
#     expr   := term (("+" | "-") term)*
#     term   := factor (("*" | "/" | "//") factor)*
#     factor := ("+" | "-") factor | power
#     power  := atom ["**" factor]                      (right-associative: 2**3**2 is 2**9)
#     atom   := NUMBER | "(" expr ")"
#
# and computes with Python's own int/float/complex operators, so rounding, floor division and overflow errors are
# Python's. Anything Python rejected or that raised (a syntax error, ZeroDivisionError, OverflowError, a call such
# as "(2)(3)", the tuple "()") never equalled the target there and is `None` here: the reward is −1 either way.
#
# The bound: an integer power whose result would exceed 2**MAX_POWER_BITS in magnitude is `None` instead of being
# computed ("9**9**9" made RL4VLM's env hang). No formula the original scores +10 is lost, for any deal of at most
# four cards (numbers 1..13) and any target t with 13 * (t + 1) < 2**MAX_POWER_BITS:
# - a power uses at least two cards; with exactly two, base and exponent are single numbers <= 13, so
#   |result| <= 13**13 < 2**49: never over the bound;
# - an over-bound power X that uses all the cards leaves only signs to apply: the value is ±X, not t;
# - one that uses three cards meets the last number e (<= 13) in one operation (with signs): X ± e, X * e, X / e
#   and X // e are at least 2**MAX_POWER_BITS / 13 - 1 in magnitude (or overflow), e / X is below 1 in magnitude,
#   e // X is 0 or -1, X ** ±e is huge or below 1, e ** X is ±1 for e = 1 and otherwise huge (or a float below 1
#   for e ** -X): never t.
# Other operations stay cheap: ints grow only through powers, each at most MAX_POWER_BITS bits, so a formula of
# MAX_FORMULA_LENGTH tokens holds at most a few hundred thousand bits; float and complex operations are O(1).
MAX_POWER_BITS = 4096


def evaluate_rl4vlm(formula, max_length: int = MAX_FORMULA_LENGTH, max_depth: int = MAX_DEPTH):
    """The value RL4VLM's ``eval`` gave ``formula`` (an `int`, `float` or `complex`), or `None` where it raised or
    gave no number — computed without `eval`, with the bounds above. Never raises.

    ``formula`` is a string, or a token sequence joined without separators (as RL4VLM did): ``["2", "4"]`` is 24,
    ``["2", " ", "4"]`` (a blank between) a syntax error, ``["7", "3", "/", "/", "3"]`` is ``73 // 3``. Invalid
    as in `evaluate`, plus: a number with a leading zero (Python rejects ``07``), whitespace other than spaces and
    tabs, and an integer power over `MAX_POWER_BITS` bits.

    >>> evaluate_rl4vlm(["2", "4", "*", "1"])
    24
    >>> evaluate_rl4vlm("8/(3-8/3)")  # floats: not 24
    23.99999999999999
    >>> evaluate_rl4vlm("9**9**9") is None
    True
    """
    text = _rl4vlm_text(formula, max_length)
    if text is None:
        return None
    tokens = _python_tokens(text)
    if not tokens:
        return None
    parser = _PythonParser(tokens, min(int(max_depth), HARD_MAX_DEPTH))
    try:
        value = parser.expr(0)
        if parser.pos != len(tokens):
            raise _Invalid(f"unexpected {tokens[parser.pos]!r}")
    except _Invalid:
        return None
    return value


def _rl4vlm_text(formula, max_length: int) -> str | None:
    """``formula`` as the text RL4VLM's ``eval`` saw (a sequence joined without separators); `None` if invalid."""
    if isinstance(formula, str):
        return formula if len(formula) <= max_length else None
    if not isinstance(formula, (list, tuple)) or len(formula) > max_length:
        return None
    parts = []
    for item in formula:
        token = _token_from_item(item)
        if token is None:
            return None
        parts.append(token or BLANK)  # a blank stays a space: it separates Python tokens ("2 4" is not 24)
    return "".join(parts)


def _python_tokens(text: str) -> list[str] | None:
    """Python's tokens of ``text`` for our alphabet (longest match: ``***`` is ``**`` then ``*``); `None` for
    anything else. Only spaces and tabs separate: ``eval`` strips them at the start and skips them between tokens."""
    tokens: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t":
            i += 1
        elif char.isascii() and char.isdigit():
            start = i
            while i < len(text) and text[i].isascii() and text[i].isdigit():
                i += 1
            number = text[start:i]
            if len(number) > MAX_NUMBER_DIGITS or (number[0] == "0" and number.strip("0")):
                return None  # over the digit cap, or Python 3's "leading zeros are not permitted"
            tokens.append(number)
        elif char in "*/" and text[i + 1 : i + 2] == char:
            tokens.append(char * 2)
            i += 2
        elif char in OPERATORS:
            tokens.append(char)
            i += 1
        else:
            return None
    return tokens


def _python_binary(op: str, left, right):
    """``left op right`` with Python's operators; an integer power over the bound, or any error, is `_Invalid`."""
    try:
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if op == "/":
            return left / right
        if op == "//":
            return left // right
        if _power_over_bound(left, right):
            raise _Invalid("power over the bound")
        return left**right
    except (ArithmeticError, TypeError, ValueError) as err:  # what made RL4VLM's eval raise: reward −1 there
        raise _Invalid(str(err)) from err


def _power_over_bound(base, exponent) -> bool:
    """Whether ``base ** exponent`` is an integer power over `MAX_POWER_BITS` bits (the only way to a huge result:
    a negative exponent gives a float, float and complex powers are O(1), and |base| <= 1 stays small)."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0 or abs(base) <= 1:
        return False
    return exponent > MAX_POWER_BITS or exponent * math.log2(abs(base)) > MAX_POWER_BITS


class _PythonParser(_Parser):
    """Recursive descent over Python's tokens; ``depth`` counts parentheses, unary signs and exponents. Shares the
    token cursor of `_Parser` and replaces its grammar."""

    def expr(self, depth: int):
        value = self.term(depth)
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            value = _python_binary(op, value, self.term(depth))
        return value

    def term(self, depth: int):
        value = self.factor(depth)
        while self._peek() in ("*", "/", "//"):
            op = self.tokens[self.pos]
            self.pos += 1
            value = _python_binary(op, value, self.factor(depth))
        return value

    def factor(self, depth: int):
        if depth > self.max_depth:
            raise _Invalid("nested too deeply")
        token = self._peek()
        if token in ("+", "-"):
            self.pos += 1
            value = self.factor(depth + 1)
            return -value if token == "-" else value  # never raises for an int, float or complex
        base = self.atom(depth)
        if self._peek() != "**":
            return base
        self.pos += 1
        return _python_binary("**", base, self.factor(depth + 1))  # the exponent is a factor: 2**-1, 2**3**2

    def atom(self, depth: int):
        token = self._peek()
        if token is None:
            raise _Invalid("unexpected end of formula")
        self.pos += 1
        if token.isdigit():
            return int(token)
        if token == "(":
            value = self.expr(depth + 1)  # "()" fails here: RL4VLM's empty tuple never equalled a number
            if self._peek() != ")":
                raise _Invalid("missing ')'")
            self.pos += 1
            return value
        raise _Invalid(f"unexpected {token!r}")
