"""Evaluation with sensors failing for stretches of each clip (:mod:`karmma.bursts`).

At rate ``r`` each sensor of each clip is failed a fraction ``r`` of the time on average, in bursts
of mean length ``L`` seconds, mapped onto tokens by time; seeded from ``(seed, L, rate, repeat)``,
so every model evaluated with the same seed sees the same failures. Each draw is scored three ways:

* ``per_token``: the failed tokens marked absent (per-token presence);
* ``drop_whole``: a sensor with any failure dropped for the whole clip (whole-clip masks); where
  every sensor failed somewhere, the one that worked longest is kept and its failure fed as data
  (a whole-clip system has nothing else to give);
* ``as_data``: the failed stretch fed as data, the sensor marked present — on stored features, the
  last working token held for time tokens and a whole-clip summary left as it is
  (:func:`karmma.bursts.failed_as_data`; ``fill`` overrides it per modality).

Given the raw clips (``raw``, :class:`karmma.evaluation.raw_summaries.RawSummaries`), a whole-clip
summary (depth motion maps) is recomputed for every draw instead: over the working frames for
``per_token``, with the failed frames fed as black frames for ``as_data`` (and for a sensor
``drop_whole`` must keep) — what each system would really compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from karmma import presence
from karmma.bursts import burst_views, clip_seconds, grid_step
from karmma.data.dataset import FeatureSet
from karmma.evaluation.evaluate import DROPOUT_RATES, AsData, MaskFn, repeat_summary, run_masked_many

if TYPE_CHECKING:
    from karmma.evaluation.raw_summaries import Draws, RawSummaries

VIEWS = ("per_token", "drop_whole", "as_data")
BURST_SECONDS = (0.5,)  # the mean burst lengths reported by default (the L)
DEFAULT_CLIP_SECONDS = 3.0  # a clip's length where the store records none
BLOCK = 1024  # clips whose failure timelines are drawn at once


def burst_seed(seed: int, mean_burst: float, rate: float, repeat: int) -> int:
    return 7_000_000 + seed * 100_000 + int(round(mean_burst * 100)) * 1000 + int(round(rate * 100)) * 10 + repeat


def fill_modes(data: FeatureSet, fill: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """How ``as_data`` feeds each modality's failed tokens (module docstring)."""
    given = dict(fill or {})
    return tuple(given.get(s.name, "keep" if s.name in data.clip_tokens else "hold") for s in data.specs)


