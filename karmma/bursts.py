"""Sensors failing for stretches of a clip: seeded bursts in seconds, mapped onto tokens by time.

**The model of failures.** Each sensor (modality) of each clip is an independent two-state
Markov process in continuous time, *working* or *failed*, started from its stationary state:

* a failure lasts ``mean_burst`` seconds on average (exponential durations), and
* the sensor is failed a fraction ``rate`` of the time on average, so a working stretch lasts
  ``mean_burst * (1 - rate) / rate`` seconds on average.

It is simulated on a grid of ``dt`` seconds (:func:`grid_step`: :data:`STEP_SECONDS`, or a tenth
of the mean failure or working stretch if shorter) over each clip's duration, with the chain's
exact transition probabilities over a step (so the grid keeps the failed share ``rate``). A token
covers an equal share of its clip in time order (:mod:`karmma.presence`), or the whole clip for
modalities whose every token summarises the whole clip (depth motion maps: one token per view);
it is **failed** when the sensor is failed for at least half of its span (:data:`karmma.presence.HALF`).

At least one token of one sensor survives in every sample: if every token fails, the token that
was working for the largest share of its span is kept (as whole-modality dropout keeps one
modality). The failures are reproducible from the ``torch.Generator`` given.

Three ways a system can treat what fails (:func:`burst_views`): ``per_token`` (failed tokens
marked absent: KARMMA's per-token presence), ``drop_whole`` (a sensor with any failure dropped for
the whole clip: the whole-clip mask's only correct option; the evaluation feeds the failure of a
sensor it must keep as data) and ``as_data`` (the failed stretch fed
as data with the sensor marked present, :func:`failed_as_data`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from karmma import presence
from karmma.presence import HALF

STEP_SECONDS = 0.05  # the simulation grid (the failure timeline's resolution)
MIN_STEP_SECONDS = 0.005  # its finest step, for short working stretches (high rates)


def grid_step(mean_burst: float, rate: float = 0.0) -> float:
    """The simulation grid's step (s): :data:`STEP_SECONDS`, or a tenth of the mean failure or of
    the mean working stretch if shorter (not under :data:`MIN_STEP_SECONDS`)."""
    working = mean_burst * (1.0 - rate) / rate if 0.0 < rate < 1.0 else mean_burst
    return max(MIN_STEP_SECONDS, min(STEP_SECONDS, mean_burst / 10, working / 10))


def failure_timelines(batch: int, sensors: int, durations: torch.Tensor, rate: float | torch.Tensor,
                      mean_burst: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(failed (B, S, T) bool, inside (B, T) bool)`` on a grid of ``dt`` seconds: whether each
    sensor is failed at each step, and which steps lie inside each clip (``durations`` (B,) s).
    ``rate``: one for every clip, or ``(B,)``, each clip's own."""
    durations = durations.double().clamp_min(1e-3)
    dt = grid_step(mean_burst, float(torch.as_tensor(rate).max()))
    steps = max(1, int(torch.ceil(durations.max() / dt)))
    inside = (torch.arange(steps, dtype=torch.float64)[None] + 0.5) * dt < durations[:, None]
    inside[:, 0] = True
    if not isinstance(rate, torch.Tensor):
        if rate <= 0.0:
            return torch.zeros(batch, sensors, steps, dtype=torch.bool), inside
        if rate >= 1.0:
            return torch.ones(batch, sensors, steps, dtype=torch.bool), inside
    # each clip's own rate (B, 1) against (B, S) states; the chain's exact transition over a step:
    # with a = 1/L (recovery) and b = r / (L (1 - r)) (failure), P(change) = 1 - exp(-(a + b) dt)
    # split as r : (1 - r), so that the grid keeps the stationary share r exactly
    r = torch.as_tensor(rate, dtype=torch.float64).clamp(0.0, 1.0).reshape(-1, 1)
    change = 1.0 - torch.exp(-dt / (mean_burst * (1.0 - r)))  # 1 / L + r / (L (1 - r)) = 1 / (L (1 - r))
    recover, fail = (1.0 - r) * change, r * change
    draws = torch.rand(batch, sensors, steps, generator=generator, dtype=torch.float64)
    state = draws[..., 0] < r  # stationary start
    out = torch.empty(batch, sensors, steps, dtype=torch.bool)
    out[..., 0] = state
    for t in range(1, steps):
        u = draws[..., t]
        state = torch.where(state, u >= recover, u < fail)
        out[..., t] = state
    return out, inside


