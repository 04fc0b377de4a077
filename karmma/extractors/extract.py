"""``karmma extract``: decode media, compute optical flow, run the frozen teacher- and
student-sized encoders, and write a resumable feature store.

Datasets:

* ``utd_mhad`` — the .mat release: depth (~RGB), optical flow computed on depth (~optical flow),
  inertial (~audio), optionally skeleton.
* ``video`` — a folder with ``labels.csv`` (columns ``id,label`` and optional ``video``, ``audio``
  file names): rgb frames, optical flow on them, and audio (log spectrogram) where a WAV exists.

Every clip is written as soon as it is done; a re-run resumes where the last one stopped. A
corrupt file stops the run with its name (``on_error="raise"``) or is recorded as an absent
modality with a warning (``on_error="absent"``): nothing is silently dropped.
"""

from __future__ import annotations

import csv
import functools
import logging
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import scipy.signal

from karmma.data.store import FeatureStoreWriter
from karmma.data.utd_mhad import ACTIONS, HIP_CENTER, Clip, list_clips, load_modality
from karmma.errors import DataError
from karmma.extractors.encoders import SIZES, CNNEncoder, PoolFrames, PoolSignal, WithVelocity, encoder_path
from karmma.extractors.flow import flow_with_magnitude, to_uint8
from karmma.extractors.media import read_video, read_wav
from karmma.modalities import ModalitySpec
from karmma.progress import progress_bar

log = logging.getLogger(__name__)

NUM_TOKENS = 8
UTD_MODALITIES = ("depth", "flow", "inertial")
DEPTH_SIZE = (60, 80)  # depth frames are resized to this (H, W) before pooling and flow
DEPTH_SCALE = 4000.0  # mm -> roughly [0, 1]
GYRO_SCALE = 200.0  # deg/s -> roughly [-1, 1]

Encoder = Callable[[np.ndarray], np.ndarray]


def pool_encoders(modalities: tuple[str, ...]) -> dict[str, dict[str, Encoder]]:
    """Parameter-free teacher (fine grid, rich statistics) and student (coarse) encoders."""
    table = {
        "depth": (PoolFrames(NUM_TOKENS, (8, 8), 1), PoolFrames(NUM_TOKENS, (4, 4), 1)),
        "rgb": (PoolFrames(NUM_TOKENS, (8, 8), 3), PoolFrames(NUM_TOKENS, (4, 4), 3)),
        "flow": (PoolFrames(NUM_TOKENS, (6, 8), 3, motion=False), PoolFrames(NUM_TOKENS, (3, 4), 3, motion=False)),
        "inertial": (PoolSignal(NUM_TOKENS, 6, rich=True), PoolSignal(NUM_TOKENS, 6, rich=False)),
        "skeleton": (WithVelocity(PoolSignal(NUM_TOKENS, 120, rich=False)), PoolSignal(NUM_TOKENS, 60, rich=False)),
        "audio": (PoolSignal(NUM_TOKENS, 32, rich=True), PoolSignal(NUM_TOKENS, 32, rich=False)),
    }
    return {size: {m: table[m][i] for m in modalities} for i, size in enumerate(SIZES)}


def cnn_encoders(modalities: tuple[str, ...], weights: str | Path | None) -> dict[str, dict[str, Encoder]]:
    if not weights:
        raise DataError("--encoder cnn needs --weights DIR holding {modality}_{teacher,student}.safetensors")
    out = {size: {m: CNNEncoder.from_pretrained(encoder_path(weights, m, size)) for m in modalities} for size in SIZES}
    if "skeleton" in out["teacher"]:  # as in pool_encoders: the teacher also sees joint velocities
        out["teacher"]["skeleton"] = WithVelocity(out["teacher"]["skeleton"])
    return out


def encoder_specs(
    encoders: dict[str, dict[str, Encoder]], modalities: tuple[str, ...]
) -> dict[str, list[ModalitySpec]]:
    return {size: [ModalitySpec(m, NUM_TOKENS, encoders[size][m].dim) for m in modalities] for size in SIZES}


def _or_absent(read: Callable[[], np.ndarray], on_error: str, what: str) -> np.ndarray | None:
    """``read()``, or None (logged) when it raises :class:`DataError` and ``on_error="absent"``."""
    try:
        return read()
    except DataError as e:
        if on_error == "raise":
            raise
        log.warning("%s; recording %s as absent", e, what)
        return None


# --------------------------------------------------------------------------- UTD-MHAD


