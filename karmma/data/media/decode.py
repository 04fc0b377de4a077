"""Media decoding with PyAV: video frames and the audio track from one container (MP4, WebM, ...),
WAV audio with SciPy, JPEG frames with OpenCV; the log-mel spectrogram of auditory-slow-fast.

A container without an audio (or video) stream raises :class:`NoStream`: the modality is absent,
which is not an error. Anything unreadable raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from karmma.data.media.container import NoStream, TooFewFrames, _open  # noqa: F401  (their home before 0.2)
from karmma.data.media.mel import hz_to_mel, mel_filterbank, mel_to_hz  # noqa: F401  (their home before 0.2)
from karmma.errors import DataError

if TYPE_CHECKING:
    from karmma.data.media.audio_stream import Framing

AUDIO_RATE = 24_000  # auditory-slow-fast (Kazakos et al., ICASSP 2021): mono 24 kHz
MEL_BANDS, MEL_WINDOW_S, MEL_HOP_S, MEL_NFFT = 128, 0.010, 0.005, 2048


def video_info(path: str | Path) -> tuple[float, tuple[int, int]]:
    """(frames per second, (height, width)) of the first video stream."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise NoStream(path, "no video stream")
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate or 0), (s.codec_context.height, s.codec_context.width)


class Video(NamedTuple):
    """Decoded frames (T, H, W, 3) uint8, which of them the decoder flagged corrupt ((T,) bool:
    undecodable, concealed), and the file's seconds (:func:`clip_duration`; None if undeclared)."""

    frames: np.ndarray
    undecodable: np.ndarray
    duration: float | None


