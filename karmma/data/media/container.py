"""Opening a media container with PyAV, and the two ways a stream can be missing."""

from __future__ import annotations

from pathlib import Path

from karmma.errors import DataError


class NoStream(DataError):
    """The container has no stream of the asked kind (e.g. a clip without an audio track)."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"{path} has {what}")
        self.what = what


class TooFewFrames(DataError):
    """The video stream decodes to fewer than the 2 frames rgb and flow need."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.what = f"a video stream of {count} frame(s) (2 needed)"


def _open(path: Path):
    import av

    if not path.is_file():
        raise DataError(f"media file {path} does not exist")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot open the media file ({e}); it is corrupt or not a video/audio file") from e