def token_working(failed: torch.Tensor, inside: torch.Tensor, counts: Sequence[int],
                  whole_clip: Sequence[bool]) -> list[torch.Tensor]:  # fmt: skip
    """Per modality ``(B, N_m)``: the share of each token's span during which its sensor worked.
    Modality ``m`` of the timelines is sensor ``m``; ``whole_clip[m]``: its tokens span the clip."""
    length = inside.sum(1).clamp_min(1)  # grid steps per clip
    out = []
    for m, n in enumerate(counts):
        working = (~failed[:, m] & inside).double()
        if whole_clip[m]:
            share = working.sum(1, keepdim=True) / length[:, None]
            out.append(share.expand(-1, n).float())
            continue
        # token k spans grid steps [k * L / n, (k + 1) * L / n) of a clip of L steps (at least one)
        k = torch.arange(n)[None, :]
        lo = torch.div(k * length[:, None], n, rounding_mode="floor")
        hi = torch.maximum(torch.div((k + 1) * length[:, None], n, rounding_mode="floor"), lo + 1)
        cum = torch.cat([torch.zeros_like(working[:, :1]), working.cumsum(1)], 1)  # (B, T + 1)
        share = (cum.gather(1, hi) - cum.gather(1, lo)) / (hi - lo)
        out.append(share.float())
    return out


