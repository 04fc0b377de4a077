"""Whole-clip summaries recomputed from the raw clips under a draw of failures in time.

A token that summarises the whole clip (a depth motion map: one per view) cannot be edited on
stored features the way a time token can: what a failure does to it depends on the frames. Given
the raw data the store was extracted from, the within-clip evaluation (:mod:`karmma.evaluation.bursts`)
recomputes such a modality for every draw of failures, as each system would see it:

* ``working``: the summary over the working frames only — what extraction computes from the
  frames its detectors keep (``DepthMotionMaps(frames, valid=...)``), used by ``per_token``
  where the modality stays present;
* ``as_data``: the failed frames fed as black frames (zeros, the readers' stand-in for a failed
  frame), the modality marked present — a system unaware of the failure; used by ``as_data``
  and by ``drop_whole`` where it must keep a sensor that failed.

Frame ``t`` of a clip of ``T`` frames and ``d`` seconds is failed when its sensor is failed at
its centre, ``(t + 0.5) d / T`` s. The encoder of the modality must offer
``under_failures(frames, failed)`` (:class:`karmma.extractors.motion_maps.DepthMotionMaps`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from karmma.errors import DataError

log = logging.getLogger(__name__)

Draws = dict[str, tuple[np.ndarray, "np.ndarray | None"]]  # draw key -> (rows, their (n, N_m, D) tokens)


class RawSummaries:
    """The raw clips of a store's split (``reader`` at ``root``), and the encoders of the modalities
    whose tokens summarise the whole clip; :meth:`recompute` caches its result per draw."""

    def __init__(self, reader: str, root: str | Path, split: str, encoders: Mapping[str, Any]) -> None:
        from karmma.data.readers.base import get_reader

        self.reader, self.root, self.split = get_reader(reader), Path(root), split
        self.encoders = dict(encoders)
        self._refs: dict[str, Any] | None = None
        self._cache: dict[tuple, tuple[Draws, Draws]] = {}

    @classmethod
    def for_store(cls, data: Any, root: str | Path) -> RawSummaries:
        """From a feature set whose store records its reader and split (``karmma extract`` does)."""
        from karmma.data.readers.base import get_reader
        from karmma.data.store import store_info
        from karmma.registries import EXTRACTORS

        extra = store_info(data.source).get("extra", {})
        reader, split, family = extra.get("reader"), extra.get("split"), extra.get("encoder")
        if not (reader and split and family):
            raise DataError(f"{data.source}: the store does not record its reader, split and extractor family; "
                            "recomputing from raw data needs a store written by `karmma extract`")  # fmt: skip
        kinds = get_reader(reader).modalities
        clip = [m for m in data.clip_tokens if m in kinds]
        encoders = EXTRACTORS.get(family)({m: kinds[m] for m in clip}, "teacher") if clip else {}
        return cls(reader, root, split, {m: e for m, e in encoders.items() if hasattr(e, "under_failures")})

    def refs(self) -> dict[str, Any]:
        if self._refs is None:
            self._refs = {r.id: r for r in self.reader.samples(self.root, self.split)}
        return self._refs

    def recompute(self, modality: str, ids: Sequence[str], durations: np.ndarray,
                  timelines: Mapping[str, tuple[np.ndarray, float]]) -> tuple[Draws, Draws]:  # fmt: skip
        """``(working, as_data)``: per draw key, the rows whose ``modality`` failed somewhere and
        their recomputed tokens. ``timelines[key]``: ``(B, T)`` bool, when the sensor failed, on a
        grid of the given step (s); ``durations`` ``(B,)`` s."""
        key = (modality, tuple(ids), tuple((k, v.tobytes(), dt) for k, (v, dt) in timelines.items()))
        if key in self._cache:
            return self._cache[key]
        enc, refs = self.encoders[modality], self.refs()
        draw_keys = list(timelines)
        rows: dict[str, list[int]] = {k: [] for k in draw_keys}
        out: tuple[dict[str, list], dict[str, list]] = ({k: [] for k in draw_keys}, {k: [] for k in draw_keys})
        for b, sid in enumerate(ids):
            hit = [k for k in draw_keys if timelines[k][0][b].any()]
            if not hit:
                continue
            if sid not in refs:
                raise DataError(f"sample {sid!r} is not in the {self.split} split of {self.root}: give the raw data "
                                "the store was extracted from")  # fmt: skip
            raw: Any = self.reader.load(refs[sid], (modality,), "raise")
            frames = raw[modality]
            t = len(frames)
            centre = (np.arange(t) + 0.5) * float(durations[b]) / t
            failed = np.stack([_at(timelines[k], b, centre) for k in hit])
            if modality in getattr(raw, "valid", {}):  # a frame the detectors found failed stays failed
                failed = failed | ~np.asarray(raw.valid[modality], dtype=bool)[None]
            working, as_data = enc.under_failures(frames, failed)
            for j, k in enumerate(hit):
                rows[k].append(b)
                out[0][k].append(working[j])
                out[1][k].append(as_data[j])
        working, as_data = ({k: (np.asarray(rows[k], np.int64), np.stack(v[k]) if v[k] else None) for k in draw_keys}
                            for v in out)  # fmt: skip
        self._cache = {key: (working, as_data)}  # one split's draws at a time (the models of a seed share them)
        return working, as_data


def _at(timeline: tuple[np.ndarray, float], row: int, seconds: np.ndarray) -> np.ndarray:
    """Whether the sensor of clip ``row`` is failed at each of ``seconds``."""
    failed, dt = timeline
    return failed[row][np.minimum((seconds / dt).astype(np.int64), failed.shape[1] - 1)]
