"""A generic folder of clips: ``labels.csv`` with columns ``id,label`` and optional ``video`` and
``audio`` file names (relative to the folder). Modalities: rgb frames, optical flow on them, and
audio (a log spectrogram) where a WAV exists. Classes are the sorted distinct labels."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import scipy.signal

from karmma.data.readers import READERS, DatasetReader, Kind, SampleRef, or_absent
from karmma.errors import DataError

FRAME_SIZE = (64, 64)
AUDIO_BINS = 32


def audio_features(path: Path, bins: int = AUDIO_BINS) -> np.ndarray:
    """(T, bins) log-magnitude spectrogram, mean over channels."""
    from karmma.extractors.media import read_wav

    x, rate = read_wav(path)
    _, _, z = scipy.signal.stft(x.mean(1), fs=rate, nperseg=512, noverlap=256)
    spec = np.log1p(np.abs(z))
    edges = np.linspace(0, spec.shape[0], bins + 1).astype(int)
    return np.stack([spec[a : max(a + 1, b)].mean(0) for a, b in zip(edges[:-1], edges[1:])], axis=1).astype(np.float32)


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


@READERS.register("video")
class VideoFolderReader(DatasetReader):
    modalities = {"rgb": Kind("frames", 3), "flow": Kind("flow", 3), "audio": Kind("signal", AUDIO_BINS)}
    default_modalities = ("rgb", "flow", "audio")
    extra = {"dataset": "video"}

    def samples(self, root: Path, split: str) -> list[SampleRef]:
        if split != "all":
            raise DataError(f"a video folder has no {split!r} split; use --split all (one folder per split)")
        self.root = root
        rows, self.classes = read_video_labels(root)
        return [SampleRef(r["id"], {"action": self.classes.index(r["label"])}, None, r) for r in rows]

    def tasks(self, refs: list[SampleRef]) -> tuple[dict[str, int], dict[str, list[str]]]:
        return {"action": len(self.classes)}, {"action": self.classes}

    def load(self, ref: SampleRef, modalities: tuple[str, ...], on_error: str) -> dict[str, np.ndarray]:
        from karmma.extractors.flow import flow_with_magnitude
        from karmma.extractors.media import read_video

        row, raw = ref.source, {}
        if row.get("video") and ("rgb" in modalities or "flow" in modalities):
            frames = or_absent(
                lambda: read_video(self.root / row["video"], size=FRAME_SIZE), on_error, f"the video of {row['id']}"
            )
            if frames is not None and "rgb" in modalities:
                raw["rgb"] = frames.astype(np.float32) / 255.0
            if frames is not None and "flow" in modalities:
                raw["flow"] = flow_with_magnitude(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]))
        if row.get("audio") and "audio" in modalities:
            audio = or_absent(lambda: audio_features(self.root / row["audio"]), on_error, f"the audio of {row['id']}")
            if audio is not None:
                raw["audio"] = audio
        return raw
