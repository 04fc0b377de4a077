"""A generic folder of clips: ``labels.csv`` with columns ``id,label`` and optional ``video`` and
``audio`` file names (relative to the folder). Modalities: rgb frames, optical flow on them, and
audio (a log spectrogram) from the WAV named in ``audio`` or else the video's own audio track
(decoded with PyAV); a clip with neither has audio absent. Classes are the sorted distinct labels.
Failures inside a clip are marked in ``Raw.valid`` (:mod:`karmma.data.media.failures`)."""

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
from karmma.data.media.decode import AUDIO_RATE
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
    source_names = {"rgb": "video", "flow": "farneback_video", "audio": "video_track"}
    contract = {
        "time": "a clip is its whole file, at the video's own frame rate",
        "frames": f"every decoded frame (up to 10,000, spread over the clip), {FRAME_SIZE[0]}x{FRAME_SIZE[1]}",
        "audio": f"the file's audio track, {AUDIO_RATE // 1000} kHz mono, a {AUDIO_BINS}-band log spectrogram "
                 "(512-sample window, hop 256)",
        "lengths": "audio shorter than the video: the uncovered part is absent (never stretched); black, frozen or "
                   "undecodable frames are absent for the tokens they cover",
        "flow": "Farneback flow between consecutive decoded frames",
    }  # fmt: skip

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
        """rgb, flow and audio of one row, with the clip's failures in ``valid`` (black, frozen or
        corrupt frames; audio the track does not cover: a timestamp gap, a track — the video's own
        or the WAV — ending before the video) and the video's length in ``duration``."""
        from karmma.data.media.decode import AUDIO_RATE, clip_duration, decode_video

        row, raw = ref.source, Raw()
        video = self.root / row["video"] if row.get("video") else None
        if video is not None and ("rgb" in modalities or "flow" in modalities):
            decoded = or_absent(lambda: decode_video(video, size=FRAME_SIZE), on_error, f"the video of {row['id']}")
            if decoded is not None:
                _frames_raw(raw, decoded.frames, modalities, decoded.undecodable)
        if video is not None:
            try:  # the clip's length, as predict --clip takes it: what a short audio track is padded to
                raw.duration = clip_duration(video)
            except DataError:  # an unreadable video: its rgb/flow say so (or were not asked)
                pass
        if "audio" in modalities:
            if row.get("audio"):
                read = lambda: _wav_features(self.root / row["audio"], raw.duration)  # noqa: E731
            elif video is not None:  # the video's own audio track; none -> absent, not an error
                read = lambda: _track_features(video, AUDIO_RATE, raw.duration)  # noqa: E731
            else:
                raw.absent["audio"] = "no audio file or video"
                return raw
            audio = or_absent(read, on_error, f"the audio of {row['id']}", raw, "audio")
            if audio is not None:
                raw["audio"], valid = audio
                if valid is not None:
                    raw.valid["audio"] = valid
        return raw


def _covered(framing, n: int, spans) -> np.ndarray | None:
    """Which of ``n`` frames the track covers (None: all), ``spans`` the filled samples."""
    from karmma.data.media.audio_stream import frames_valid

    valid = frames_valid(framing, n, spans) if spans else None
    return None if valid is None or valid.all() else valid


def _wav_features(path: Path, clip_s: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`audio_features` of a WAV file padded with silence to ``clip_s`` (the video's length)
    when it ends early, and which frames the WAV covers."""
    from karmma.data.media.decode import read_wav
    from karmma.data.media.failures import pad_audio

    x, rate = read_wav(path)
    mono, spans = pad_audio(x.mean(1), None if clip_s is None else int(round(clip_s * rate)), rate)
    feats = spectrogram(mono, rate)
    return feats, _covered(spectrogram_framing(rate), len(feats), spans)


def _track_features(video: Path, rate: int, clip_s: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The spectrogram of a video's own audio track, its gaps and an early end filled with silence
    (:func:`~karmma.data.media.decode.read_audio_covered`), and which frames the track covers."""
    from karmma.data.media.decode import read_audio_covered

    x, spans = read_audio_covered(video, rate, clip_s=clip_s)
    feats = spectrogram(x, rate)
    return feats, _covered(spectrogram_framing(rate), len(feats), spans)
