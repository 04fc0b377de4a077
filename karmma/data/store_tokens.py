"""Per-token presence in a feature store: ``tokens_present/<set>`` ``(N, ΣN_m)`` bool, one flag per
stored token, modality after modality (:mod:`karmma.presence`), and ``durations`` ``(N,)``
float32, each clip's length in seconds (NaN where the reader did not know it), which maps
failures in seconds onto tokens (:mod:`karmma.bursts`).

A store written before they existed reads as all-or-nothing (each modality's tokens as its
``present`` flag) with unknown durations; resuming one adds the datasets so. A modality marked
absent has no present token, and a modality marked present at least one: a row breaking either
rule is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import h5py
import numpy as np

from karmma.errors import DataError
from karmma.modalities import ModalitySpec


def key(feature_set: str) -> str:
    return f"tokens_present/{feature_set}"


def counts(specs: Sequence[ModalitySpec]) -> list[int]:
    return [s.num_tokens for s in specs]


def expand(present: np.ndarray, specs: Sequence[ModalitySpec]) -> np.ndarray:
    """A whole mask ``(N, M)`` (or one sample's ``(M,)``) as per-token flags ``(N, ΣN_m)``."""
    present = np.asarray(present, dtype=bool)
    return np.repeat(present, counts(specs), axis=-1)


def whole(tokens: np.ndarray, specs: Sequence[ModalitySpec]) -> np.ndarray:
    """``(N, ΣN_m)`` -> ``(N, M)``: a modality is present when any of its tokens is."""
    edges = np.cumsum([0, *counts(specs)])
    return np.stack([tokens[:, a:b].any(1) for a, b in zip(edges[:-1], edges[1:])], axis=1)


def is_whole(tokens: np.ndarray, present: np.ndarray, specs: Sequence[ModalitySpec]) -> bool:
    """True when the per-token flags say no more than ``present`` (every modality all or nothing)."""
    return bool(np.array_equal(tokens, expand(present, specs)))


def restrict(tokens: np.ndarray, present: np.ndarray, specs: Sequence[ModalitySpec]) -> tuple[np.ndarray, np.ndarray]:
    """``tokens`` ``(N, ΣN_m)`` restricted to the present modalities (an absent one has no present
    token), and the rows whose present modality has no present token (to be refused)."""
    tokens = np.asarray(tokens, bool) & expand(present, specs)
    return tokens, np.flatnonzero((whole(tokens, specs) != present).any(1))


def sample_row(
    present: np.ndarray, specs: Sequence[ModalitySpec], tokens: Mapping[str, np.ndarray] | None, where: str
) -> np.ndarray:
    """One sample's ``(ΣN_m,)`` flags: ``tokens[modality]`` ``(N_m,)`` where given (present
    modalities only), all of a present modality's tokens otherwise."""
    row = expand(present, specs)
    if not tokens:
        return row
    start = 0
    for s, p in zip(specs, present):
        mask = tokens.get(s.name)
        if mask is not None and p:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (s.num_tokens,):
                raise DataError(f"{where}: modality {s.name!r} has a token mask of shape {mask.shape}, "
                                f"expected ({s.num_tokens},)")  # fmt: skip
            if not mask.any():
                raise DataError(f"{where}: modality {s.name!r} is marked present with no present token; "
                                "mark it absent instead")  # fmt: skip
            row[start : start + s.num_tokens] = mask
        start += s.num_tokens
    return row


DURATIONS = "durations"


def names(feature_sets: Mapping[str, Sequence[ModalitySpec]]) -> list[str]:
    """The datasets this module writes."""
    return [key(fs) for fs in feature_sets] + [DURATIONS]


def create(h5: h5py.File, feature_sets: Mapping[str, Sequence[ModalitySpec]], n: int, chunk: int) -> None:
    for fs, specs in feature_sets.items():
        h5.create_dataset(key(fs), shape=(n, sum(counts(specs))), dtype=bool, chunks=(chunk, sum(counts(specs))))
    h5.create_dataset(DURATIONS, shape=(n,), dtype=np.float32, chunks=(chunk,), fillvalue=np.nan)


def upgrade(h5: h5py.File, feature_sets: Mapping[str, Sequence[ModalitySpec]], n: int, chunk: int) -> None:
    """Add the datasets to a store written before them: each present modality's tokens all
    present, durations unknown."""
    present = h5["present"][:]
    for fs, specs in feature_sets.items():
        if key(fs) not in h5:
            h5.create_dataset(key(fs), data=expand(present, specs), chunks=(chunk, sum(counts(specs))))
    if DURATIONS not in h5:
        h5.create_dataset(DURATIONS, shape=(n,), dtype=np.float32, chunks=(chunk,), fillvalue=np.nan)


def write_rows(ds: Mapping, feature_sets: Mapping[str, Sequence[ModalitySpec]], a: int, items: Sequence) -> None:
    """Rows ``a``.. of the datasets from the writer's pending samples (``present``, ``tokens``
    ``{set: (ΣN_m,)}`` or None, ``duration``)."""
    b = a + len(items)
    for fs, specs in feature_sets.items():
        ds[key(fs)][a:b] = np.stack([it.tokens[fs] if it.tokens else expand(it.present, specs) for it in items])
    ds[DURATIONS][a:b] = np.array([it.duration for it in items], np.float32)


def write_all(ds: Mapping, feature_sets: Mapping[str, Sequence[ModalitySpec]], present: np.ndarray,
              tokens: Mapping[str, np.ndarray | None] | None, durations: np.ndarray | None) -> None:  # fmt: skip
    """Every row: ``tokens[feature_set]`` ``(N, ΣN_m)`` (default: whole modalities), ``durations`` (N,)."""
    for fs, specs in feature_sets.items():
        given = (tokens or {}).get(fs)
        flags = expand(present, specs) if given is None else np.asarray(given, bool)
        if flags.shape != (len(present), sum(counts(specs))):
            raise DataError(f"per-token presence of {fs!r} has shape {flags.shape}, expected "
                            f"{(len(present), sum(counts(specs)))}")  # fmt: skip
        flags, lost = restrict(flags, present, specs)
        if len(lost):
            raise DataError(f"{fs!r}: row(s) {lost[:5].tolist()} have a modality marked present with no present "
                            "token; mark it absent")  # fmt: skip
        ds[key(fs)][:] = flags
    if durations is not None:
        ds[DURATIONS][:] = np.asarray(durations, np.float32)


def read_durations(h5: h5py.File, n: int, path: object) -> np.ndarray | None:
    """The clips' durations (NaN: unknown), or None when the store records none."""
    if DURATIONS not in h5:
        return None
    d = h5[DURATIONS][:]
    if d.shape != (n,) or d.dtype.kind != "f":
        raise DataError(f"{path}: dataset {DURATIONS!r} has shape {d.shape}, expected ({n},); the store is corrupt")
    d = d.astype(np.float32)
    d[~(np.isfinite(d) & (d > 0))] = np.nan
    return None if np.isnan(d).all() else d


def read(h5: h5py.File, feature_set: str, present: np.ndarray, specs: Sequence[ModalitySpec], path: object,
         ids: Sequence[str]) -> np.ndarray | None:  # fmt: skip
    """The stored flags ``(N, ΣN_m)``, checked against ``present``; None where they say nothing more
    (a store written before them, or every modality of every sample all or nothing)."""
    if key(feature_set) not in h5:
        return None
    tokens = h5[key(feature_set)][:]
    if tokens.shape != (len(present), sum(counts(specs))) or tokens.dtype != np.bool_:
        raise DataError(f"{path}: dataset {key(feature_set)!r} has shape {tokens.shape} ({tokens.dtype}), expected "
                        f"{(len(present), sum(counts(specs)))} bool; the store is corrupt — re-extract it")  # fmt: skip
    tokens, lost = restrict(tokens, present, specs)
    if len(lost):
        raise DataError(f"{path}: sample(s) {[ids[i] for i in lost[:5]]} have a modality marked present with no "
                        "present token; the store is corrupt — re-extract it")  # fmt: skip
    return None if is_whole(tokens, present, specs) else tokens


def clip_tokens(meta: Mapping, names: Sequence[str]) -> tuple[str, ...]:
    """The modalities whose every token summarises the whole clip (``extra["clip_tokens"]``, which
    extraction records); for a store written before it, depth encoded as depth motion maps."""
    extra = meta.get("extra", {}) if isinstance(meta.get("extra"), Mapping) else {}
    listed = extra.get("clip_tokens")
    if isinstance(listed, list):
        return tuple(n for n in names if n in listed)
    if extra.get("encoder") not in ("efficientnet", "motion_maps"):
        return ()
    from karmma.registries import READERS  # depth frames become motion maps there

    try:
        kinds = READERS.get(str(extra.get("reader"))).modalities
    except Exception:  # an unknown or broken reader: no way to tell, so time spans
        return ()
    return tuple(n for n in names if getattr(kinds.get(n), "kind", None) == "depth")
