"""Streaming prediction: every ``hop`` seconds, the model's window over what each source delivered.

The window ``[T - window, T)`` is cut into the frame modalities' ``N`` tokens on a fixed grid
(segment ``j`` spans ``[j s, (j + 1) s)``, ``s = window / N``; ``hop`` is rounded to whole
segments). Each token's presence comes from what its source really delivered in its time span
(:mod:`karmma.presence`'s rule: present when at least half of its expected steps hold data):

* video: the frames with timestamps in the segment (sampled as the clip format samples a clip);
  a segment without frames (a paused or stalled camera) is absent, and a black or frozen frame
  counts as failed (:mod:`karmma.data.media.failures`), as do flow steps from or to one;
* audio: the samples delivered in the window (gaps are silence, marked), and runs of exact digital
  zeros of at least ``AUDIO_GAP_S`` (a dead microphone: a working one is never exactly 0);
* signals: sample-and-hold on a grid at the source's rate; a grid point whose latest sample is
  older than ``MAX_GAP_FACTOR`` steps (or NaN) has none.

Each segment's frames are read, their flow computed and their backbone features embedded **once**
(one batched backbone call per modality per hop) and kept while the window covers the segment;
audio features and signals are cheap and recomputed over the window. A frame modality's token is
its clip encoder over the segment alone: frames are normalised per segment, not per clip (a
difference from ``predict --clip``, measured in docs/deploy.md). Before the first full window the
part not yet seen is absent, so the first prediction comes after one hop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from karmma.data.media.failures import AUDIO_GAP_S, MAX_GAP_FACTOR
from karmma.data.raw import Kind, Raw
from karmma.errors import DataError
from karmma.extractors.encoders import encode, token_valid, whole_clip_tokens
from karmma.modalities import HALF
from karmma.runtime.sources import Clock, Ring, Source

log = logging.getLogger(__name__)

GRACE_S = 0.05  # in real time, a hop waits this long after its window's end for items in flight
DEFAULT_WINDOW = 2.0  # seconds: the model's clip length when neither the user nor the export says
VIDEO_MODALITIES = ("rgb", "flow")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop)) runs of True in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


class Streamer:
    """Iterate to get one dict per hop (:meth:`__iter__`); see the module docstring."""

    def __init__(
        self, predictor, sources: Sequence[Source], hop: float = 0.5, window: float | None = None,
        realtime: bool | None = None, modalities: Sequence[str] | None = None, topk: int = 5,
        max_hops: int | None = None,
    ) -> None:  # fmt: skip
        from karmma.data.clips import preprocessing

        ex = predictor.extractor
        if not ex.get("reader") or not ex.get("kinds"):
            raise DataError("this model records no extractor (its features came from another tool): it cannot "
                            "read sensors; export it from a run trained on `karmma extract` features")  # fmt: skip
        self.predictor, self.topk, self.max_hops = predictor, topk, max_hops
        self.prep = getattr(predictor, "spec", {}).get("preprocessing") or preprocessing(
            ex["reader"], ex.get("preprocessing")
        )
        kinds = {m: Kind(*v) for m, v in ex["kinds"].items()}
        names = list(modalities or predictor.modality_names)
        self.sources = list(sources)
        if not self.sources:
            raise DataError("give at least one source (--video, --audio or --signal NAME=SRC)")
        counts = {s.name: s.num_tokens for s in predictor.specs}
        self.video = next((s for s in self.sources if s.kind == "video"), None)
        self.audio = next((s for s in self.sources if s.kind == "audio"), None)
        self.signals = {s.name: s for s in self.sources if s.kind == "signal"}
        if self.video is not None:  # what the model's clip format decodes to
            self.video.size = tuple(self.prep["frame_size"])  # type: ignore[attr-defined]
        if self.audio is not None and self.prep.get("audio"):
            self.audio.rate = float(self.prep["audio"]["rate"])
        for m, src in self.signals.items():
            if m not in kinds or kinds[m].kind not in ("signal", "skeleton") or m == "audio":
                takes = [n for n, k in kinds.items() if k.kind in ("signal", "skeleton") and n != "audio"]
                raise DataError(f"--signal {m}=...: this model's signal modalities are {takes}")
            src.channels = kinds[m].channels  # type: ignore[attr-defined]
        self.frame_mods = [m for m in VIDEO_MODALITIES if m in names and m in kinds and self.video is not None]
        self.used = [*self.frame_mods, *(["audio"] if self.audio is not None and "audio" in names else []),
                     *[m for m in self.signals if m in names]]  # fmt: skip
        if not self.used:
            raise DataError(f"none of the sources feeds a modality this model takes ({predictor.modality_names})")
        bad = [m for m in self.used if kinds[m].kind == "depth"]
        if bad:
            raise DataError(f"{bad}: depth is not a stream source (no depth camera reader); leave it out")
        self.encoders = predictor.encoders({m: kinds[m] for m in self.used})
        self.n = counts[self.frame_mods[0]] if self.frame_mods else counts.get(self.used[0], 8)
        self.window = float(window or DEFAULT_WINDOW)
        self.seg = self.window / self.n
        self.hop_segs = max(1, round(hop / self.seg))
        self.hop = self.hop_segs * self.seg
        if abs(self.hop - hop) > 1e-9:
            log.warning("hop %.3f s rounded to %d segment(s) of %.3f s: %.3f s", hop, self.hop_segs, self.seg, self.hop)
        self.seg_enc = {m: dataclasses.replace(self.encoders[m], num_tokens=1) for m in self.frame_mods}
        live = [s.src for s in self.sources if s.live]
        if realtime is False and live:
            log.warning("%s are live: they are read in real time", live)
        self.realtime = bool(live) if realtime is None else (realtime or bool(live))
        self.cond = threading.Condition()
        self.clock = Clock()
        span = self.window + 2 * self.hop + 1.0
        for src in self.sources:
            cap = {"video": int(span * 240) + 16, "audio": 20_000}.get(src.kind, 200_000)
            src.attach(Ring(self.cond, span, cap, block=not self.realtime), self.clock, self.realtime)
        self._cache: dict[int, dict[str, tuple[np.ndarray, float]]] = {}
        self._last: dict[int, np.ndarray] = {}
        self._counts: dict[int, int] = {}  # the frames each cached segment was computed from
        self._framing = self._audio_framing() if "audio" in self.used else None
        self.dropped_hops = 0

    # ------------------------------------------------------------------ the loop
    def __iter__(self) -> Iterator[dict]:
        self.clock.start()
        for s in self.sources:
            s.start()
        try:
            yield from self._hops()
        finally:
            self.close()

    def close(self) -> None:
        for s in self.sources:
            s.stop.set()
        with self.cond:
            self.cond.notify_all()
        for s in self.sources:
            if s.is_alive():
                s.join(timeout=2.0)

    @property
    def errors(self) -> dict[str, str]:
        """Why each source that stopped on an error stopped (the stream goes on without it)."""
        return {s.name: s.ring.error for s in self.sources if s.ring is not None and s.ring.error}

    def _rings(self) -> list[Ring]:
        return [s.ring for s in self.sources if s.ring is not None]

    def _delivered(self, t: float) -> bool:
        for s in self.sources:  # a ring full before the window is delivered cannot wait: it drops its oldest
            r = s.ring
            if r is not None and r.block and not r.done and r.horizon < t and r._full():
                r.block = False
                log.warning("source %s: the window holds more than its ring's bound of %d items; the oldest are "
                            "dropped (a shorter --window keeps them all)", s.name, r.max_items)  # fmt: skip
        return all(r.done or r.horizon >= t for r in self._rings())

    def _ended(self, t: float) -> bool:
        rings = self._rings()
        return all(r.done for r in rings) and t - self.hop > max(r.horizon for r in rings)

    def _hops(self) -> Iterator[dict]:
        t, k = self.hop, 0
        while self.max_hops is None or k < self.max_hops:
            if self.realtime:  # a grace for the items of the window's last moment to arrive
                self.clock.sleep_until(t + GRACE_S, threading.Event())
                late = int((self.clock.now() - t - GRACE_S) // self.hop)
                if late > 0:  # processing fell behind: the hops it missed are skipped, and counted
                    t += late * self.hop
                    self.dropped_hops += late
            else:
                with self.cond:
                    self.cond.wait_for(lambda: self._delivered(t))  # noqa: B023 (called before t changes)
            if self._ended(t):
                if k == 0 and self.errors:  # nothing came of any source: say why
                    raise DataError("; ".join(f"{name}: {e}" for name, e in self.errors.items()))
                if k == 0 and all(r.horizon == -np.inf for r in self._rings()):
                    raise DataError(f"no source delivered any data ({', '.join(s.src for s in self.sources)})")
                return
            yield self.predict_at(t)
            k += 1
            keep = t + self.hop - self.window - self.seg
            for s in self.sources:
                s.ring.drop_before(keep - (1.0 if s.kind == "signal" else 0.0))  # type: ignore[union-attr]
            first = int(round(keep / self.seg))
            for j in [j for j in self._cache if j < first]:
                del self._cache[j]
                self._last.pop(j, None)
                self._counts.pop(j, None)
            t += self.hop

    # ------------------------------------------------------------------ one hop
    def predict_at(self, t: float) -> dict:
        """The prediction for the window ending at ``t`` (a multiple of the segment length)."""
        start = time.perf_counter()
        ms: dict[str, float] = {}
        sample, valid, coverage = Raw(), {}, {}
        if self.frame_mods:
            last = int(round(t / self.seg))
            self._segments(range(max(0, last - self.n), last), ms)
            for m in self.frame_mods:
                rows = [self._cache.get(j, {}).get(m) for j in range(last - self.n, last)]
                dim = next((r[0].shape[-1] for r in rows if r is not None), None)
                flags = np.array([r is not None and r[1] >= HALF for r in rows])
                coverage[m] = float(flags.mean())
                if flags.any() and dim is not None:
                    sample[m] = np.stack([r[0] if r is not None else np.zeros(dim, np.float32) for r in rows])
                    valid[m] = flags
        if "audio" in self.used:
            a = time.perf_counter()
            self._window_tokens("audio", *self._audio_window(t), sample, valid, coverage)
            ms["audio"] = 1e3 * (time.perf_counter() - a)
        for m in [m for m in self.signals if m in self.used]:
            a = time.perf_counter()
            self._window_tokens(m, *self._signal_window(m, t), sample, valid, coverage)
            ms["signals"] = ms.get("signals", 0.0) + 1e3 * (time.perf_counter() - a)
        a = time.perf_counter()
        if sample:
            sample.valid = {m: v for m, v in valid.items() if m in sample and not v.all()}
            out = self.predictor.predict(sample, topk=self.topk, source=f"window ending at {t:.2f} s")
        else:  # nothing alive: no prediction, said so
            out = {"present": [], "absent": self.predictor.modality_names, "topk": {}}
        ms["fusion"] = 1e3 * (time.perf_counter() - a)
        ms["total"] = 1e3 * (time.perf_counter() - start)
        out.pop("token_coverage", None)
        dead = self.errors
        return {"t": round(t, 6), "window": [round(t - self.window, 6), round(t, 6)], **out,
                "coverage": coverage, "ms": {k: round(v, 2) for k, v in ms.items()},
                **({"source_errors": dead} if dead else {}), "dropped_hops": self.dropped_hops}  # fmt: skip

    def _window_tokens(self, m: str, x, steps_valid, sample: Raw, valid: dict, coverage: dict) -> None:
        if x is None or not steps_valid.any():
            coverage[m] = 0.0
            return
        enc = self.encoders[m]
        tokens = encode(enc, x, steps_valid)
        flags = token_valid(steps_valid, len(tokens), whole_clip_tokens(enc))
        sample[m], valid[m], coverage[m] = tokens, flags, float(flags.mean())

    # ------------------------------------------------------------------ video: per segment, once
    def _segments(self, js: range, ms: dict) -> None:
        from karmma.data.clips import video_raw

        assert self.video is not None and self.video.ring is not None
        found = {j: self.video.ring.between(j * self.seg, (j + 1) * self.seg) for j in js}
        # a segment is computed once, and again only if frames arrived for it since (a late camera)
        new = [j for j in js if j not in self._cache or self._counts.get(j, 0) < len(found[j])]
        a = time.perf_counter()
        per_clip, rgb_per_clip = self.prep.get("frames_per_clip"), self.prep.get("rgb_frames_per_clip")
        f_seg = max(1, per_clip // self.n) if per_clip else None
        r_seg = max(1, rgb_per_clip // self.n) if rgb_per_clip else None
        pending: dict[str, list[tuple[int, np.ndarray, float]]] = {m: [] for m in self.frame_mods}
        for j in new:
            items = found[j]
            self._cache[j], self._counts[j] = {}, len(items)
            if not items:
                continue
            rate = self.video.rate or len(items) / self.seg
            expected = max(1, round(rate * self.seg))
            if f_seg and len(items) > f_seg:
                items = [items[i] for i in np.linspace(0, len(items) - 1, f_seg).round().astype(int)]
            expected = min(expected, f_seg) if f_seg else expected
            own = np.stack([x for _, x in items])
            prev = self._last.get(j - 1)
            seq = own if prev is None else np.concatenate([prev[None], own])
            off = len(seq) - len(own)
            r = min(r_seg, len(own)) if r_seg else len(own)
            pick = off + np.linspace(0, len(own) - 1, r).round().astype(int)
            raw = video_raw(Raw(), seq, tuple(self.frame_mods), pick)
            self._last[j] = own[-1]
            if "rgb" in raw:
                ok = raw.valid.get("rgb", np.ones(len(pick), bool))
                pending["rgb"].append((j, raw["rgb"], ok.sum() / max(min(r_seg or expected, expected), len(pick))))
            if "flow" in raw and len(raw["flow"]):
                ok = raw.valid.get("flow", np.ones(len(raw["flow"]), bool))
                pending["flow"].append((j, raw["flow"], ok.sum() / max(expected, len(raw["flow"]))))
        ms["video"] = 1e3 * (time.perf_counter() - a)
        a = time.perf_counter()
        for m, rows in pending.items():
            enc = self.seg_enc[m]
            if not rows:
                continue
            if hasattr(enc, "images"):  # one backbone call for every new segment of the hop
                images = [enc.images(x) for _, x, _ in rows]
                feats = np.split(enc.embed(np.concatenate(images)), np.cumsum([len(i) for i in images])[:-1])
                tokens = [enc.tokens(f)[0] for f in feats]
            else:
                tokens = [enc(x)[0] for _, x, _ in rows]
            for (j, _, share), tok in zip(rows, tokens):
                self._cache[j][m] = (np.asarray(tok, np.float32), float(share))
        ms["backbone"] = 1e3 * (time.perf_counter() - a)

    # ------------------------------------------------------------------ audio and signals: per window
    def _audio_framing(self):
        from karmma.data.clips import audio_framing

        if not self.prep.get("audio"):
            raise DataError(f"this model's clip format ({self.predictor.extractor['reader']}) has no audio features")
        return audio_framing(self.prep["audio"])

    def _audio_window(self, t: float) -> tuple[np.ndarray | None, np.ndarray]:
        from karmma.data.media.audio_stream import frames_of, frames_valid

        assert self.audio is not None and self.audio.ring is not None
        rate = int(self.prep["audio"]["rate"])
        t0, n = t - self.window, int(round(self.window * rate))
        x, cov = np.zeros(n, np.float32), np.zeros(n, bool)
        for ts, chunk in self.audio.ring.between(t0 - 1.0, t):
            a = int(round((ts - t0) * rate))
            lo, hi = max(0, a), min(n, a + len(chunk))
            if hi > lo:
                x[lo:hi], cov[lo:hi] = chunk[lo - a : hi - a], True
        for a, b in _runs(cov & (x == 0.0)):  # digital silence: a dead microphone
            if b - a >= AUDIO_GAP_S * rate:
                cov[a:b] = False
        if not cov.any():
            return None, np.zeros(0, bool)
        assert self._framing is not None
        feats = frames_of(self._framing, [x])
        return feats, frames_valid(self._framing, len(feats), _runs(~cov))

    def _signal_window(self, m: str, t: float) -> tuple[np.ndarray | None, np.ndarray]:
        ring = self.signals[m].ring
        assert ring is not None
        items = ring.between(t - self.window - 1.0, t)
        if not items:
            return None, np.zeros(0, bool)
        order = np.argsort([ts for ts, _ in items], kind="stable")
        times = np.array([items[i][0] for i in order])
        rows = np.stack([items[i][1] for i in order])
        gaps = np.diff(times)
        gaps = gaps[gaps > 0]  # repeated (quantised) timestamps say nothing of the rate
        step = float(np.median(gaps)) if len(gaps) else self.window
        step = max(step, 1e-3)
        n = int(np.clip(round(self.window / step), 2, 4096))
        grid = t - self.window + (np.arange(n) + 0.5) * self.window / n
        idx = np.searchsorted(times, grid, side="right") - 1
        held = idx >= 0
        fresh = held & (grid - times[np.maximum(idx, 0)] <= MAX_GAP_FACTOR * step)
        x = np.where(held[:, None], rows[np.maximum(idx, 0)], 0.0).astype(np.float32)
        ok = fresh & np.isfinite(x).all(1)
        x[~ok] = 0.0
        return x, ok


def stream_summary(hops: Sequence[dict[str, Any]]) -> dict:
    """Per-stage latency (median, p95 ms) over hops, for benchmarks and the CLI's last line."""
    stages = sorted({k for h in hops for k in h.get("ms", {})})
    out = {}
    for k in stages:
        v = np.array([h["ms"][k] for h in hops if k in h.get("ms", {})])
        out[k] = {"median": float(np.median(v)), "p95": float(np.percentile(v, 95))}
    return out
