"""Progress for long work: a tqdm bar on a terminal, a few log lines anywhere else.

When stderr is not a terminal (CI, ``> log``), a bar would write a carriage-return update per
step; :func:`progress_bar` then logs one line per tenth of the work instead (and the training
loop logs one line per epoch), so a log grows by a bounded number of lines.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("karmma.progress")


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _LogProgress:
    """tqdm's small interface, logging at each further 10% of ``total``."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.total, self.n, self.desc, self.enabled = max(int(total), 1), int(initial), desc, enabled
        self._next = (self.n * 10 // self.total + 1) * self.total / 10

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.enabled and self.n >= self._next:
            log.info("%s: %d/%d (%.0f%%)", self.desc, self.n, self.total, 100.0 * self.n / self.total)
            self._next = (self.n * 10 // self.total + 1) * self.total / 10

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0, unit: str = "it"):
    """A tqdm bar when ``enabled`` and stderr is a terminal; otherwise a logger of 10% steps."""
    if enabled and stderr_is_terminal():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    return _LogProgress(total, initial, desc, enabled)
