"""Time for the streaming runtime: the wall clock all sources and the consumer share
(:class:`Clock`), and each source's item times made usable (:class:`Timeline`)."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

log = logging.getLogger("karmma.runtime.sources")


class Clock:
    """The wall clock all sources and the consumer share: time 0 is :meth:`start`."""

    def __init__(self) -> None:
        self.t0: float | None = None

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = time.monotonic()

    def now(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def sleep_until(self, t: float, stop: threading.Event) -> None:
        wait = t - self.now()
        if wait > 0:
            stop.wait(wait)


MAX_STEP_S = 3600.0  # a jump forward larger than this is a clock step (a time sync), not a gap
BACK_TOLERANCE_S = 0.25  # a step back smaller than this is a container's rounding, not a restart


class Timeline:
    """A source's item times made usable: seconds from its first item, never going back, never
    jumping ahead by more than :data:`MAX_STEP_S`. A time that goes back (a logger restarted, two
    recordings concatenated) or leaps (a clock set after boot) is bridged: the items that follow
    continue one median step after the last; non-finite times are dropped. Each is logged once."""

    def __init__(self, name: str, origin: float | None = None) -> None:
        self.name, self.shift = name, 0.0
        self.first: float | None = origin
        self.last: float | None = None
        self.steps: list[float] = []
        self.warned = False

    def place(self, raw: float) -> float | None:
        raw = float(raw)
        if not np.isfinite(raw):
            return None
        if self.first is None or (self.last is None and raw - self.first > 60.0):
            self.first = raw  # (a container whose streams start a minute in: timed from its first item)
        t = (raw - self.first) + self.shift
        if not np.isfinite(t):
            return None
        if self.last is not None:
            step = t - self.last
            if -BACK_TOLERANCE_S <= step < 0:  # a container's rounding: kept in order
                t = self.last
            elif step < 0 or step > MAX_STEP_S:
                bridge = float(np.median(self.steps)) if self.steps else 0.0
                self.shift += self.last + bridge - t
                t = self.last + bridge
                if not self.warned:
                    way = "went back" if step < 0 else "leapt ahead"
                    log.warning("source %s: its time %s by %.3g s; the items that follow are placed right after "
                                "the previous ones (timestamps in ms, us or ns? give their unit)", self.name, way,
                                abs(step))  # fmt: skip
                    self.warned = True
            elif step > 0 and len(self.steps) < 64:
                self.steps.append(step)
        self.last = t
        return t
