"""Checked command-line values: a bad one is a usage error naming the flag (exit 2),
never a traceback or a request the master must refuse."""

import argparse
import math
from collections.abc import Callable
from pathlib import Path


def seconds(at_most: float) -> Callable[[str], float]:
    """A duration: a finite number of seconds, more than 0 and at most ``at_most``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or not 0 < value <= at_most:
            raise argparse.ArgumentTypeError(
                f"must be more than 0 and at most {at_most:g} seconds, got {text!r}"
            )
        return value

    return parse


def count(at_least: int, at_most: int) -> Callable[[str], int]:
    """A whole number within ``[at_least, at_most]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not at_least <= value <= at_most:
            raise argparse.ArgumentTypeError(f"must be from {at_least} to {at_most}, got {value}")
        return value

    return parse


def directory(text: str) -> Path:
    """A path: not empty (which would silently mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if "\0" in text:
        raise argparse.ArgumentTypeError("must not contain a NUL character")
    return Path(text)