def burst_views(present: torch.Tensor, counts: Sequence[int], whole_clip: Sequence[bool], durations: torch.Tensor,
                rate: float | torch.Tensor, mean_burst: float, generator: torch.Generator,
                data_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """One draw of failures for a batch whose whole presence is ``present`` (B, M), as
    ``{"per_token": (B, ΣN_m), "drop_whole": (B, M), "failed": (B, ΣN_m), "timeline": (B, M, T)}``:
    the per-token mask with failed tokens absent, the whole mask with any failing sensor dropped
    (each keeping at least one token / sensor of the data's), which tokens failed (for
    ``as_data``), and when each sensor failed inside its clip (on the grid of
    :func:`grid_step` for ``mean_burst`` and the largest ``rate``). ``data_tokens`` ``(B, ΣN_m)``:
    the data's own per-token presence, if it has one."""
    present = present.bool()
    b, m = present.shape
    failed, inside = failure_timelines(b, m, durations, rate, mean_burst, generator)
    shares = token_working(failed, inside, counts, whole_clip)
    tokens_present = presence.per_token(present, counts)
    if data_tokens is not None:  # the data's own per-token presence: a token it lacks never returns
        tokens_present = tokens_present & data_tokens.bool()
    share = torch.cat(shares, 1).masked_fill(~tokens_present, -1.0)
    ok = share >= HALF
    rescue = torch.zeros_like(ok).scatter_(1, share.argmax(1, keepdim=True), True) & tokens_present
    start = 0
    for n, clip in zip(counts, whole_clip):  # a whole-clip summary's tokens (one per view) come back together
        if clip:
            rescue[:, start : start + n] = rescue[:, start : start + n].any(1, keepdim=True) & tokens_present[
                :, start : start + n]  # fmt: skip
        start += n
    per_token = torch.where(ok.any(1, keepdim=True), ok, rescue)
    any_failure = (failed & inside[:, None]).any(2)
    kept = present & ~any_failure
    # the sensor that worked longest (of the present ones) survives when every one had a failure
    worked = ((~failed & inside[:, None]).sum(2).double() + 1.0).masked_fill(~present, -1.0)
    best = torch.zeros_like(kept).scatter_(1, worked.argmax(1, keepdim=True), True)
    drop_whole = torch.where(kept.any(1, keepdim=True), kept, best & present)
    timeline = failed & inside[:, None]
    return {"per_token": per_token, "drop_whole": drop_whole, "failed": tokens_present & ~ok, "timeline": timeline}


def failed_as_data(tokens: list[torch.Tensor], failed: torch.Tensor, counts: Sequence[int],
                   fill: Sequence[str]) -> list[torch.Tensor]:  # fmt: skip
    """The stored tokens with the failed ones replaced by what a failed sensor feeds a naive system:
    ``fill[m]`` ``"zero"`` (black frames, silence: zeros in the stored values), ``"hold"`` (the
    last working token's values held, as a stalled driver repeats its last reading; zeros before
    any) or ``"keep"`` (unchanged: a token summarising the whole clip, whose failure stored
    features cannot show)."""
    out = []
    for x, mk, how in zip(tokens, torch.split(failed, list(counts), dim=1), fill):
        if how == "keep" or not mk.any():
            out.append(x)
            continue
        if how == "zero":
            out.append(torch.where(mk[..., None], torch.zeros((), dtype=x.dtype), x))
            continue
        held = x.clone()
        for k in range(x.shape[1]):
            prev = held[:, k - 1] if k else torch.zeros_like(x[:, 0])
            held[:, k] = torch.where(mk[:, k, None], prev, x[:, k])
        out.append(held)
    return out


def clip_seconds(durations: Any, rows: Any, default: float) -> torch.Tensor:
    """The clips' durations ``(B,)`` in seconds (``default`` where the data records none)."""
    if durations is None:
        return torch.full((len(rows),), float(default), dtype=torch.float64)
    d = torch.as_tensor(durations[rows], dtype=torch.float64)
    return torch.where(torch.isfinite(d) & (d > 0), d, torch.full_like(d, float(default)))


def train_bursts(data: Any, rows: Any, mask: torch.Tensor, cfg: Any, generator: torch.Generator) -> torch.Tensor:
    """Training's ``burst`` modality dropout: the whole-modality ``mask`` (B, M) of dataset rows
    ``rows`` with the tokens of a draw of failures absent -> ``(B, ΣN_m)``, at rate ``burst_rate``
    (or each clip's own, uniform in ``[burst_rate, burst_rate_max]``), for a share ``burst_share``
    of the clips (the others keep ``mask``). ``data``: a feature set
    (its first part's ``durations``, ``clip_tokens`` and ``token_present`` are read); ``cfg``: the
    ``modality_dropout`` config."""
    part = data.parts()[0]
    counts = [s.num_tokens for s in part.specs]
    whole_clip = [s.name in part.clip_tokens for s in part.specs]
    tokens = None if part.token_present is None else torch.from_numpy(part.token_present[rows])
    seconds = clip_seconds(part.durations, rows, cfg.clip_seconds)
    rate: float | torch.Tensor = cfg.burst_rate
    if cfg.burst_rate_max > cfg.burst_rate:  # each clip's rate drawn in [burst_rate, burst_rate_max]
        rate = cfg.burst_rate + (cfg.burst_rate_max - cfg.burst_rate) * torch.rand(
            len(mask), generator=generator, dtype=torch.float64)  # fmt: skip
    if cfg.burst_share < 1.0:  # the other clips keep their whole-modality mask
        given = torch.rand(len(mask), generator=generator, dtype=torch.float64) < cfg.burst_share
        rate = torch.where(given, torch.as_tensor(rate, dtype=torch.float64), torch.zeros((), dtype=torch.float64))
    views = burst_views(mask, counts, whole_clip, seconds, rate, cfg.burst_seconds, generator, tokens)
    return views["per_token"]
