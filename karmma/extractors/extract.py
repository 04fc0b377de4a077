"""``karmma extract``: read a dataset through its registered reader (:mod:`karmma.data.readers`),
run the frozen teacher- and student-sized encoders chosen by each modality's kind, and write a
resumable feature store.

Every clip is written as soon as it is done; a re-run resumes where the last one stopped. A
corrupt file stops the run with its name (``on_error="raise"``) or is recorded as an absent
modality with a warning (``on_error="absent"``): nothing is silently dropped.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path

import numpy as np

from karmma.data.readers import DatasetReader, Kind, SampleRef, get_reader
from karmma.data.store import FeatureStoreWriter
from karmma.data.store_writer import summary_path
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
    if kind.kind in ("frames", "depth"):
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
    raise DataError(f"no encoder for modality kind {kind.kind!r}; kinds: frames, depth, flow, signal, skeleton")


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
    from karmma.extractors.motion_maps import DepthMotionMaps

    variant, resolution = BACKBONES[size]
    if kind.kind == "depth":  # depth motion maps for the model's trainable motion_map_cnn
        return DepthMotionMaps()
    if kind.kind == "frames":
        return BackboneFrames(NUM_TOKENS, variant, resolution)
    if kind.kind == "flow":
        return BackboneFlow(NUM_TOKENS, variant, resolution)
    if kind.kind in ("signal", "skeleton"):
        return Resampled(SIGNAL_STEPS, kind.channels, velocity=kind.kind == "skeleton")
    raise DataError(f"no encoder for modality kind {kind.kind!r}; kinds: frames, depth, flow, signal, skeleton")


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
    why = getattr(raw, "absent", {})
    absent = {m: why.get(m, "not in the sample") for m in modalities if m not in raw}
    return feats, [m in raw for m in modalities], absent


def write_summary(out: Path, ids: list[str], modalities: tuple[str, ...], reasons: dict[str, dict[str, list[str]]],
                  tried: list[str], unwritten: list[str]) -> dict:  # fmt: skip
    """``<store>.summary.json``: per modality, how many samples lack it and why (with up to 20 ids
    per reason), and the samples left out because nothing could be read. A resumed run adds to
    the reasons of the runs before it."""
    path = summary_path(out)
    old = json.loads(path.read_text()) if path.is_file() else {}
    absent = old.get("absent", {})
    for m, by_reason in reasons.items():
        for why, these in by_reason.items():
            slot = absent.setdefault(m, {}).setdefault(why, {"count": 0, "examples": []})
            slot["count"] += len(these)
            slot["examples"] = (slot["examples"] + these)[:20]
    summary = {"samples": len(ids), "modalities": list(modalities), "absent": absent,
               "not_written": sorted(set(old.get("not_written", [])) - set(tried) | set(unwritten))}  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)
    return summary


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
    on_error: str | None = None,
    limit: int | None = None,
    workers: int = 1,
    dtype: str = "float32",
    options: dict | None = None,
) -> Path:
    """Extract ``dataset`` under ``root`` into the store ``out`` (see the module docstring).
    ``options`` go to the reader (e.g. ``annotations``); ``on_error=None`` takes the reader's
    default. Absent modalities are counted, with their reasons, in ``<out>.summary.json``."""
    root, out = Path(root), Path(out)
    reader = get_reader(dataset, **(options or {}))
    on_error = on_error or reader.on_error
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
    extra = {**reader.extra, "encoder": encoder, "reader": dataset}
    writer = FeatureStoreWriter(out, ids, labels, tasks, encoder_specs(encoders, modalities), class_names,
                                extra=extra, resume=resume, dtype=dtype)  # fmt: skip
    try:
        todo = [i for i, d in enumerate(writer.done) if not d]
        job = functools.partial(_job, reader=reader, modalities=modalities, on_error=on_error, encoders=encoders)
        bar = progress_bar(len(ids), f"extract {dataset}", progress, initial=len(ids) - len(todo), unit="clip")
        pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
        results = pool.imap(job, [refs[i] for i in todo], chunksize=4) if pool else map(job, [refs[i] for i in todo])
        reasons: dict[str, dict[str, list[str]]] = {}
        unwritten: list[str] = []
        try:
            for i, (feats, present, why) in zip(todo, results):
                for m, reason in why.items():
                    reasons.setdefault(m, {}).setdefault(reason, []).append(ids[i])
                bar.update(1)
                if not any(present):
                    if on_error == "raise":
                        raise DataError(f"clip {ids[i]} of {root}: no modality could be read ({why}); "
                                        "remove it from the split or fix its files")  # fmt: skip
                    unwritten.append(ids[i])  # left undone: a store sample needs a modality; listed below
                    continue
                writer.write(i, feats, present)  # buffered: written a storage chunk at a time
        finally:
            if pool:
                pool.terminate()
            bar.close()
            summary = write_summary(out, ids, modalities, reasons, [ids[i] for i in todo], unwritten)
    finally:
        writer.close()
    for m, by_reason in summary["absent"].items():
        log.warning("%s: %s absent for %d sample(s): %s", out, m, sum(r["count"] for r in by_reason.values()),
                    "; ".join(f"{k} ({v['count']})" for k, v in by_reason.items()))  # fmt: skip
    if summary["not_written"]:
        log.warning("%s: %d sample(s) had no readable modality and were not written (listed in %s)", out,
                    len(summary["not_written"]), summary_path(out))  # fmt: skip
    return out
