"""argparse `type=` functions: every numeric flag is checked when the command line is parsed.

A bad value stops the command before any work, with argparse's usage line, exit status 2 and a
message naming the flag ("argument --batch: must be a positive integer, got '0'"), never a
traceback or an error from deep inside numpy. Use them for every new flag:

    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--max-minutes", type=positive_float)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _checked(parse: Callable[[str], float], accept: Callable[[float], bool], what: str, doc: str):
    """An argparse type: parse the text, then refuse a value outside the range `what` names."""

    def check(text: str):
        value = parse(text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    check.__doc__ = doc
    return check


positive_int = _checked(_integer, lambda v: v >= 1, "a positive integer", "An integer >= 1.")
non_negative_int = _checked(_integer, lambda v: v >= 0, "a non-negative integer", "An integer >= 0.")
positive_float = _checked(_finite, lambda v: v > 0, "a positive number", "A finite number > 0.")
non_negative_float = _checked(_finite, lambda v: v >= 0, "a non-negative number", "A finite number >= 0.")
unit_interval = _checked(_finite, lambda v: 0 < v <= 1, "a number in (0, 1]", "A finite number in (0, 1].")
finite_float = _checked(_finite, lambda v: True, "a finite number", "Any finite number.")


def non_empty(text: str) -> str:
    """A string that is not empty or blank (a name, a preset, a language code)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def one_of(choices: list[str] | tuple[str, ...]) -> Callable[[str], str]:
    """Like choices=, for names only known at run time, with the same message for an empty value."""

    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got {text!r}")
        return text

    check.__name__ = "name"
    return check


__all__ = ["non_empty", "non_negative_float", "non_negative_int", "one_of", "positive_float", "positive_int"]
