"""Media decoding with PyAV: video frames and the audio track from one container (MP4, WebM, ...),
WAV audio with SciPy, JPEG frames with OpenCV; the log-mel spectrogram of auditory-slow-fast.

A container without an audio (or video) stream raises :class:`NoStream`: the modality is absent,
which is not an error. Anything unreadable raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import cv2
import numpy as np
import scipy.io.wavfile

from karmma.errors import DataError

AUDIO_RATE = 24_000  # auditory-slow-fast (Kazakos et al., ICASSP 2021): mono 24 kHz
MEL_BANDS, MEL_WINDOW_S, MEL_HOP_S, MEL_NFFT = 128, 0.010, 0.005, 2048


class NoStream(DataError):
    """The container has no stream of the asked kind (e.g. a clip without an audio track)."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"{path} has {what}")
        self.what = what


def _open(path: Path):
    import av

    if not path.is_file():
        raise DataError(f"media file {path} does not exist")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot open the media file ({e}); it is corrupt or not a video/audio file") from e


def video_info(path: str | Path) -> tuple[float, tuple[int, int]]:
    """(frames per second, (height, width)) of the first video stream."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise NoStream(path, "no video stream")
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate or 0), (s.codec_context.height, s.codec_context.width)


def read_video(
    path: str | Path,
    size: tuple[int, int] | None = (112, 112),
    max_frames: int = 10_000,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames whose time lies in [start_s, end_s), resized to ``size``
    (H, W). A longer span is read at a stride so that at most ``max_frames`` come back."""
    import av

    path = Path(path)
    frames: list[np.ndarray] = []
    with _open(path) as c:
        if not c.streams.video:
            raise NoStream(path, "no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 30)
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
                    if len(frames) >= max_frames:
                        break
                seen += 1
        except av.FFmpegError as e:
            raise DataError(f"{path}: decoding failed ({e}); re-encode it (ffmpeg -i in -c:v libx264 out.mp4)") from e
    if len(frames) < 2:
        span = f" in [{start_s:.2f}, {end_s:.2f}) s" if end_s is not None else ""
        raise DataError(
            f"{path}: decoded {len(frames)} frame(s){span}; the video is corrupt, too short or not a video — "
            "re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)"
        )
    return np.stack(frames)


def read_audio(
    path: str | Path, rate: int = AUDIO_RATE, start_s: float = 0.0, end_s: float | None = None
) -> np.ndarray:
    """(samples,) float32 mono audio of the container's first audio track, resampled to ``rate``,
    over [start_s, end_s). Raises :class:`NoStream` when there is no audio track."""
    import av

    path = Path(path)
    chunks: list[np.ndarray] = []
    first_t = None
    with _open(path) as c:
        if not c.streams.audio:
            raise NoStream(path, "no audio track")
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        try:
            if start_s > 0:
                c.seek(int(start_s / stream.time_base), stream=stream, backward=True)
            for frame in c.decode(stream):
                if first_t is None:
                    first_t = frame.time or 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                if end_s is not None and frame.time is not None and frame.time > end_s:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as e:
            raise DataError(f"{path}: audio decoding failed ({e}); re-encode the audio track") from e
    x = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    a = max(0, int(round((start_s - (first_t or 0.0)) * rate)))
    b = len(x) if end_s is None else max(a, int(round((end_s - (first_t or 0.0)) * rate)))
    x = x[a:b]
    if len(x) < 2:
        raise DataError(f"{path}: the audio track has {len(x)} sample(s) in [{start_s:.2f}, {end_s}) s")
    return x


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(T, C) float32 in [-1, 1] and the sample rate."""
    path = Path(path)
    try:
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


def read_image(path: str | Path, size: tuple[int, int] | None = None, grey: bool = False) -> np.ndarray:
    """An image file (or the bytes of one) as uint8 RGB (H, W, 3), or (H, W) with ``grey``."""
    if isinstance(path, (bytes, bytearray)):
        img = cv2.imdecode(np.frombuffer(path, np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
        name = "an image in an archive"
    else:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
        name = str(path)
    if img is None:
        raise DataError(f"{name}: cannot read the image; the file is missing or corrupt")
    if size is not None:
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return img if grey else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=4)
def mel_filterbank(rate: int, n_fft: int, bands: int) -> np.ndarray:
    """(bands, n_fft // 2 + 1) triangular HTK-mel filters, unnormalised (librosa's
    ``filters.mel(htk=True, norm=None)``, as auditory-slow-fast uses)."""
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(rate / 2), bands + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


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
    recipe (10 ms window, 5 ms hop, 128 bands at 24 kHz)."""
    win, hop = int(round(window_s * rate)), int(round(hop_s * rate))
    x = np.asarray(x, np.float32).reshape(-1)
    x = np.pad(x, n_fft // 2)  # centred frames, zero padded (librosa's center=True)
    n = 1 + max(0, (len(x) - n_fft) // hop)
    start = (n_fft - win) // 2
    idx = np.arange(n)[:, None] * hop + start + np.arange(win)[None]
    frames = x[idx] * np.hanning(win + 2)[1:-1].astype(np.float32)  # periodic-like Hann without zero ends
    spec = np.abs(np.fft.rfft(frames, n=n_fft, axis=1))  # the window sits at the frame's start: same magnitude
    return np.log(spec @ mel_filterbank(rate, n_fft, bands).T + 1e-6).astype(np.float32)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def decode_clip(path: str | Path, size: tuple[int, int], max_frames: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A raw clip for prediction: a video file (frames, and its audio track at 24 kHz if it has
    one) or a folder of frame images in name order (no audio). Returns (frames uint8 (T, H, W, 3),
    audio (samples,) or None); at most ``max_frames`` frames, spread over the clip."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 2:
            raise DataError(f"{path}: a frame folder needs at least 2 images ({', '.join(IMAGE_SUFFIXES)})")
        pick = np.linspace(0, len(files) - 1, min(max_frames, len(files))).round().astype(int)
        return np.stack([read_image(files[i], size) for i in pick]), None
    with _open(path) as c:  # the container's duration spreads max_frames over the whole clip
        duration = float(c.duration) / 1e6 if c.duration else None
    frames = read_video(path, size, max_frames, 0.0, duration)
    try:
        audio = read_audio(path)
    except NoStream:
        audio = None
    return frames, audio
