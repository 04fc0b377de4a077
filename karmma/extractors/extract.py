"""``karmma extract``: read a dataset through its registered reader (:mod:`karmma.data.readers`),
run the frozen teacher- and student-sized encoders chosen by each modality's kind, and write a
resumable feature store.

Every clip is written as soon as it is done; a re-run resumes where the last one stopped. A
corrupt file stops the run with its name (``on_error="raise"``) or is recorded as an absent
modality with a warning (``on_error="absent"``): nothing is silently dropped.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path

import numpy as np

from karmma.data.readers import DatasetReader, Kind, SampleRef, get_reader
from karmma.data.store import FeatureStoreWriter
from karmma.errors import DataError
from karmma.extractors.encoders import SIZES, CNNEncoder, PoolFrames, PoolSignal, WithVelocity, encoder_path
from karmma.modalities import ModalitySpec
from karmma.progress import progress_bar

log = logging.getLogger(__name__)

NUM_TOKENS = 8

Encoder = Callable[[np.ndarray], np.ndarray]


def pool_encoder(kind: Kind, size: str) -> Encoder:
    """Parameter-free encoders: the teacher's see a finer grid / richer statistics."""
    teacher = size == "teacher"
    c = kind.channels
    if kind.kind == "frames":
        return PoolFrames(NUM_TOKENS, (8, 8) if teacher else (4, 4), c)
    if kind.kind == "flow":
        return PoolFrames(NUM_TOKENS, (6, 8) if teacher else (3, 4), c, motion=False)
    if kind.kind == "signal":
        return PoolSignal(NUM_TOKENS, c, rich=teacher)
    if kind.kind == "skeleton":  # the teacher also sees joint velocities
        return (
            WithVelocity(PoolSignal(NUM_TOKENS, 2 * c, rich=False))
            if teacher
            else PoolSignal(NUM_TOKENS, c, rich=False)
        )
    raise DataError(f"no encoder for modality kind {kind.kind!r}; kinds: frames, flow, signal, skeleton")


def pool_encoders(reader: DatasetReader, modalities: tuple[str, ...]) -> dict[str, dict[str, Encoder]]:
    return {size: {m: pool_encoder(reader.modalities[m], size) for m in modalities} for size in SIZES}


def cnn_encoders(
    reader: DatasetReader, modalities: tuple[str, ...], weights: str | Path | None
) -> dict[str, dict[str, Encoder]]:
    if not weights:
        raise DataError("--encoder cnn needs --weights DIR holding {modality}_{teacher,student}.safetensors")
    out = {size: {m: CNNEncoder.from_pretrained(encoder_path(weights, m, size)) for m in modalities} for size in SIZES}
    for m in modalities:  # as with the pool encoders: a teacher also sees skeleton velocities
        if reader.modalities[m].kind == "skeleton":
            out["teacher"][m] = WithVelocity(out["teacher"][m])
    return out


def backbone_encoder(kind: Kind, size: str) -> Encoder:
    """Frozen ImageNet backbones for images (EfficientNet-Lite2 teacher, Lite0 student); raw
    resampled signals for the model's trainable 1-D encoders."""
    from karmma.extractors.backbone import BACKBONES, SIGNAL_STEPS, BackboneFlow, BackboneFrames, Resampled

    variant, resolution = BACKBONES[size]
    if kind.kind == "frames":
        return BackboneFrames(NUM_TOKENS, variant, resolution)
    if kind.kind == "flow":
        return BackboneFlow(NUM_TOKENS, variant, resolution)
    if kind.kind in ("signal", "skeleton"):
        return Resampled(SIGNAL_STEPS, kind.channels, velocity=kind.kind == "skeleton")
    raise DataError(f"no encoder for modality kind {kind.kind!r}; kinds: frames, flow, signal, skeleton")


ENCODER_FAMILIES = ("pool", "efficientnet", "cnn")


def encoder_specs(
    encoders: dict[str, dict[str, Encoder]], modalities: tuple[str, ...]
) -> dict[str, list[ModalitySpec]]:
    return {
        size: [
            ModalitySpec(m, getattr(encoders[size][m], "num_tokens", NUM_TOKENS), encoders[size][m].dim)
            for m in modalities
        ]  # fmt: skip
        for size in SIZES
    }


def _job(ref: SampleRef, reader: DatasetReader, modalities: tuple[str, ...], on_error: str, encoders):
    raw = reader.load(ref, modalities, on_error)
    feats: dict[str, dict[str, np.ndarray]] = {size: {} for size in SIZES}
    for m in modalities:
        if m in raw:
            for size in SIZES:
                feats[size][m] = encoders[size][m](raw[m])
    return feats, [m in raw for m in modalities]


def run_extract(
    dataset: str,
    root: str | Path,
    out: str | Path,
    split: str = "all",
    encoder: str = "pool",
    weights: str | Path | None = None,
    modalities: tuple[str, ...] | None = None,
    resume: bool = True,
    progress: bool = False,
    on_error: str = "raise",
    limit: int | None = None,
    workers: int = 1,
    dtype: str = "float32",
) -> Path:
    root = Path(root)
    reader = get_reader(dataset)
    modalities = tuple(modalities or reader.default_modalities)
    unknown = [m for m in modalities if m not in reader.modalities]
    if unknown:
        raise DataError(f"{dataset} has no modality {unknown}; it has {sorted(reader.modalities)}")
    refs = reader.samples(root, split)[:limit]
    ids = [r.id for r in refs]
    tasks, class_names = reader.tasks(refs)
    labels = {t: [r.labels[t] for r in refs] for t in tasks}
    if encoder == "pool":
        encoders = pool_encoders(reader, modalities)
    elif encoder == "efficientnet":
        encoders = {size: {m: backbone_encoder(reader.modalities[m], size) for m in modalities} for size in SIZES}
    elif encoder == "cnn":
        encoders = cnn_encoders(reader, modalities, weights)
    else:
        raise DataError(f"unknown encoder family {encoder!r}; choose one of {ENCODER_FAMILIES}")
    extra = {**reader.extra, "encoder": encoder}
    writer = FeatureStoreWriter(out, ids, labels, tasks, encoder_specs(encoders, modalities), class_names,
                                extra=extra, resume=resume, dtype=dtype)  # fmt: skip
    try:
        todo = [i for i, d in enumerate(writer.done) if not d]
        job = functools.partial(_job, reader=reader, modalities=modalities, on_error=on_error, encoders=encoders)
        bar = progress_bar(len(ids), f"extract {dataset}", progress, initial=len(ids) - len(todo), unit="clip")
        pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
        results = pool.imap(job, [refs[i] for i in todo], chunksize=4) if pool else map(job, [refs[i] for i in todo])
        try:
            for i, (feats, present) in zip(todo, results):
                if not any(present):
                    raise DataError(
                        f"clip {ids[i]} of {root}: no modality could be read; remove it from the split or fix its files"
                    )
                writer.write(i, feats, present)  # buffered: written a storage chunk at a time
                bar.update(1)
        finally:
            if pool:
                pool.terminate()
            bar.close()
    finally:
        writer.close()
    return Path(out)
