"""Media decoding: video with OpenCV (its bundled FFmpeg), audio WAV with SciPy."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import scipy.io.wavfile

from karmma.errors import DataError


def read_video(path: str | Path, size: tuple[int, int] | None = (112, 112), max_frames: int = 10_000) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames, resized to ``size`` (H, W) if given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video {path} does not exist")
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if size is not None:
                frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if len(frames) < 2:
        raise DataError(
            f"{path}: decoded {len(frames)} frame(s); the video is corrupt or not a video — "
            "re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)"
        )
    return np.stack(frames)


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
