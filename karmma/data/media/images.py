"""Frame images (JPEG, PNG: a file, or the bytes of a tar member) decoded with OpenCV, within a
bound: a file or member larger than ``KARMMA_MAX_FRAME_BYTES`` (:data:`karmma.limits.FRAME_BYTES`,
default 64 MiB), or an image whose header declares more decoded bytes than that (a few bytes can
declare 30000 x 30000 pixels), is refused by name before it is read or decoded. The header is
read with Pillow, which parses it without decoding the pixels.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import cv2
import numpy as np

from karmma.errors import DataError
from karmma.limits import FRAME_BYTES


def declared_pixels(image: bytes | Path) -> tuple[int, str] | None:
    """(pixels, what) the image's header declares, or None if Pillow cannot tell (OpenCV then
    decides whether it is an image at all)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
                w, h = im.size
                return w * h, f"a {w} x {h} image"
    except Image.DecompressionBombError as e:  # over twice Pillow's own bound: it names the pixels
        m = re.search(r"\((\d+) pixels\)", str(e))
        n = int(m.group(1)) if m else 2 * int(Image.MAX_IMAGE_PIXELS or 0) + 1
        return n, f"an image of {n} pixels"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def read_image(
    image: str | Path | bytes | bytearray, size: tuple[int, int] | None = None, grey: bool = False,
    name: str | None = None,
) -> np.ndarray:  # fmt: skip
    """An image file (or the bytes of one, which ``name`` names in errors, e.g. the tar and the
    member) as uint8 RGB (H, W, 3), or (H, W) with ``grey``; resized to ``size`` (H, W) if given."""
    flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        name = name or "an image in an archive"
        FRAME_BYTES.check(len(data), name)
        _check_declared(declared_pixels(data), grey, name)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    else:
        path = Path(image)
        name = name or str(path)
        try:
            st = path.stat()
        except OSError as e:
            raise DataError(
                f"{name}: cannot read the image ({e.strerror or e}); check that it exists and is readable"
            ) from e
        if not path.is_file():
            raise DataError(f"{name}: not an image file (a folder or a special file); put the frame image there")
        FRAME_BYTES.check(st.st_size, name)
        _check_declared(declared_pixels(path), grey, name)
        img = cv2.imread(str(path), flag)
    if img is None:
        raise DataError(f"{name}: cannot read the image; the file is missing or corrupt")
    if size is not None:
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return img if grey else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _check_declared(declared: tuple[int, str] | None, grey: bool, name: str) -> None:
    if declared is not None:
        pixels, what = declared
        FRAME_BYTES.check(pixels * (1 if grey else 3), f"{name} ({what}, decoded)")
