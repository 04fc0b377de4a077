"""Sensor sources for the streaming runtime: each reads on its own thread into a time-stamped ring.

* :class:`VideoSource`: anything PyAV opens: a file, an RTSP/HTTP URL, a V4L2 camera
  (``fmt="v4l2"``), an lavfi test pattern (``fmt="lavfi"``); frames resized to the model's frame size.
* :class:`AudioSource`: an audio track or a microphone (``fmt="alsa"`` / ``"pulse"``), resampled
  to mono at the model's audio rate.
* :class:`SignalSource`: ``t,v1,...,vC`` lines (seconds, then the channels) from a CSV file or
  stdin (``"-"``): an IMU, a skeleton tracker.

* :class:`PushSource`: items the application hands in (a ROS 2 callback, a robot SDK).

Time: each source counts from its own first timestamp (seconds). With ``realtime`` the first item
is placed on a clock shared by all sources at its arrival and each later one at its own time
after it (a file replays at its own pace; a live device is paced by itself); without, items go
as fast as the consumer takes them: a ring that spans more than its bound blocks the reader, so
nothing is dropped and memory stays bounded. ``faults`` script failures for tests and drills:
``(start, stop, kind)`` with kind ``pause`` (nothing delivered), ``black`` (frames / samples
zeroed) or ``end`` (the source stops).
"""

from __future__ import annotations

import collections
import io
import logging
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from karmma.errors import DataError
from karmma.runtime.clock import Clock, Timeline

log = logging.getLogger(__name__)

LIVE_FORMATS = ("v4l2", "video4linux2", "alsa", "pulse", "avfoundation", "dshow", "x11grab", "lavfi", "push")
MAX_LINE = 1 << 16  # a signal line longer than this is refused (no unbounded read)
Fault = tuple[float, float, str]


def is_live(src: str, fmt: str | None) -> bool:
    """A device, a URL or stdin: it paces itself, and may stall forever (never replayed fast)."""
    return bool(fmt and fmt in LIVE_FORMATS) or "://" in src or src == "-" or src.startswith("/dev/")


class Ring:
    """Time-stamped items, oldest first, bounded to ``span`` seconds and ``max_items``. ``put``
    blocks while full when ``block`` (a replay), else drops the oldest (a live source outrunning
    the consumer). ``horizon``: the latest time put; ``done``: the source ended (``error``: why, if
    it failed)."""

    def __init__(self, cond: threading.Condition, span: float, max_items: int, block: bool) -> None:
        self.cond, self.span, self.max_items, self.block = cond, span, max_items, block
        self.items: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self.horizon = -np.inf
        self.done = False
        self.error: str | None = None
        self.dropped = 0

    def _full(self) -> bool:
        return len(self.items) >= self.max_items or (
            len(self.items) > 1 and self.items[-1][0] - self.items[0][0] > self.span
        )

    def put(self, t: float, x: np.ndarray, stop: threading.Event) -> None:
        with self.cond:
            while self.block and self._full() and not stop.is_set():
                self.cond.wait(0.1)
            while self._full():
                self.items.popleft()
                self.dropped += 1
            self.items.append((t, x))
            self.horizon = max(self.horizon, t)
            self.cond.notify_all()

    def finish(self, error: str | None = None) -> None:
        with self.cond:
            self.done, self.error = True, error
            self.cond.notify_all()

    def full(self) -> bool:
        with self.cond:
            return self._full()

    def between(self, t0: float, t1: float) -> list[tuple[float, np.ndarray]]:
        with self.cond:
            return [(t, x) for t, x in self.items if t0 <= t < t1]

    def drop_before(self, t: float) -> None:
        with self.cond:
            while self.items and self.items[0][0] < t:
                self.items.popleft()
            self.cond.notify_all()