def read_video(
    path: str | Path,
    size: tuple[int, int] | None = (112, 112),
    max_frames: int = 10_000,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames whose time lies in [start_s, end_s), resized to ``size``
    (H, W). A longer span is read at a stride so that at most ``max_frames`` come back."""
    return decode_video(path, size, max_frames, start_s, end_s).frames


def decode_video(
    path: str | Path,
    size: tuple[int, int] | None = (112, 112),
    max_frames: int = 10_000,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> Video:
    """:func:`read_video`'s frames, with the frames the decoder flagged corrupt and the stream's length."""
    import av

    path = Path(path)
    frames: list[np.ndarray] = []
    corrupt: list[bool] = []
    with _open(path) as c:
        if not c.streams.video:
            raise NoStream(path, "no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 30)
        duration = _declared_seconds(c)
        step = 1
        if end_s is not None:
            step = max(1, math.ceil((end_s - start_s) * fps / max_frames))
        try:
            if start_s > 0:
                c.seek(int(start_s / stream.time_base), stream=stream, backward=True)
            seen = 0
            for frame in c.decode(stream):
                t = frame.time if frame.time is not None else seen / fps
                if end_s is not None and t >= end_s:
                    break
                if t < start_s - 1e-6:
                    continue
                if seen % step == 0:
                    kw = {"width": size[1], "height": size[0]} if size else {}
                    frames.append(frame.to_ndarray(format="rgb24", **kw))
                    corrupt.append(bool(getattr(frame, "is_corrupt", False)))
                    if len(frames) >= max_frames:
                        break
                seen += 1
        except av.FFmpegError as e:
            raise DataError(f"{path}: decoding failed ({e}); re-encode it (ffmpeg -i in -c:v libx264 out.mp4)") from e
    if len(frames) < 2:
        span = f" in [{start_s:.2f}, {end_s:.2f}) s" if end_s is not None else ""
        raise TooFewFrames(
            f"{path}: decoded {len(frames)} frame(s){span}; the video is corrupt, too short or not a video — "
            "re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)",
            len(frames),
        )
    return Video(np.stack(frames), np.array(corrupt, bool), duration)


def read_audio(
    path: str | Path, rate: int = AUDIO_RATE, start_s: float = 0.0, end_s: float | None = None
) -> np.ndarray:
    """(samples,) float32 mono audio of the container's first audio track, resampled to ``rate``,
    over [start_s, end_s). Raises :class:`NoStream` when there is no audio track. Decoded in a
    stream: only the samples of the span are held (:func:`~karmma.data.media.audio_stream.audio_chunks`)."""
    return _audio(path, rate, start_s, end_s, None)


def read_audio_covered(
    path: str | Path, rate: int = AUDIO_RATE, start_s: float = 0.0, end_s: float | None = None,
    clip_s: float | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:  # fmt: skip
    """:func:`read_audio` over [start_s, end_s) with the track's failures filled, and the filled
    ``(start, stop)`` sample spans: jumps in its timestamps are zero-filled
    (:func:`~karmma.data.media.audio_stream.audio_chunks`), and a track ending early — short of
    ``end_s - start_s``, or of ``clip_s`` seconds without ``end_s`` — is padded with silence
    (:func:`~karmma.data.media.failures.pad_audio`). Without failures: :func:`read_audio`'s samples."""
    from karmma.data.media.failures import pad_audio

    gaps: list[tuple[int, int]] = []
    x = _audio(path, rate, start_s, end_s, gaps)
    length = end_s - start_s if end_s is not None else clip_s
    x, padding = pad_audio(x, None if length is None else int(round(length * rate)), rate)
    return x, gaps + padding


def _audio(path: str | Path, rate: int, start_s: float, end_s: float | None, gaps: list | None) -> np.ndarray:
    from karmma.data.media.audio_stream import audio_chunks

    chunks = list(audio_chunks(Path(path), rate, start_s, end_s, gaps))
    x = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if len(x) < 2:
        raise DataError(f"{path}: the audio track has {len(x)} sample(s) in [{start_s:.2f}, {end_s}) s")
    return x


def clip_duration(path: str | Path) -> float | None:
    """Seconds of a media file: the longer of its video stream's and its container's declared
    lengths (None when neither is declared)."""
    with _open(Path(path)) as c:
        return _declared_seconds(c)


def _declared_seconds(container) -> float | None:
    """The longer of an open container's video stream's and its own declared lengths, in seconds."""
    stream = container.streams.video[0] if container.streams.video else None
    known = [d for d in (_video_duration(stream) if stream is not None else None,
                         float(container.duration) / 1e6 if container.duration else None) if d]  # fmt: skip
    return max(known) if known else None


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(T, C) float32 in [-1, 1] and the sample rate."""
    path = Path(path)
    try:
        import scipy.io.wavfile  # here: a video-only deployment never loads SciPy

        rate, x = scipy.io.wavfile.read(str(path))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read WAV audio ({e}); convert it to PCM WAV") from e
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    x = x.astype(np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if len(x) < 2:
        raise DataError(f"{path}: audio has {len(x)} sample(s)")
    return x, int(rate)


def read_image(
    path: str | Path | bytes, size: tuple[int, int] | None = None, grey: bool = False, name: str | None = None
) -> np.ndarray:
    """An image file (or the bytes of one, ``name`` naming them) as uint8 RGB (H, W, 3), or (H, W)
    with ``grey``; within the frame bound (:func:`karmma.data.media.images.read_image`)."""
    from karmma.data.media.images import read_image as read

    return read(path, size, grey, name)


def log_mel(
    x: np.ndarray,
    rate: int = AUDIO_RATE,
    bands: int = MEL_BANDS,
    window_s: float = MEL_WINDOW_S,
    hop_s: float = MEL_HOP_S,
    n_fft: int = MEL_NFFT,
) -> np.ndarray:
    """(frames, bands) log-mel spectrogram of mono audio: a Hann window of ``window_s`` centred in
    ``n_fft`` points, every ``hop_s``, magnitude, HTK mel, log(x + 1e-6) — auditory-slow-fast's
    recipe (10 ms window, 5 ms hop, 128 bands at 24 kHz). Computed block by block
    (:mod:`karmma.data.media.audio_stream`): memory grows with the output, not the spectra."""
    from karmma.data.media.audio_stream import frames_of, log_mel_framing

    return frames_of(log_mel_framing(rate, bands, window_s, hop_s, n_fft), [np.asarray(x, np.float32).reshape(-1)])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def clip_streams(path: str | Path) -> set[str]:
    """Which of "video" and "audio" a clip (a media file, or a folder of frames: video) has."""
    path = Path(path)
    if path.is_dir():
        return {"video"}
    with _open(path) as c:
        return {k for k, s in (("video", c.streams.video), ("audio", c.streams.audio)) if s}


def _video_duration(stream) -> float | None:
    """Seconds of a video stream, from its own header (None when it declares none)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    return stream.frames / rate if stream.frames and rate else None


class Clip(NamedTuple):
    """A decoded raw clip: ``frames`` uint8 (T, H, W, 3) or None, ``audio`` the audio track through
    the caller's framing, (frames, F) float32, or None; ``absent``: why "video"/"audio" is missing;
    ``undecodable`` (T,) bool: frames the decoder flagged corrupt (None: none); ``audio_valid``
    (frames,) bool: audio frames the track covers (None: all of them); ``duration``: seconds."""

    frames: np.ndarray | None
    audio: np.ndarray | None
    absent: dict[str, str]
    undecodable: np.ndarray | None = None
    audio_valid: np.ndarray | None = None
    duration: float | None = None


def decode_clip(
    path: str | Path, size: tuple[int, int], max_frames: int, audio: Framing | None = None, video: bool = True
) -> Clip:
    """A raw clip for prediction: a video file or a folder of frame images in name order (no audio).
    At most ``max_frames`` frames (and :data:`karmma.limits.CLIP_FRAMES`), spread over the clip;
    with ``audio``, the audio track at 24 kHz through that framing, decoded in a stream and kept to
    :data:`karmma.limits.AUDIO_FRAMES` frames (:func:`~karmma.data.media.audio_stream.clip_audio`):
    a track ending early is padded with silence to the clip's length, and ``audio_valid`` says where.

    Without ``audio``, a clip with no usable video stream raises (:class:`NoStream`,
    :class:`TooFewFrames`). With it, a missing (or 1-frame) video stream or a missing audio track is
    named in ``absent``, and only a clip with neither raises. ``video=False`` skips the frames."""
    from karmma.limits import CLIP_FRAMES

    path = Path(path)
    max_frames = max(2, min(max_frames, CLIP_FRAMES.value()))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 2:
            raise DataError(f"{path}: a frame folder needs at least 2 images ({', '.join(IMAGE_SUFFIXES)})")
        pick = np.linspace(0, len(files) - 1, min(max_frames, len(files))).round().astype(int)
        frames = np.stack([read_image(files[i], size) for i in pick])
        return Clip(frames, None, {"audio": "no audio (a folder of frames)"})
    with _open(path) as c:  # the duration spreads max_frames over the whole clip
        duration = float(c.duration) / 1e6 if c.duration else None
        streams = {"video": bool(c.streams.video), "audio": bool(c.streams.audio)}
        span = _video_duration(c.streams.video[0]) if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        audio_span = float(a.duration * a.time_base) if a is not None and a.duration and a.time_base else None
    if not streams["video"] and not streams["audio"]:
        raise DataError(f"{path}: has no video stream and no audio track; give a video or audio file")
    # the clip's length: what an audio track ending early is padded to (a clip with a video stream)
    clip_s = max((d for d in (span, duration) if d), default=None)
    frames, undecodable, feats, audio_valid, absent = None, None, None, None, {}
    if not streams["video"]:
        if audio is None and video:
            raise NoStream(path, "no video stream")
        absent["video"] = "no video stream"
    elif video:
        try:
            try:
                decoded = decode_video(path, size, max_frames, 0.0, span or duration)
            except TooFewFrames:  # a short video in a longer container (audio): its frames from the start
                decoded = decode_video(path, size, max_frames)
            frames, undecodable = decoded.frames, decoded.undecodable
        except (NoStream, TooFewFrames) as e:
            if audio is None:
                raise
            absent["video"] = e.what
    if audio is not None:
        from karmma.data.media.audio_stream import clip_audio

        try:
            feats, audio_valid = clip_audio(path, audio, AUDIO_RATE, audio_span or duration,
                                            clip_s if streams["video"] else None)  # fmt: skip
        except NoStream as e:
            if frames is None and (video or not streams["video"]):
                raise DataError(f"{path}: has {absent['video']} and {e.what}; nothing to predict from") from e
            absent["audio"] = e.what
    return Clip(frames, feats, absent, undecodable, audio_valid, clip_s)
