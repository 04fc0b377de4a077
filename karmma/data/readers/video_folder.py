"""A generic folder of clips: ``labels.csv`` with columns ``id,label`` and optional ``video`` and
``audio`` file names (relative to the folder). Modalities: rgb frames, optical flow on them, and
audio (a log spectrogram) from the WAV named in ``audio`` or else the video's own audio track
(decoded with PyAV); a clip with neither has audio absent. Classes are the sorted distinct labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from karmma.data.clips import (  # noqa: F401  (their home before 0.2)
    AUDIO_BINS,
    _frames_raw,
    audio_features,
    spectrogram,
    spectrogram_framing,
    video_clip,
)
from karmma.data.clips import (
    VIDEO_FRAME_SIZE as FRAME_SIZE,
)
from karmma.data.readers.base import READERS, DatasetReader, Kind, Raw, SampleRef, or_absent
from karmma.errors import DataError


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
        return video_clip(path, modalities)

    def load(self, ref: SampleRef, modalities: tuple[str, ...], on_error: str) -> dict[str, np.ndarray]:
        from karmma.data.media.decode import AUDIO_RATE, read_audio, read_video

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