class Source(threading.Thread):
    """A reader thread feeding :attr:`ring` (made by the streamer, :meth:`attach`)."""

    kind = "signal"  # "video", "audio" or "signal"
    name = "source"
    zero_based = False  # items are timed from the container's start (shared by its streams), not the first item

    def __init__(self, src: str, fmt: str | None = None, options: dict | None = None,
                 faults: Sequence[Fault] = ()) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.src, self.fmt, self.options = str(src), fmt, dict(options or {})
        self.faults = [(float(a), float(b), str(k)) for a, b, k in faults]
        self.live = is_live(self.src, fmt)
        self.ring: Ring | None = None
        self.clock: Clock | None = None
        self.realtime = True
        self.stop = threading.Event()
        self.rate: float | None = None  # items per second, when the source declares it

    def attach(self, ring: Ring, clock: Clock, realtime: bool) -> None:
        self.ring, self.clock, self.realtime = ring, clock, realtime

    def run(self) -> None:
        assert self.ring is not None and self.clock is not None
        error, offset, clock = None, None, Timeline(self.name, 0.0 if self.zero_based else None)
        try:
            for raw_t, x in self.items():
                if self.stop.is_set():
                    break
                t = clock.place(raw_t)  # monotonic seconds from the first item, clock steps bridged
                if t is None:
                    continue
                fault = next((k for a, b, k in self.faults if a <= t < b or (k == "end" and t >= a)), None)
                if fault == "end":
                    break
                if fault == "pause":
                    continue
                if fault == "black":
                    x = np.zeros_like(x)
                if self.realtime:  # on the shared clock: a live source from its first arrival, a file from 0
                    offset = (self.clock.now() - t if self.live else 0.0) if offset is None else offset
                    t += offset
                    self.clock.sleep_until(t, self.stop)
                self.ring.put(t, x, self.stop)
        except DataError as e:
            error = str(e)
        except Exception as e:  # a device unplugged, a network source gone: the stream goes on without it
            error = f"{self.src}: {type(e).__name__}: {e}"
        if error:
            log.warning("source %s stopped: %s", self.name, error)
        self.ring.finish(error)

    def items(self) -> Iterator[tuple[float, np.ndarray]]:
        raise NotImplementedError


def _open(src: str, fmt: str | None, options: dict, what: str):
    import av

    if not is_live(src, fmt) and not Path(src).is_file():
        raise DataError(f"{what} source {src} does not exist (a file, an rtsp:// or http:// URL, or a device "
                        "with its format, e.g. --video /dev/video0 --video-format v4l2)")  # fmt: skip
    try:
        return av.open(src, format=fmt, options=options, timeout=10.0)
    except Exception as e:  # av.FFmpegError, OSError
        raise DataError(f"{what} source {src}: cannot open it ({type(e).__name__}: {e})") from e


def container_start(c) -> float:
    """The container's start time in seconds (its streams share it: audio and video stay in sync)."""
    return float(c.start_time) / 1e6 if c.start_time not in (None, 0) else 0.0


class VideoSource(Source):
    """Frames (H, W, 3) uint8 RGB at ``size`` (H, W), timed from the container's start."""

    kind = name = "video"
    zero_based = True

    def __init__(self, src: str, fmt: str | None = None, options: dict | None = None,
                 faults: Sequence[Fault] = (), size: tuple[int, int] = (64, 64)) -> None:  # fmt: skip
        super().__init__(src, fmt, options, faults)
        self.size = tuple(size)

    def items(self) -> Iterator[tuple[float, np.ndarray]]:
        with _open(self.src, self.fmt, self.options, "video") as c:
            if not c.streams.video:
                raise DataError(f"video source {self.src}: has no video stream")
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            self.rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            start, n = container_start(c), 0
            for frame in c.decode(stream):
                t = frame.time - start if frame.time is not None else n / (self.rate or 25.0)
                n += 1
                yield t, frame.to_ndarray(format="rgb24", width=self.size[1], height=self.size[0])