def utd_raw(clip: Clip, modalities: tuple[str, ...], on_error: str) -> dict[str, np.ndarray]:
    """Decoded, scaled raw inputs of one clip; a modality absent (or corrupt, with
    ``on_error="absent"``) is simply not in the result."""
    out: dict[str, np.ndarray] = {}

    def load(name: str) -> np.ndarray | None:
        if name not in clip.files:
            return None
        return _or_absent(lambda: load_modality(clip.files[name], name), on_error, f"{name} of {clip.id}")

    if "depth" in modalities or "flow" in modalities:
        depth = load("depth")
        if depth is not None:
            h, w = DEPTH_SIZE
            frames = np.stack([cv2.resize(depth[:, :, t].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
                               for t in range(depth.shape[2])])  # fmt: skip
            if "depth" in modalities:
                out["depth"] = frames / DEPTH_SCALE
            if "flow" in modalities:
                out["flow"] = flow_with_magnitude(to_uint8(frames), scale=2.0)
    if "inertial" in modalities:
        x = load("inertial")
        if x is not None:
            out["inertial"] = np.concatenate([x[:, :3], x[:, 3:] / GYRO_SCALE], axis=1).astype(np.float32)
    if "skeleton" in modalities:
        s = load("skeleton")
        if s is not None:
            pos = (s - s[HIP_CENTER : HIP_CENTER + 1]).transpose(2, 0, 1).reshape(s.shape[2], -1)
            out["skeleton"] = pos.astype(np.float32)
    return out


def _encode(raw: dict[str, np.ndarray], encoders: dict[str, dict[str, Encoder]], modalities: tuple[str, ...]):
    feats: dict[str, dict[str, np.ndarray]] = {size: {} for size in SIZES}
    for m in modalities:
        if m not in raw:
            continue
        for size in SIZES:
            feats[size][m] = encoders[size][m](raw[m])
    return feats, [m in raw for m in modalities]


def _utd_job(clip: Clip, modalities: tuple[str, ...], on_error: str, encoders: dict[str, dict[str, Encoder]]):
    return _encode(utd_raw(clip, modalities, on_error), encoders, modalities)


# --------------------------------------------------------------------------- generic video folder


def audio_features(path: Path, bins: int = 32) -> np.ndarray:
    """(T, bins) log-magnitude spectrogram, mean over channels."""
    x, rate = read_wav(path)
    _, _, z = scipy.signal.stft(x.mean(1), fs=rate, nperseg=512, noverlap=256)
    spec = np.log1p(np.abs(z))
    edges = np.linspace(0, spec.shape[0], bins + 1).astype(int)
    return np.stack([spec[a : max(a + 1, b)].mean(0) for a, b in zip(edges[:-1], edges[1:])], axis=1).astype(np.float32)


def _video_job(
    row: dict, root: Path, modalities: tuple[str, ...], on_error: str, encoders: dict[str, dict[str, Encoder]]
):
    raw: dict[str, np.ndarray] = {}
    if row.get("video") and ("rgb" in modalities or "flow" in modalities):
        frames = _or_absent(
            lambda: read_video(root / row["video"], size=(64, 64)), on_error, f"the video of {row['id']}"
        )
        if frames is not None and "rgb" in modalities:
            raw["rgb"] = frames.astype(np.float32) / 255.0
        if frames is not None and "flow" in modalities:
            raw["flow"] = flow_with_magnitude(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]))
    if row.get("audio") and "audio" in modalities:
        audio = _or_absent(lambda: audio_features(root / row["audio"]), on_error, f"the audio of {row['id']}")
        if audio is not None:
            raw["audio"] = audio
    return _encode(raw, encoders, modalities)


def read_video_labels(root: Path) -> tuple[list[dict], list[str]]:
    path = root / "labels.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: a video folder needs labels.csv with columns id,label[,video][,audio]")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "id" not in rows[0] or "label" not in rows[0]:
        raise DataError(f"{path}: needs a header with at least the columns id and label")
    classes = sorted({r["label"] for r in rows})
    return rows, classes


# --------------------------------------------------------------------------- driver


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
) -> Path:
    root = Path(root)
    if dataset == "utd_mhad":
        modalities = tuple(modalities or UTD_MODALITIES)
        clips = list_clips(root, split)[:limit]
        ids = [c.id for c in clips]
        labels = {"action": [c.action for c in clips]}
        tasks, class_names = {"action": len(ACTIONS)}, {"action": ACTIONS}
        extra = {"dataset": "utd_mhad", "split": split, "subjects": sorted({c.subject for c in clips})}
        job, items = _utd_job, clips
        job_args: dict = {}
    elif dataset == "video":
        modalities = tuple(modalities or ("rgb", "flow", "audio"))
        rows, classes = read_video_labels(root)
        rows = rows[:limit]
        ids = [r["id"] for r in rows]
        labels = {"action": [classes.index(r["label"]) for r in rows]}
        tasks, class_names = {"action": len(classes)}, {"action": classes}
        extra = {"dataset": "video"}
        job, items = _video_job, rows
        job_args = {"root": root}
    else:
        raise DataError(f"unknown dataset {dataset!r}; use utd_mhad or video")
    encoders = pool_encoders(modalities) if encoder == "pool" else cnn_encoders(modalities, weights)
    writer = FeatureStoreWriter(out, ids, labels, tasks, encoder_specs(encoders, modalities), class_names,
                                extra={**extra, "encoder": encoder}, resume=resume)  # fmt: skip
    try:
        todo = [i for i, d in enumerate(writer.done) if not d]
        job = functools.partial(job, **job_args, modalities=modalities, on_error=on_error, encoders=encoders)
        args = [items[i] for i in todo]
        bar = progress_bar(len(ids), f"extract {dataset}", progress, initial=len(ids) - len(todo), unit="clip")
        pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
        results = pool.imap(job, args, chunksize=4) if pool else map(job, args)
        try:
            for n, (i, (feats, present)) in enumerate(zip(todo, results)):
                if not any(present):
                    raise DataError(
                        f"clip {ids[i]} of {root}: no modality could be read; remove it from the split or fix its files"
                    )
                writer.write(i, feats, present)
                bar.update(1)
                if n % 50 == 49:
                    writer.flush()
        finally:
            if pool:
                pool.terminate()
            bar.close()
    finally:
        writer.close()
    return Path(out)
