"""Argument types shared by the ``karmma`` commands: a count of at least 1, a list of seeds, seconds."""

from __future__ import annotations

import argparse

MAX_COUNT = 1_000_000  # repeats, batch sizes, tokens, top-k: more is a typo (it would run for days or not fit)
SEED_RANGE = (0, 2**32 - 1)  # what every seeded generator (numpy, torch, Python) takes


def _parse(text: str, cast: type, what: str):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    """argparse type: a whole number from 1 to :data:`MAX_COUNT`."""
    value = _parse(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{value} is more than {MAX_COUNT:,}; give a smaller number")
    return value


def seed_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated, distinct integer seeds (at least one)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("--seeds is empty: give at least one seed, e.g. 0 or 0,1,2")
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    outside = [s for s in out if not SEED_RANGE[0] <= s <= SEED_RANGE[1]]
    if outside:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: seed {outside[0]} is outside {SEED_RANGE[0]}.."
                                         f"{SEED_RANGE[1]}")  # fmt: skip
    repeated = sorted({s for s in out if out.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: seed {', '.join(map(str, repeated))} repeated; "
                                         "give each seed once (a repeat trains the same weights again)")  # fmt: skip
    return out


def seed(text: str) -> int:
    """argparse type: one seed, a whole number in :data:`SEED_RANGE`."""
    value = _parse(text, int, "a whole number")
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"seed {value} is outside {SEED_RANGE[0]}..{SEED_RANGE[1]}")
    return value


def burst_lengths(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated mean burst lengths in seconds, each in (0, 60]."""
    try:
        out = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated seconds, e.g. 0.25,0.5,1") from None
    bad = [x for x in out if not 0.0 < x <= 60.0]  # also NaN
    if bad or not out:
        raise argparse.ArgumentTypeError(f"{text!r}: each mean burst length must be in (0, 60] seconds")
    return out


def seconds(text: str) -> float:
    """argparse type: a duration in (0, 3600] seconds."""
    value = _parse(text, float, "a number of seconds")
    if not 0.0 < value <= 3600.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds in (0, 3600]")
    return value