class AudioSource(Source):
    """Mono float32 sample chunks at ``rate`` Hz, each timed at its first sample (from the container's start)."""

    kind = name = "audio"
    zero_based = True

    def __init__(self, src: str, fmt: str | None = None, options: dict | None = None,
                 faults: Sequence[Fault] = (), rate: int = 24_000) -> None:  # fmt: skip
        super().__init__(src, fmt, options, faults)
        self.rate = float(rate)

    def items(self) -> Iterator[tuple[float, np.ndarray]]:
        import av

        rate = int(self.rate or 24_000)
        with _open(self.src, self.fmt, self.options, "audio") as c:
            if not c.streams.audio:
                raise DataError(f"audio source {self.src}: has no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            start, done = container_start(c), 0
            for frame in c.decode(c.streams.audio[0]):
                t = frame.time - start if frame.time is not None else done / rate
                for out in resampler.resample(frame):
                    x = out.to_ndarray().reshape(-1).astype(np.float32)
                    yield t, x
                    t += len(x) / rate
                    done += len(x)


class SignalSource(Source):
    """``t,v1,...,vC`` lines from a CSV file or stdin (``"-"``): (C,) float32 rows timed by their
    first column (seconds). A header line, blank lines and ``#`` comments are skipped; a malformed
    line or a channel count that changes is an error naming the line."""

    def __init__(self, name: str, src: str, faults: Sequence[Fault] = (), channels: int | None = None,
                 time_unit: float = 1.0) -> None:  # fmt: skip
        super().__init__(src, None, None, faults)
        self.name, self.channels, self.time_unit = name, channels, float(time_unit)

    def items(self) -> Iterator[tuple[float, np.ndarray]]:
        if self.src == "-":
            f: io.TextIOBase = sys.stdin  # type: ignore[assignment]
        else:
            if not Path(self.src).is_file():
                raise DataError(f"signal source {self.name}={self.src} does not exist (a CSV file of t,v1,...,vC "
                                "lines, or - for stdin)")  # fmt: skip
            f = open(self.src, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
        try:
            data = False  # a data line seen: text lines before it are headers
            for k, line in enumerate(iter(lambda: f.readline(MAX_LINE), "")):
                if len(line) >= MAX_LINE - 1 and not line.endswith("\n"):
                    raise DataError(f"{self.src}: line {k + 1} is longer than {MAX_LINE} characters")
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                try:
                    row = np.array([float(v) for v in line.split(",")], np.float64)
                except ValueError:
                    if not data:
                        continue  # a header
                    raise DataError(f"{self.src}: line {k + 1} is not t,v1,...,vC numbers: {line[:80]!r}") from None
                if self.channels is not None and len(row) - 1 != self.channels:
                    raise DataError(f"{self.src}: line {k + 1} has {len(row) - 1} channels; "
                                    f"{self.name} has {self.channels}")  # fmt: skip
                if not np.isfinite(row[0]):
                    raise DataError(f"{self.src}: line {k + 1} has no valid time")
                data = True
                yield float(row[0]) * self.time_unit, row[1:].astype(np.float32)
        finally:
            if f is not sys.stdin:
                f.close()


class PushSource(Source):
    """Items handed in by the application: ``push(t, x)`` from any thread (``t`` in seconds on the
    sensor's own clock, e.g. a ROS header stamp), then ``close()``. ``kind``: ``video`` (frames
    (H, W, 3) uint8 RGB of any size: resized to the model's), ``audio`` (mono float32 samples at
    ``rate`` Hz: resampled to the model's rate) or ``signal`` (``name``: the modality; (C,) rows).
    A full queue drops its oldest item (a consumer that cannot keep up loses data, not memory)."""

    def __init__(self, kind: str, name: str | None = None, rate: float | None = None, max_queue: int = 1024,
                 time_unit: float = 1.0) -> None:  # fmt: skip
        if kind not in ("video", "audio", "signal"):
            raise DataError(f"PushSource kind {kind!r}: use video, audio or signal")
        if kind == "signal" and not name:
            raise DataError("a signal PushSource needs the modality's name, e.g. PushSource('signal', 'inertial')")
        super().__init__(f"<pushed {name or kind}>", "push")
        self.kind, self.name, self.in_rate, self.time_unit = kind, name or kind, rate, float(time_unit)
        if kind == "video" and rate:  # the camera's frame rate: a camera that slows down covers less
            self.rate = float(rate)
        self.size: tuple[int, int] | None = None
        self.channels: int | None = None
        self._q: queue.Queue = queue.Queue(max_queue)

    def push(self, t: float, x: np.ndarray) -> None:
        item = (float(t) * self.time_unit, np.array(x, copy=True))  # a copy: SDKs reuse their buffers
        self._put(item)

    def _put(self, item) -> None:
        while True:
            try:
                self._q.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    pass

    def close(self) -> None:
        self._put(None)  # never blocks: a full queue drops its oldest item

    def items(self) -> Iterator[tuple[float, np.ndarray]]:
        import cv2

        while not self.stop.is_set():
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            t, x = item
            if self.kind == "video":
                if x.ndim != 3 or x.shape[2] != 3 or x.dtype != np.uint8 or not x.size:
                    raise DataError(f"pushed video: a frame of {x.dtype} {x.shape}; push (H, W, 3) uint8 RGB frames")
                if self.size is not None and x.shape[:2] != tuple(self.size):
                    x = cv2.resize(x, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
            elif self.kind == "audio":
                x = np.asarray(x, np.float32).reshape(-1)
                if self.in_rate and self.rate and self.in_rate != self.rate:
                    n = int(round(len(x) * self.rate / self.in_rate))
                    x = np.interp(np.arange(n) * self.in_rate / self.rate, np.arange(len(x)), x).astype(np.float32)
            elif self.kind == "signal":
                x = np.asarray(x, np.float32).reshape(-1)
                if self.channels is not None and len(x) != self.channels:
                    raise DataError(
                        f"pushed {self.name}: {len(x)} channels; the model's {self.name} has {self.channels}"
                    )
            yield t, x
