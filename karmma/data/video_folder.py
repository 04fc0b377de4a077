"""A generic folder of clips: ``labels.csv`` with columns ``id,label`` and optional ``video`` and
``audio`` file names (relative to the folder). Modalities: rgb frames, optical flow on them, and
audio (a log spectrogram) from the WAV named in ``audio`` or else the video's own audio track
(decoded with PyAV); a clip with neither has audio absent. Classes are the sorted distinct labels."""

from __future__ import annotations

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
    """(T, bins) log-magnitude spectrogram of mono audio, averaged into ``bins`` bands: SciPy's STFT
    (512-sample Hann window, hop 256, zero boundary and end padding), computed block by block."""
    from karmma.extractors.audio_stream import frames_of

    return frames_of(spectrogram_framing(rate, bins), [np.asarray(x, np.float32).reshape(-1)])


def spectrogram_framing(rate: int, bins: int = AUDIO_BINS, nperseg: int = 512, hop: int = 256):
    """:func:`spectrogram` as a :class:`~karmma.extractors.audio_stream.Framing`: each block is
    ``scipy.signal.stft`` of a run of the padded signal, so every frame is SciPy's own."""
    from karmma.extractors.audio_stream import Framing

    def features(run: np.ndarray) -> np.ndarray:
        _, _, z = scipy.signal.stft(run, fs=rate, nperseg=nperseg, noverlap=nperseg - hop, boundary=None, padded=True)
        spec = np.log1p(np.abs(z))
        edges = np.linspace(0, spec.shape[0], bins + 1).astype(int)
        bands = [spec[a : max(a + 1, b)].mean(0) for a, b in zip(edges[:-1], edges[1:])]
        return np.stack(bands, axis=1).astype(np.float32)

    # SciPy pads nperseg // 2 zeros at each end, then zeros up to a whole number of hops
    count = lambda n: -(-(n + nperseg // 2 * 2 - nperseg) // hop) + 1  # noqa: E731
    return Framing(hop, nperseg, 0, nperseg // 2, count, features, block=2048)  # SciPy's STFT is exact at any block


def read_video_labels(root: Path) -> tuple[list[dict], list[str]]:
    """The rows of ``labels.csv`` (distinct, non-empty ids and labels; ``video``/``audio`` names
    inside the folder: an absolute path or ``..`` is refused) and the sorted class names."""
    from karmma.data.csv_files import read_rows

    path = root / "labels.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: a video folder needs labels.csv with columns id,label[,video][,audio]")
    rows = read_rows(path, ["id", "label"], "video folder's labels.csv (columns id,label[,video][,audio])", "id")
    if not rows:
        raise DataError(f"{path}: has a header but no clip")
    for line, r in enumerate(rows, start=2):
        for col in ("video", "audio"):
            name = r.get(col) or ""
            if name and (Path(name).is_absolute() or ".." in Path(name).parts):
                raise DataError(f"{path}, line {line}: {col} {name!r} points outside the folder; name a file "
                                "inside it (relative, without '..')")  # fmt: skip
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
        from karmma.data.clips import clip_modalities
        from karmma.extractors.media import AUDIO_RATE, decode_clip

        framing = spectrogram_framing(AUDIO_RATE) if "audio" in modalities else None
        clip = decode_clip(path, FRAME_SIZE, 10_000, framing, video="rgb" in modalities or "flow" in modalities)
        return clip_modalities(clip, modalities, lambda frames: _frames_raw(Raw(), frames, modalities))

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
