"""Sensor failures inside a clip, found where the raw arrays are made (``Raw.valid``).

Each detector returns, over the first (time) axis of an array, where the sensor failed: a black
or frozen frame (:func:`black_frames`, :func:`frozen_frames`), a NaN/Inf row or a stalled stretch
of a signal (:func:`signal_gaps`), audio the track does not cover (:func:`pad_audio`: a track that
ends early; :mod:`~karmma.data.media.audio_stream` zero-fills jumps in its timestamps). Failed steps
keep a neutral finite stand-in (zeros for a blank frame or missing audio, the last good row held
for a signal), so extraction still sees finite values. docs/within_clip.md says why each
threshold is what it is, and what is not detected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLACK_LEVEL = 0.015
"""A frame is black when its mean absolute value is below this fraction of full scale: 3.8 of 255
(a capped or dead camera decodes to 0-3; a dark but working scene is above ~8). Full scale is 255
for uint8 and 1 otherwise, so a depth frame in mm is black only when (nearly) every pixel is 0."""
FROZEN_DIFF = 1e-3
"""Frame t repeats frame t-1 when their mean absolute difference is below this fraction of full
scale (a quarter of a grey level of 255, a thousandth of a mm of depth): sensor noise alone is
above it, so only a repeated (re-sent or re-decoded) frame is."""
FROZEN_MIN_RUN = 3
"""Equal consecutive frames make a frozen run only from this many on: a pair (a duplicated frame
of a frame-rate conversion, a still moment) is not a failure."""
MAX_GAP_FACTOR = 2.0
"""A signal whose timestamps jump more than this many median steps stalled in between."""
AUDIO_SHORT_S = 0.1
"""An audio track ending more than this before its clip is padded with silence, marked invalid;
within it (encoder delay and frame padding, container rounding: tens of ms) it is left as it is."""
AUDIO_GAP_S = 0.1
"""A jump in the audio frames' timestamps larger than this (or a track starting this much late) is
zero-filled and marked invalid; smaller ones are container rounding."""

Spans = Sequence[tuple[int, int]]  # [(start, stop)) sample ranges that are not the track's own
TO_END = np.iinfo(np.int64).max  # the stop of a padding span: frames centred past the clip's end are padding too


def full_scale(dtype: np.dtype | type) -> float:
    """255 for uint8 frames, 1 for any other dtype (floats in [0, 1], depth in mm)."""
    return 255.0 if np.dtype(dtype) == np.uint8 else 1.0


def black_frames(frames: np.ndarray, threshold: float = BLACK_LEVEL) -> np.ndarray:
    """(T,) bool: frame t is black, its mean absolute value below ``threshold`` x full scale
    (:data:`BLACK_LEVEL`). Frames are (T, ...) of any dtype: uint8 0..255, float 0..1, depth in mm
    (uint16 or float: black means all, or nearly all, zero)."""
    frames = np.asarray(frames)
    flat = frames.reshape(len(frames), -1)
    if not np.issubdtype(flat.dtype, np.unsignedinteger):
        flat = np.abs(flat)
    return flat.mean(1, dtype=np.float64) / full_scale(frames.dtype) < threshold


def frozen_frames(frames: np.ndarray, threshold: float = FROZEN_DIFF, min_run: int = FROZEN_MIN_RUN) -> np.ndarray:
    """(T,) bool: frame t is frozen, a repeat inside a run of at least ``min_run`` consecutive
    frames each equal to the one before (mean absolute difference below ``threshold`` x full scale).
    The run's first frame is the last good one and stays valid; its repeats are frozen."""
    if min_run < 2:
        raise ValueError(f"min_run={min_run}: a frozen run has at least 2 frames")
    frames = np.asarray(frames)
    scale = full_scale(frames.dtype)
    same = np.zeros(len(frames), bool)  # same[t]: frame t equals frame t-1
    for t in range(1, len(frames)):
        same[t] = np.abs(frames[t].astype(np.float64) - frames[t - 1]).mean() / scale < threshold
    out = np.zeros(len(frames), bool)
    t = 1
    while t < len(frames):
        end = t
        while end < len(frames) and same[end]:
            end += 1
        if end - t + 1 >= min_run:  # frames t-1 .. end-1 are equal: t .. end-1 repeat t-1
            out[t:end] = True
        t = max(end, t + 1)
    return out


