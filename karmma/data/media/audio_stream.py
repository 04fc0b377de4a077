"""Audio in a stream: the track decoded and resampled chunk by chunk, framed (log-mel, STFT) block
by block with the frames' overlap carried across blocks, and — for a raw clip of any length —
consecutive frames averaged so that at most :data:`karmma.limits.AUDIO_FRAMES` are kept. Memory
is bounded by a block, never by the clip: an hour-long video is read like a ten-second one.

A :class:`Framing` describes a framed transform: frame ``i`` covers ``[i * hop + offset,
i * hop + offset + width)`` of the signal padded with ``pad`` zeros in front (and enough behind),
and ``count(L)`` frames are made of ``L`` samples. Its ``features`` maps a contiguous run of the
padded signal to the features of the frames in it. :func:`frames_of` of a whole array is the
transform computed at once: the same arithmetic per frame (a matrix product over more rows than a
block may sum in another order: see :data:`BLOCK_FRAMES`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from karmma.errors import DataError

log = logging.getLogger(__name__)

# Frames transformed together: a log-mel block holds ~70 MB of magnitudes at most. A signal of up to
# this many frames is transformed at once, exactly as one whole-array computation (a longer one
# differs from that in the last bit at most: BLAS sums a matrix product in an order that depends on
# its row count); it is above the default AUDIO_FRAMES bound, so a kept clip is exact.
BLOCK_FRAMES = 16_384


@dataclass(frozen=True)
class Framing:
    hop: int
    width: int
    offset: int
    pad: int
    count: Callable[[int], int]  # frames of a signal of L samples (nondecreasing in L)
    features: Callable[[np.ndarray], np.ndarray]  # a run of padded signal -> (frames in it, F) float32
    block: int = BLOCK_FRAMES  # frames transformed together

    def frames_in(self, run: int) -> int:
        return 0 if run < self.width else (run - self.width) // self.hop + 1


def audio_chunks(
    path: str | Path,
    rate: int,
    start_s: float = 0.0,
    end_s: float | None = None,
    gaps: list[tuple[int, int]] | None = None,
) -> Iterator[np.ndarray]:
    """float32 mono chunks of the container's first audio track, resampled to ``rate``, over
    [start_s, end_s): concatenated, exactly the samples :func:`karmma.data.media.decode.read_audio`
    returns. Raises :class:`~karmma.data.media.decode.NoStream` when there is no audio track.

    With a ``gaps`` list, a jump in the frames' timestamps (or a track starting late) of more than
    :data:`~karmma.data.media.failures.AUDIO_GAP_S` is filled with zeros, and each filled stretch
    is appended to ``gaps`` as ``(start, stop)`` samples of the chunks' concatenation (placed to
    within the resampler's few samples of latency). Without it, the track is read as it is."""
    import av

    from karmma.data.media.container import NoStream, _open
    from karmma.data.media.failures import AUDIO_GAP_S

    path = Path(path)
    first_t: float | None = None
    seen = 0  # resampled samples so far, from the first decoded frame
    a = b = 0
    out_n = 0  # samples yielded so far
    expect: float | None = None  # where the next frame should start (s), from the last one

    def silence(seconds: float) -> np.ndarray:  # zeros for a stretch the track skips, recorded in gaps
        x = keep(np.zeros(int(round(seconds * rate)), np.float32))
        if len(x) and gaps is not None:
            gaps.append((out_n, out_n + len(x)))
        return x

    with _open(path) as c:
        if not c.streams.audio:
            raise NoStream(path, "no audio track")
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)

        def keep(x: np.ndarray) -> np.ndarray:  # the part of this chunk inside [a, b) of the whole track
            nonlocal seen
            lo, hi = max(a, seen), min(b, seen + len(x))
            first, seen = seen, seen + len(x)
            return x[lo - first : hi - first] if hi > lo else x[:0]

        try:
            if start_s > 0:
                c.seek(int(start_s / stream.time_base), stream=stream, backward=True)
            for frame in c.decode(stream):
                gap = 0.0
                if first_t is None:
                    first_t = origin = frame.time or 0.0
                    if gaps is not None and first_t - max(0.0, start_s) > AUDIO_GAP_S:  # starts late: silence first
                        origin, gap = max(0.0, start_s), first_t - max(0.0, start_s)
                    a = max(0, int(round((start_s - origin) * rate)))
                    b = math.inf if end_s is None else max(a, int(round((end_s - origin) * rate)))
                elif gaps is not None and frame.time is not None and expect is not None:
                    gap = frame.time - expect if frame.time - expect > AUDIO_GAP_S else 0.0
                if gap:
                    x = silence(gap)
                    if len(x):
                        out_n += len(x)
                        yield x
                if frame.time is not None and frame.sample_rate:
                    expect = frame.time + frame.samples / frame.sample_rate
                for out in resampler.resample(frame):
                    x = keep(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
                    if len(x):
                        out_n += len(x)
                        yield x
                if end_s is not None and frame.time is not None and frame.time > end_s:
                    break
            for out in resampler.resample(None):
                x = keep(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
                if len(x):
                    out_n += len(x)
                    yield x
        except av.FFmpegError as e:
            raise DataError(f"{path}: audio decoding failed ({e}); re-encode the audio track") from e


class FrameStream:
    """Feeds a :class:`Framing` chunk by chunk; :meth:`push` and :meth:`finish` return the
    features of the frames completed so far (``(n, F)`` blocks, possibly empty lists)."""

    def __init__(self, framing: Framing, block: int | None = None) -> None:
        self.f, self.block = framing, block or framing.block
        self.buf = np.zeros(framing.pad, np.float32)  # the padded signal from absolute index `base`
        self.base = 0
        self.pending: list[np.ndarray] = []
        self.pending_n = 0
        self.samples = 0  # signal samples pushed
        self.next = 0  # the next frame to compute

    def push(self, x: np.ndarray) -> list[np.ndarray]:
        self.pending.append(np.asarray(x, np.float32).reshape(-1))
        self.pending_n += len(self.pending[-1])
        self.samples += len(self.pending[-1])
        if self.pending_n < self.block * self.f.hop:
            return []
        return self._run(self.f.count(self.samples))

    def finish(self) -> list[np.ndarray]:
        total = self.f.count(self.samples)
        end = (total - 1) * self.f.hop + self.f.offset + self.f.width  # the padded length the last frame needs
        self.pending.append(np.zeros(max(0, end - self.base - len(self.buf) - self.pending_n), np.float32))
        self.pending_n += len(self.pending[-1])
        return self._run(total)

    def _run(self, upto: int) -> list[np.ndarray]:
        f = self.f
        self.buf = np.concatenate([self.buf, *self.pending])
        self.pending, self.pending_n = [], 0
        out = []
        while True:
            start = self.next * f.hop + f.offset - self.base
            n = min(upto - self.next, f.frames_in(len(self.buf) - start), self.block)
            if n <= 0:
                break
            out.append(f.features(self.buf[start : start + (n - 1) * f.hop + f.width]))
            self.next += n
        drop = max(0, self.next * f.hop + f.offset - self.base)
        self.buf, self.base = self.buf[drop:], self.base + drop
        return out


def frames_of(framing: Framing, chunks: Iterable[np.ndarray], block: int | None = None) -> np.ndarray:
    """Every frame's features of the signal ``chunks`` make, computed block by block."""
    stream, parts = FrameStream(framing, block), []
    for x in chunks:
        parts += stream.push(x)
    parts += stream.finish()
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


class FramePool:
    """Keeps at most ``bound`` frames of a stream: consecutive frames are averaged in groups of
    ``group`` (from the clip's declared duration); should the stream run longer than declared,
    adjacent groups are merged (the group doubles), so memory never exceeds ``bound`` frames. With a
    group of 1 and no more than ``bound`` frames the frames come back unchanged, bit for bit."""

    def __init__(self, bound: int, group: int = 1) -> None:
        self.bound, self.group = max(1, bound), max(1, group)
        self.sums: np.ndarray | None = None  # (bound, F) float64 group sums
        self.counts = np.zeros(self.bound, np.int64)
        self.n = 0  # groups started
        self.frames = 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        if self.sums is None:
            self.sums = np.zeros((self.bound, x.shape[1]), np.float64)
        self.frames += len(x)
        while len(x):
            g = self.group
            if self.n and self.counts[self.n - 1] < g:  # fill the open group first
                k = self.n - 1
                take = min(g - int(self.counts[k]), len(x))
                self.sums[k] += x[:take].sum(0, dtype=np.float64)
                self.counts[k] += take
            elif self.n == self.bound:  # every group full: merge pairs, the group doubles
                self._merge()
                take = 0
            elif len(x) >= g:  # whole new groups
                full = min(len(x) // g, self.bound - self.n)
                take = full * g
                self.sums[self.n : self.n + full] = x[:take].reshape(full, g, -1).sum(1, dtype=np.float64)
                self.counts[self.n : self.n + full] = g
                self.n += full
            else:  # the start of a new group
                take = len(x)
                self.sums[self.n] = x.sum(0, dtype=np.float64)
                self.counts[self.n] = take
                self.n += 1
            x = x[take:]

    def _merge(self) -> None:
        half = (self.n + 1) // 2
        s, c = self.sums[: self.n], self.counts[: self.n]
        if self.n % 2:
            s, c = np.concatenate([s, np.zeros_like(s[:1])]), np.concatenate([c, [0]])
        self.sums[:half], self.counts[:half] = s[0::2] + s[1::2], c[0::2] + c[1::2]
        self.sums[half:], self.counts[half:] = 0.0, 0
        self.n, self.group = half, 2 * self.group
        log.info("audio longer than its container declared: frames now averaged in groups of %d", self.group)

    def result(self) -> np.ndarray:
        if self.sums is None:
            raise DataError("no audio frames")
        c = self.counts[: self.n, None]
        return (self.sums[: self.n] / c).astype(np.float32)


def pooled_group(framing: Framing, rate: int, duration_s: float | None, bound: int) -> int:
    """Frames per group so that a clip of ``duration_s`` keeps at most ``bound`` frames (1 when it
    fits; 2% of slack for a duration rounded down)."""
    if not duration_s or duration_s <= 0 or not math.isfinite(duration_s):
        return 1
    expected = framing.count(int(math.ceil(duration_s * rate)))
    return 1 if expected <= bound else math.ceil(expected * 1.02 / bound)


def clip_audio_features(path: str | Path, framing: Framing, rate: int, duration_s: float | None) -> np.ndarray:
    """The clip's audio track through ``framing``, at most :data:`karmma.limits.AUDIO_FRAMES`
    frames (consecutive frames averaged for a longer clip); decoded in a stream."""
    return clip_audio(path, framing, rate, duration_s)[0]


def clip_audio(
    path: str | Path, framing: Framing, rate: int, duration_s: float | None, clip_s: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, valid) of the clip's audio track through ``framing``: at most
    :data:`karmma.limits.AUDIO_FRAMES` frames (consecutive frames averaged for a longer clip),
    decoded in a stream. Jumps in the track's timestamps are zero-filled, and a track ending more
    than :data:`~karmma.data.media.failures.AUDIO_SHORT_S` before ``clip_s`` (the clip's length)
    is padded with silence up to it; ``valid`` (frames,) is False on the frames those cover (an
    averaged frame: on half of its frames or more), None when the track covers the clip."""
    from karmma.data.media.failures import AUDIO_SHORT_S, TO_END, audio_coverage, pooled_valid
    from karmma.limits import AUDIO_FRAMES

    bound = AUDIO_FRAMES.value()
    if clip_s and duration_s and clip_s - duration_s > AUDIO_SHORT_S:  # declared short: pooled to the clip's end
        duration_s = clip_s
    pool = FramePool(bound, pooled_group(framing, rate, duration_s, bound))
    stream = FrameStream(framing)
    samples = 0
    gaps: list[tuple[int, int]] = []  # zero-filled sample spans
    for x in audio_chunks(path, rate, gaps=gaps):
        samples += len(x)
        for block in stream.push(x):
            pool.add(block)
    if samples < 2:
        from karmma.data.media.container import NoStream

        raise NoStream(Path(path), f"an empty audio track ({samples} sample(s))")
    pad = audio_coverage(int(round(clip_s * rate)), samples, rate) if clip_s else 0
    if pad:
        gaps.append((samples, TO_END))
    for i in range(0, pad, 1 << 20):  # silence up to the clip's end, a bounded block at a time
        for block in stream.push(np.zeros(min(1 << 20, pad - i), np.float32)):
            pool.add(block)
    samples += pad
    for block in stream.finish():
        pool.add(block)
    if pool.group > 1:
        log.info("%s: %d audio frames averaged in groups of %d (bound %d, %s)", path, pool.frames, pool.group, bound,
                 AUDIO_FRAMES.env)  # fmt: skip
    valid = None
    if gaps:
        valid = pooled_valid(frames_valid(framing, pool.frames, gaps), pool.group)
    return pool.result(), valid


def frames_valid(framing: Framing, n: int, spans) -> np.ndarray:
    """(n,) bool: frame i of ``framing`` is valid unless its centre sample lies in one of
    ``spans`` (``(start, stop)`` samples that are not the track's own: zero-filled)."""
    from karmma.data.media.failures import in_spans

    centre = np.arange(n) * framing.hop + framing.offset + framing.width // 2 - framing.pad
    return ~in_spans(centre, spans)


def log_mel_framing(rate: int, bands: int, window_s: float, hop_s: float, n_fft: int) -> Framing:
    """:func:`karmma.data.media.decode.log_mel` as a :class:`Framing`: a Hann window of ``window_s``
    centred in ``n_fft`` points every ``hop_s`` of the signal padded by ``n_fft // 2`` zeros."""
    from karmma.data.media.mel import mel_filterbank

    win, hop = int(round(window_s * rate)), int(round(hop_s * rate))
    hann = np.hanning(win + 2)[1:-1].astype(np.float32)  # periodic-like Hann without zero ends
    fb = mel_filterbank(rate, n_fft, bands).T

    def features(run: np.ndarray) -> np.ndarray:
        n = (len(run) - win) // hop + 1
        spec = np.empty((n, n_fft // 2 + 1), np.float32)
        for a in range(0, n, 1024):  # each row's FFT is its own: rows in slices, the same values
            b = min(n, a + 1024)
            frames = run[np.arange(a, b)[:, None] * hop + np.arange(win)[None]] * hann
            spec[a:b] = np.abs(np.fft.rfft(frames, n=n_fft, axis=1))  # the window at the frame's start: same magnitude
        return np.log(spec @ fb + 1e-6).astype(np.float32)  # one product per block (BLAS sums by row count)

    pad = n_fft // 2
    return Framing(hop, win, (n_fft - win) // 2, pad, lambda n: 1 + max(0, (n + 2 * pad - n_fft) // hop), features)
