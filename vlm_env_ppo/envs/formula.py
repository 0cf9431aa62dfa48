"""A small, safe arithmetic evaluator for the points games' formulas (never `eval`).

Grammar (recursive descent, usual precedence, left-associative)::

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
