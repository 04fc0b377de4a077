"""A generic folder of clips: ``labels.csv`` with columns ``id,label`` and optional ``video`` and
``audio`` file names (relative to the folder). Modalities: rgb frames, optical flow on them, and
audio (a log spectrogram) from the WAV named in ``audio`` or else the video's own audio track
(decoded with PyAV); a clip with neither has audio absent. Classes are the sorted distinct labels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import scipy.signal

from karmma.data.readers import READERS, DatasetReader, Kind, Raw, SampleRef, or_absent
from karmma.errors import DataError

FRAME_SIZE = (64, 64)
AUDIO_BINS = 32


def audio_features(path: Path, bins: int = AUDIO_BINS) -> np.ndarray:
    """(T, bins) log-magnitude spectrogram of a WAV file, mean over channels."""
    from karmma.extractors.media import read_wav

    x, rate = read_wav(path)
    return spectrogram(x.mean(1), rate, bins)


def spectrogram(x: np.ndarray, rate: int, bins: int = AUDIO_BINS) -> np.ndarray:
    """(T, bins) log-magnitude spectrogram of mono audio, averaged into ``bins`` bands."""
    _, _, z = scipy.signal.stft(x, fs=rate, nperseg=512, noverlap=256)
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


def _frames_raw(raw: Raw, frames: np.ndarray, modalities: tuple[str, ...]) -> Raw:
    """rgb (every frame, in [0, 1]) and Farneback flow of a decoded clip, as this reader stores them."""
    from karmma.extractors.flow import flow_from_rgb

    if "rgb" in modalities:
        raw["rgb"] = frames.astype(np.float32) / 255.0
    if "flow" in modalities:
        raw["flow"] = flow_from_rgb(frames)
    return raw


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

    @classmethod
    def read_clip(cls, path: Path, modalities: tuple[str, ...]) -> Raw:
        from karmma.extractors.media import AUDIO_RATE, decode_clip

        frames, audio = decode_clip(path, FRAME_SIZE, 10_000)
        raw = _frames_raw(Raw(), frames, modalities)
        if "audio" in modalities:
            if audio is None:
                raw.absent["audio"] = "no audio track"
            else:
                raw["audio"] = spectrogram(audio, AUDIO_RATE)
        return raw

    def load(self, ref: SampleRef, modalities: tuple[str, ...], on_error: str) -> dict[str, np.ndarray]:
        from karmma.extractors.media import AUDIO_RATE, read_audio, read_video

        row, raw = ref.source, Raw()
        if row.get("video") and ("rgb" in modalities or "flow" in modalities):
            frames = or_absent(
                lambda: read_video(self.root / row["video"], size=FRAME_SIZE), on_error, f"the video of {row['id']}"
            )
            if frames is not None:
                _frames_raw(raw, frames, modalities)
        if "audio" in modalities:
            if row.get("audio"):
                read = lambda: audio_features(self.root / row["audio"])  # noqa: E731
            elif row.get("video"):  # the video's own audio track; none -> absent, not an error
                read = lambda: spectrogram(read_audio(self.root / row["video"]), AUDIO_RATE)  # noqa: E731
            else:
                raw.absent["audio"] = "no audio file or video"
                return raw
            audio = or_absent(read, on_error, f"the audio of {row['id']}", raw, "audio")
            if audio is not None:
                raw["audio"] = audio
        return raw
