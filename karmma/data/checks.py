"""Checks and statistics over a whole split: samples and labels present
(:func:`require_samples`), feature values (:func:`validate_features`), a model fitting a store
(:func:`check_fits`) and the input standardisation's statistics (:func:`feature_stats`).
Also importable from :mod:`karmma.data.dataset`, their home before 0.2."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from karmma.data.checksums import unwritten_rows
from karmma.data.store_values import MAX_ABS_FEATURE, invalid_rows
from karmma.errors import DataError
from karmma.modalities import ModalitySpec

if TYPE_CHECKING:
    from karmma.data.dataset import FeatureSet, PairedFeatureSet


def require_samples(data: FeatureSet | PairedFeatureSet, role: str) -> None:
    """Refuse an empty split: training on it would write an untrained model, metrics on it are NaN."""
    if len(data) == 0:
        raise DataError(
            f"{data.parts()[0].source}: the {role} split has no samples; extract or point to a store with samples"
        )
    unlabelled = [p.source for p in data.parts() if not p.labelled]
    if unlabelled and role != "prediction":
        raise DataError(
            f"{unlabelled[0]}: has no labels (e.g. the EPIC-KITCHENS-100 test split); it cannot be used for {role} — "
            "use it with `karmma submit`"
        )


def validate_features(data: FeatureSet, role: str, chunk: int = 1024) -> None:
    """Read every present feature once and refuse NaN/Inf or absurd magnitudes, naming the
    samples — before training starts, not an epoch into it. Done once per set and process."""
    if data.values_checked:
        return
    for m, s in enumerate(data.specs):
        for start in range(0, len(data), chunk):
            idx = np.arange(start, min(len(data), start + chunk))
            idx = idx[data.present[idx, m]]
            if not len(idx):
                continue
            x = data._read(s.name, idx, keep_dtype=True)
            nonfinite, big = invalid_rows(x)
            for bad, what in ((nonfinite, "NaN/Inf values"), (big, f"values beyond ±{MAX_ABS_FEATURE:g}")):
                if bad.any():
                    raise DataError(
                        f"{data.source}: {role} split, modality {s.name!r} of sample(s) "
                        f"{[data.ids[i] for i in idx[bad][:5]]} holds {what}; re-extract those samples "
                        "or mark the modality absent"
                    )
            # a store's rows marked done but never written (a full disk); data built in memory has no such rows
            lost = unwritten_rows(x, data.checksums[idx, m]) if data.checksums is not None else idx[:0]
            if lost.any():  # marked done by an extraction whose disk filled: never on disk
                raise DataError(f"{data.source}: {role} split, modality {s.name!r} of sample(s) "
                                f"{[data.ids[i] for i in idx[lost][:5]]} is marked written but holds no features "
                                "(all zeros, not what was written); re-extract the store with "
                                "`karmma extract ... --no-resume`")  # fmt: skip
    data.values_checked = True


def check_fits(
    specs: Sequence[ModalitySpec],
    tasks: Mapping[str, int],
    class_names: Mapping[str, list[str]],
    data: FeatureSet,
    model_where: str,
) -> None:
    """Refuse data a model was not built for: other modalities, shapes, tasks or classes."""
    fix = "evaluate on a store extracted for this model (same modalities, extractor and class list)"
    if [x.name for x in specs] != data.modality_names:
        raise DataError(
            f"{data.source}: modalities {data.modality_names}, but {model_where} takes {[x.name for x in specs]}; {fix}"
        )
    for a, b in zip(specs, data.specs):
        if a.shape != b.shape:
            raise DataError(
                f"{data.source}: modality {a.name!r} has tokens of shape {b.shape}, but "
                f"{model_where} takes {a.shape} (num_tokens, dim); {fix}"
            )
    if dict(tasks) != dict(data.tasks):
        raise DataError(
            f"{data.source}: tasks/classes {dict(data.tasks)}, but {model_where} predicts {dict(tasks)}; {fix}"
        )
    for task, names in class_names.items():
        other = data.class_names.get(task)
        if names and other and list(names) != list(other):
            diff = next(i for i, (x, y) in enumerate(zip(names, other)) if x != y)
            raise DataError(
                f"{data.source}: class {diff} of task {task!r} is {other[diff]!r}, but "
                f"{model_where} calls it {names[diff]!r}; {fix}"
            )


def feature_stats(data: FeatureSet, chunk: int = 1024) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-modality, per-feature mean and std over the present samples' tokens (their present
    tokens only, when a modality is present for part of a clip)."""
    means, stds = [], []
    offsets = np.cumsum([0] + [s.num_tokens for s in data.specs])
    for m, s in enumerate(data.specs):
        total = np.zeros(s.dim)
        sq = np.zeros(s.dim)
        count = 0
        for start in range(0, len(data), chunk):
            idx = np.arange(start, min(len(data), start + chunk))
            idx = idx[data.present[idx, m]]
            if len(idx) == 0:
                continue
            x = data._read(s.name, idx).astype(np.float64)
            if data.token_present is not None:  # only the tokens that hold data
                x = x[data.token_present[idx][:, offsets[m] : offsets[m + 1]]]
            x = x.reshape(-1, s.dim)
            total += x.sum(0)
            sq += np.square(x).sum(0)
            count += len(x)
        mean = total / max(count, 1)
        std = np.sqrt(np.maximum(sq / max(count, 1) - mean**2, 0.0))
        means.append(torch.tensor(mean, dtype=torch.float32))
        stds.append(torch.tensor(np.where(std > 1e-6, std, 1.0), dtype=torch.float32))
    return means, stds
