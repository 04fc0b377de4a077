"""One sample's tokens given as a ``{modality: (num_tokens, dim)}`` mapping (what ``karmma predict``
takes), as numpy arrays: a batch of one, a presence mask, and per-token presence where a modality
holds data for part of the clip. No torch: a torch-free deployment uses it as it is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from karmma.errors import DataError
from karmma.modalities import ModalitySpec


def sample_tokens(
    specs: Sequence[ModalitySpec], sample: Mapping[str, np.ndarray], source: str
) -> tuple[list[np.ndarray], np.ndarray]:
    """One sample's available modalities as a batch of one: ``[(1, N, D)]`` float32 (zeros where
    absent) and ``(1, M)`` bool. :class:`DataError` on unknown modalities, wrong shapes, NaN/Inf or
    an empty set."""
    names = [s.name for s in specs]
    unknown = sorted(set(sample) - set(names))
    if unknown:
        raise DataError(f"{source}: unknown modality {unknown}; this model takes {names}")
    if not sample:
        raise DataError(f"{source}: no modality given; supply at least one of {names}")
    tokens, present = [], []
    for s in specs:
        if s.name in sample:
            x = np.asarray(sample[s.name], dtype=np.float32)
            if x.shape != s.shape:
                raise DataError(
                    f"{source}: modality {s.name!r} has shape {x.shape}, expected {s.shape} "
                    "(num_tokens, dim); extract it with the extractor this model was trained on"
                )
            if not np.isfinite(x).all():
                raise DataError(f"{source}: modality {s.name!r} holds NaN/Inf values")
            tokens.append(x[None])
            present.append(True)
        else:
            tokens.append(np.zeros((1, *s.shape), np.float32))
            present.append(False)
    return tokens, np.array([present])


def token_mask(
    specs: Sequence[ModalitySpec], present: np.ndarray, valid: Mapping[str, np.ndarray], source: str
) -> tuple[np.ndarray, dict[str, float]]:
    """``present`` (1, M) with ``valid`` ``{modality: (num_tokens,) bool}`` (which tokens hold data)
    -> the mask (per token, ``(1, ΣN_m)``, when a modality is present for part of the clip) and each
    such modality's share of present tokens."""
    present = np.asarray(present, bool)
    if not valid:
        return present, {}
    rows, coverage = [], {}
    for m, s in enumerate(specs):
        row = np.full((s.num_tokens,), bool(present[0, m]))
        if s.name in valid and bool(present[0, m]):
            v = np.asarray(valid[s.name], dtype=bool)
            if v.shape != (s.num_tokens,) or not v.any():
                raise DataError(f"{source}: modality {s.name!r} marks {tuple(v.shape)} tokens valid "
                                f"(none present?); it has {s.num_tokens}")  # fmt: skip
            row = v
            if not v.all():
                coverage[s.name] = float(v.mean())
        rows.append(row)
    return (np.concatenate(rows)[None] if coverage else present), coverage


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def top_k(probs: np.ndarray, k: int, names: Sequence[str]) -> list[tuple[int, str, float]]:
    """The ``k`` most probable classes, most probable first: (id, name, probability)."""
    idx = np.argsort(-probs, kind="stable")[: min(k, len(probs))]
    return [(int(i), names[int(i)] if int(i) < len(names) else str(int(i)), float(probs[i])) for i in idx]