def burst_mask_fns(data: FeatureSet, rates: Sequence[float], seed: int, repeats: int, mean_burst: float,
                   clip_default: float = DEFAULT_CLIP_SECONDS, fill: Mapping[str, str] | None = None,
                   raw: RawSummaries | None = None) -> dict[str, MaskFn]:  # fmt: skip
    """``"view/rate/repeat"`` -> the mask (or :class:`AsData`) of the whole split for that draw;
    ``raw``: whole-clip summaries recomputed from the raw clips (module docstring)."""
    present = torch.from_numpy(data.present)
    counts = [s.num_tokens for s in data.specs]
    whole_clip = [s.name in data.clip_tokens for s in data.specs]
    rows = np.arange(len(data))
    seconds = clip_seconds(data.durations, rows, clip_default)
    tokens = None if data.token_present is None else torch.from_numpy(data.token_present)
    modes = fill_modes(data, fill)
    draws: dict[str, dict[str, torch.Tensor]] = {}
    steps_of: dict[str, float] = {}
    for rate in rates:
        for r in range(repeats):
            g = torch.Generator().manual_seed(burst_seed(seed, mean_burst, rate, r))
            parts = [
                burst_views(
                    present[a : a + BLOCK],
                    counts,
                    whole_clip,
                    seconds[a : a + BLOCK],
                    rate,
                    mean_burst,
                    g,
                    None if tokens is None else tokens[a : a + BLOCK],
                )
                for a in range(0, len(rows), BLOCK)
            ]
            steps = max(p["timeline"].shape[2] for p in parts)  # a block at a time: bounded memory
            for p in parts:
                p["timeline"] = torch.nn.functional.pad(p["timeline"], (0, steps - p["timeline"].shape[2]))
            draws[f"{rate:.1f}/{r}"] = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            steps_of[f"{rate:.1f}/{r}"] = grid_step(mean_burst, rate)  # the timeline's grid step (s)
    working: dict[int, Draws] = {}
    black: dict[int, Draws] = {}
    for i, s in enumerate(data.specs):
        if raw is not None and s.name in raw.encoders and s.name in data.clip_tokens:
            timelines = {k: (v["timeline"][:, i].numpy(), steps_of[k]) for k, v in draws.items()}
            working[i], black[i] = raw.recompute(s.name, data.ids, seconds.numpy(), timelines)
    fns: dict[str, MaskFn] = {}
    for key, v in draws.items():
        fns[f"per_token/{key}"] = _as_data(v["per_token"], torch.zeros_like(v["failed"]), modes,
                                           {i: d[key] for i, d in working.items()})  # fmt: skip
        # a sensor kept because every one failed somewhere still sends its failure, as data
        kept = presence.per_token(v["drop_whole"], counts)
        as_data = {i: d[key] for i, d in black.items()}
        fns[f"drop_whole/{key}"] = _as_data(v["drop_whole"], v["failed"] & kept, modes, as_data)
        fns[f"as_data/{key}"] = _as_data(present, v["failed"], modes, as_data)
    return fns


def _as_data(mask: torch.Tensor, failed: torch.Tensor, modes: tuple[str, ...],
             replace: Mapping[int, tuple[np.ndarray, np.ndarray | None]]) -> MaskFn:  # fmt: skip
    """The variant of batch ``rows``: ``replace`` ``{modality index: (split rows, their tokens)}``."""
    n = len(mask)
    where = {}
    for i, (at, _) in replace.items():
        where[i] = np.full(n, -1, np.int64)
        where[i][at] = np.arange(len(at))

    def fn(p: torch.Tensor, rows: np.ndarray) -> AsData | torch.Tensor:
        if not replace and not failed[rows].any():
            return mask[rows]
        edits = {}
        for i, (_, tokens) in replace.items():
            pos = where[i][rows]
            if tokens is None or not (pos >= 0).any():
                continue
            values = torch.zeros((len(rows), *tokens.shape[1:]))
            values[pos >= 0] = torch.from_numpy(tokens[pos[pos >= 0]])
            edits[i] = (torch.from_numpy(pos >= 0), values)
        return AsData(mask[rows], failed[rows], modes, edits)

    return fn


def summarise(runs: Mapping[str, Mapping[str, float]], rates: Sequence[float], repeats: int) -> dict:
    """``{view: {rate: metrics averaged over repeats (and their std)}}``."""
    return {view: repeat_summary(runs, rates, repeats, prefix=f"{view}/") for view in VIEWS}


def evaluate_bursts(model: torch.nn.Module, data: FeatureSet, rates: Sequence[float] = DROPOUT_RATES, seed: int = 0,
                    repeats: int = 3, burst_seconds: Sequence[float] = BURST_SECONDS,
                    clip_default: float = DEFAULT_CLIP_SECONDS, precision: str = "fp32",
                    raw: RawSummaries | None = None) -> dict:  # fmt: skip
    """``{f"{L:g}": {view: {rate: metrics}}}`` for each mean burst length ``L``; ``raw``: whole-clip
    summaries recomputed from the raw clips (module docstring)."""
    out = {}
    for length in burst_seconds:
        fns = burst_mask_fns(data, rates, seed, repeats, length, clip_default, raw=raw)
        out[f"{length:g}"] = summarise(run_masked_many(model, data, fns, precision=precision), rates, repeats)
    return out
