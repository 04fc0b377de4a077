"""Argument types shared by the ``karmma`` commands: a count of at least 1, a list of seeds."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def seed_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated, distinct integer seeds (at least one)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("--seeds is empty: give at least one seed, e.g. 0 or 0,1,2")
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    repeated = sorted({s for s in out if out.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: seed {', '.join(map(str, repeated))} repeated; "
                                         "give each seed once (a repeat trains the same weights again)")  # fmt: skip
    return out