def frame_failures(
    frames: np.ndarray, undecodable: np.ndarray | None = None, sources: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(valid, blank), (T,) bool each, of a clip's frames: ``blank`` where a frame is black or
    ``undecodable`` (the decoder flagged it): it is to be replaced by zeros; ``valid`` where it is
    neither blank nor frozen (a frozen frame is the last good frame held: it is kept as it is).
    ``sources`` (T,) names the source frame of each (a short segment's samples repeat frames): a
    frame read twice is one frame to the frozen test, not a repeat."""
    frames = np.asarray(frames)
    if sources is not None:
        _, first, inverse = np.unique(np.asarray(sources), return_index=True, return_inverse=True)
        valid, blank = frame_failures(frames[first], None if undecodable is None else np.asarray(undecodable)[first])
        return valid[inverse.reshape(-1)], blank[inverse.reshape(-1)]
    blank = black_frames(frames)
    if undecodable is not None:
        blank |= np.asarray(undecodable, bool)
    return ~(blank | frozen_frames(frames)), blank


def step_valid(valid: np.ndarray) -> np.ndarray:
    """(T-1,) bool: a step between consecutive frames (optical flow) is valid when both frames are."""
    valid = np.asarray(valid, bool)
    return valid[:-1] & valid[1:]


def hold_last(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``x`` (T, ...) with each invalid row replaced by the last valid row before it (zeros before
    the first valid row); ``x`` itself when every row is valid."""
    valid = np.asarray(valid, bool)
    if valid.all():
        return x
    last = np.where(valid, np.arange(len(x)), -1)
    np.maximum.accumulate(last, out=last)
    out = np.asarray(x)[np.maximum(last, 0)]
    out[last < 0] = 0
    return out


def signal_gaps(
    x: np.ndarray, timestamps: np.ndarray | None = None, max_gap_factor: float = MAX_GAP_FACTOR
) -> tuple[np.ndarray, np.ndarray]:
    """``(filled, valid)`` of a (T, C) signal: a row with any NaN/Inf is invalid, and ``filled``
    holds the last valid row there (zeros before the first). With ``timestamps`` (T,), increasing,
    a step longer than ``max_gap_factor`` x their median step means the sensor stalled: the signal
    comes back sampled on the regular grid ``timestamps[0] + k * median`` (each grid point holds
    the last sample at or within half a step after it), with the grid points inside a stall
    invalid (the last value held). Without a stall the rows are ``x``'s own."""
    x = np.asarray(x)
    valid = np.isfinite(x.reshape(len(x), -1)).all(1) if x.dtype.kind in "fc" else np.ones(len(x), bool)
    filled = hold_last(x, valid)
    if timestamps is None or len(x) < 2:
        return filled, valid
    ts = np.asarray(timestamps, np.float64).reshape(-1)
    steps = np.diff(ts)
    if len(ts) != len(x) or not np.isfinite(ts).all() or (steps <= 0).any():
        raise ValueError(f"timestamps must be {len(x)} finite increasing values, one per row")
    step = float(np.median(steps))
    stalls = steps > max_gap_factor * step
    if not stalls.any():
        return filled, valid
    grid = ts[0] + step * np.arange(int(np.floor((ts[-1] - ts[0]) / step + 0.5)) + 1)
    row = np.clip(np.searchsorted(ts, grid + step / 2, side="right") - 1, 0, len(ts) - 1)
    stalled = np.append(stalls, False)[row] & (grid - ts[row] >= step / 2)
    return filled[row], valid[row] & ~stalled


def audio_coverage(n_expected: int, n_got: int, rate: int, tolerance_s: float = AUDIO_SHORT_S) -> int:
    """Samples of silence a track of ``n_got`` samples needs to cover a clip of ``n_expected``:
    the shortfall when it exceeds ``tolerance_s`` (:data:`AUDIO_SHORT_S`), else 0."""
    short = int(n_expected) - int(n_got)
    return short if short > tolerance_s * rate else 0


def pad_audio(x: np.ndarray, n_expected: int | None, rate: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A (samples, ...) track padded with zeros (silence) to ``n_expected`` samples when it ends
    early (:func:`audio_coverage`), and the padding as a span ``[(start, TO_END)]`` (else ``x``, [])."""
    pad = 0 if n_expected is None else audio_coverage(n_expected, len(x), rate)
    if not pad:
        return x, []
    return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]), [(len(x), TO_END)]


def in_spans(positions: np.ndarray, spans: Spans) -> np.ndarray:
    """(N,) bool: which sample ``positions`` lie in one of ``spans`` ([start, stop) each)."""
    positions = np.asarray(positions)
    out = np.zeros(positions.shape, bool)
    for start, stop in spans:
        out |= (positions >= start) & (positions < stop)
    return out


def pooled_valid(valid: np.ndarray, group: int) -> np.ndarray:
    """Validity of frames averaged in consecutive groups of ``group`` (the last may be shorter): a
    pooled frame is valid when at least half of its frames are."""
    valid = np.asarray(valid, bool)
    if group <= 1:
        return valid
    n = -(-len(valid) // group)
    sums = np.add.reduceat(valid.astype(np.int64), np.arange(n) * group) if len(valid) else np.zeros(0, np.int64)
    counts = np.minimum(group, len(valid) - np.arange(n) * group)
    return 2 * sums >= counts
