"""A generic folder of clips: ``labels.csv`` with columns ``id,label`` and optional ``video`` and
``audio`` file names (relative to the folder). Modalities: rgb frames, optical flow on them, and
audio (a 64-band log-mel spectrogram by default) from the WAV named in ``audio`` or else the
video's own audio track (decoded with PyAV); a clip with neither has audio absent. Classes are the
sorted distinct labels. Failures inside a clip are marked in ``Raw.valid``
(:mod:`karmma.data.media.failures`).

Options (``karmma extract video --frame-size 112 --frames 32 --audio log_mel``, the defaults):
the frame size, how many frames are spread over each clip (0: every frame) and the audio features
(``log_mel``, or ``spectrogram``: karmma 0.2's 32 linear bands). They are recorded in the store
(``extra.preprocessing``), so that ``predict --clip``, ``stream`` and the export decode clips the
same way; a store of karmma 0.2 records none and is read as it was made."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from karmma.data.clips import (  # noqa: F401  (their home before 0.2)
    AUDIO_BINS,
    _frames_raw,
    audio_features,
    audio_framing,
    spectrogram,
    spectrogram_framing,
    video_clip,
    video_preprocessing,
)
from karmma.data.clips import (  # noqa: F401  (karmma 0.2's frame size, kept for imports)
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
    # karmma 0.2's audio (32 bands) at class level: a model that records no kinds is read as it was made
    modalities = {"rgb": Kind("frames", 3), "flow": Kind("flow", 3), "audio": Kind("signal", AUDIO_BINS)}
    default_modalities = ("rgb", "flow", "audio")
    extra = {"dataset": "video"}
    options = ("frame_size", "frames", "audio")
    source_names = {"rgb": "video", "flow": "farneback_video", "audio": "video_track"}
    contract = {
        "time": "a clip is its whole file, at the video's own frame rate",
        "frames": "--frames frames spread evenly over the clip (default 32; 0: every decoded frame, up to 10,000), "
                  "resized to --frame-size (default 112x112)",
        "audio": f"the file's audio track (or the WAV named in labels.csv), {AUDIO_RATE // 1000} kHz mono; --audio "
                 "log_mel (default): 64-band HTK log-mel, 25 ms Hann windows every 10 ms (n_fft 1024); spectrogram: "
                 "karmma 0.2's 32 linear-frequency bands of a log spectrogram (512-sample window, hop 256)",
        "lengths": "audio shorter than the video: the uncovered part is absent (never stretched); black, frozen or "
                   "undecodable frames are absent for the tokens they cover",
        "flow": "Farneback flow between consecutive sampled frames",
        "recorded": "the options as extra.preprocessing in the store, read by predict --clip, stream and export",
    }  # fmt: skip

    def __init__(self, frame_size: int | None = None, frames: int | None = None, audio: str | None = None) -> None:
        self.prep = video_preprocessing(frame_size, frames, audio)
        self.modalities = {**self.modalities, "audio": Kind("signal", int(self.prep["audio"]["bands"]))}
        self.extra = {**self.extra, "preprocessing": self.prep}

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
        from karmma.data.media.decode import clip_duration, decode_video

        row, raw, prep = ref.source, Raw(), self.prep
        video = self.root / row["video"] if row.get("video") else None
        if video is not None:
            try:  # the clip's length, as predict --clip takes it: what a short audio track is padded to
                raw.duration = clip_duration(video)
            except DataError:  # an unreadable video: its rgb/flow say so (or were not asked)
                pass
        if video is not None and ("rgb" in modalities or "flow" in modalities):
            size, count = tuple(prep["frame_size"]), prep["frames_per_clip"]
            # --frames spread over the clip (its length known), else every frame up to 10,000
            span = {"max_frames": count, "end_s": raw.duration} if count and raw.duration else {}
            decoded = or_absent(lambda: decode_video(video, size, **span), on_error, f"the video of {row['id']}")
            if decoded is not None:
                _frames_raw(raw, decoded.frames, modalities, decoded.undecodable)
        if "audio" in modalities:
            if row.get("audio"):
                read = lambda: _wav_features(self.root / row["audio"], raw.duration, prep["audio"])  # noqa: E731
            elif video is not None:  # the video's own audio track; none -> absent, not an error
                read = lambda: _track_features(video, int(prep["audio"]["rate"]), raw.duration, prep["audio"])  # noqa: E731
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


def _wav_features(path: Path, clip_s: float | None, audio: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``audio`` features (a preprocessing's entry) of a WAV file, padded with silence to
    ``clip_s`` (the video's length) when it ends early, and which frames it covers."""
    from karmma.data.media.audio_stream import frames_of
    from karmma.data.media.decode import read_audio_covered, read_wav
    from karmma.data.media.failures import pad_audio

    if audio["features"] == "spectrogram":  # karmma 0.2's: at the WAV's own rate, as it was
        x, rate = read_wav(path)
        mono, spans = pad_audio(x.mean(1), None if clip_s is None else int(round(clip_s * rate)), rate)
        framing = spectrogram_framing(rate)
    else:
        mono, spans = read_audio_covered(path, int(audio["rate"]), clip_s=clip_s)
        framing = audio_framing(audio)
    feats = frames_of(framing, [mono])
    return feats, _covered(framing, len(feats), spans)


def _track_features(video: Path, rate: int, clip_s: float | None, audio: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The audio features of a video's own audio track, its gaps and an early end filled with
    silence (:func:`~karmma.data.media.decode.read_audio_covered`), and which frames the track covers."""
    from karmma.data.media.audio_stream import frames_of
    from karmma.data.media.decode import read_audio_covered

    x, spans = read_audio_covered(video, rate, clip_s=clip_s)
    framing = audio_framing(audio)
    feats = frames_of(framing, [x])
    return feats, _covered(framing, len(feats), spans)
