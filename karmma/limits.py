"""Bounds on what karmma reads from a file a user hands it: every file is treated as hostile, so
no file can make karmma hold more than these bounds in memory, whatever it declares.

Each bound has a safe default and is raised (or lowered) with an environment variable, which the
error names: e.g. ``KARMMA_MAX_DECLARED_BYTES=16G karmma import-features ...``. Sizes take a
``K``/``M``/``G`` suffix (powers of 1024). The list, with the defaults, is in docs/reliability.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from karmma.errors import DataError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"2G"`` -> 2147483648; plain integers are taken as they are."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise DataError(f"{text!r} is not a size; write bytes, or a number with K, M or G (e.g. 16G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass(frozen=True)
class Bound:
    """One bound: ``value()`` reads its environment variable (or the default) at each call."""

    env: str
    default: int
    what: str
    size: bool = True  # a byte count (K/M/G suffixes, shown as MiB/GiB) or a plain number

    def value(self) -> int:
        text = os.environ.get(self.env)
        if not text:
            return self.default
        try:
            return parse_size(text) if self.size else int(float(text))
        except (DataError, ValueError):
            raise DataError(f"{self.env}={text!r} is not a valid bound; unset it or give e.g. {self.env}=16G") from None

    def show(self, n: float) -> str:
        return human(n) if self.size else f"{n:g}"

    def check(self, n: float, where: str) -> None:
        """Refuse ``n`` above the bound, naming ``where`` (the file and the item) and the variable."""
        limit = self.value()
        if n > limit:
            raise DataError(
                f"{where}: declares {self.show(n)}, above the bound of {self.show(limit)} on {self.what}; "
                f"if the file is genuine, raise the bound with the environment variable {self.env} "
                f"(e.g. {self.env}={'16G' if self.size else int(limit * 4)})"
            )


DECLARED_BYTES = Bound(
    "KARMMA_MAX_DECLARED_BYTES",
    2 << 30,
    "the bytes one array (a pickle's arrays together, one HDF5 dataset, one .npy or .npz member) may declare",
)
FRAME_BYTES = Bound("KARMMA_MAX_FRAME_BYTES", 64 << 20, "one frame image (a file or a tar member)")
ANNOTATION_BYTES = Bound("KARMMA_MAX_ANNOTATION_BYTES", 1 << 30, "one annotation file (CSV or JSON)")
AUDIO_FRAMES = Bound(
    "KARMMA_MAX_AUDIO_FRAMES",
    12_000,
    "the audio spectrogram frames `predict --clip` keeps of a clip (60 s of 5 ms log-mel frames; "
    "a longer clip's consecutive frames are averaged down to it)",
    size=False,
)
CLIP_FRAMES = Bound(
    "KARMMA_MAX_CLIP_FRAMES",
    2_000,
    "the video frames `predict --clip` decodes of a clip (spread over it at a stride)",
    size=False,
)
