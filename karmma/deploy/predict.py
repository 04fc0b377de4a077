"""``karmma predict``: one sample, whatever modalities the device has, from an ONNX file or a
checkpoint (the predictor itself is :mod:`karmma.runtime`).
The sample is an ``.npz`` or ``.safetensors`` file with one ``(num_tokens, dim)``
array per available modality (a modality not in the file is absent), and for a modality present
for part of the clip a ``(num_tokens,)`` array ``<modality>.valid`` of which tokens hold data
(:data:`VALID_SUFFIX`; bool, or 0/1) — or a raw clip
(:func:`clip_sample`: a video with or without an audio track, or a folder of frames), decoded and
run through the same frozen extractors that made the model's training features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from karmma.data.sample import token_mask  # noqa: F401  (its home before 0.3)
from karmma.errors import DataError
from karmma.limits import DECLARED_BYTES
from karmma.modalities import parse_subset
from karmma.runtime.clip import clip_sample  # noqa: F401  (its home before 0.3)
from karmma.runtime.predictor import Predictor, load

VALID_SUFFIX = ".valid"  # "<modality>.valid" in a sample file: which of its tokens hold data


def read_sample(path: str | Path, only: str | None = None) -> dict[str, np.ndarray]:
    from karmma.data.safe_files import check_features_dtype, read_npz  # with h5py: only for a features file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"sample file {path} does not exist")
    if path.suffix not in (".npz", ".safetensors"):
        raise DataError(f"{path}: use an .npz or .safetensors file with one (num_tokens, dim) array per modality")
    try:
        if path.suffix == ".npz":
            with open(path, "rb") as f:
                if f.read(4) != b"PK\x03\x04":
                    raise DataError(f"{path}: not an .npz archive (no zip signature); write it with numpy.savez")
            # each member's declared size and shape checked before its data is read (no zip bomb)
            sample = read_npz(path)
        else:
            from safetensors.numpy import load_file

            DECLARED_BYTES.check(path.stat().st_size, str(path))  # read whole into memory
            sample = load_file(str(path))
    except DataError:
        raise
    except (OSError, RuntimeError, Exception) as e:  # zip/safetensors decoding errors
        raise DataError(f"{path}: cannot read the sample ({type(e).__name__}: {e}); the file is corrupt") from e
    from karmma.data.raw import Raw

    flags = {k.removesuffix(VALID_SUFFIX): sample.pop(k) for k in [k for k in sample if k.endswith(VALID_SUFFIX)]}
    for name, arr in sample.items():
        check_features_dtype(arr.dtype, f"{path}: modality {name!r}")
    out = Raw(sample)
    for name, v in flags.items():
        where = f"{path}: {name}{VALID_SUFFIX}"
        if name not in sample:
            raise DataError(f"{where} marks the tokens of a modality the file does not hold; add its tokens or drop it")
        flag_like = v.dtype == np.bool_ or (np.issubdtype(v.dtype, np.integer) and np.isin(v, (0, 1)).all())
        if v.ndim != 1 or not flag_like:
            raise DataError(f"{where}: expected a (num_tokens,) array of bool (or 0/1), got {v.dtype} {v.shape}")
        out.valid[name] = v.astype(bool)
    if only:
        keep = parse_subset(only, list(out))
        for k in [k for k in out if k not in keep]:
            del out[k]
            out.valid.pop(k, None)
    return out


def load_predictor(path: str | Path) -> Predictor:
    """:func:`karmma.runtime.load`: an export folder, an ``.onnx`` file or a checkpoint / run folder."""
    return load(path)


def parse_only(only: str | None, predictor: Predictor) -> tuple[str, ...]:
    return predictor.parse_only(only)


MEDIA_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".wav", ".mka", ".m4a", ".mp3",
                  ".aac", ".flac", ".ogg", ".opus", ".jpg", ".jpeg", ".png")  # fmt: skip


def not_a_clip(path: str | Path) -> None:
    """Refuse a raw clip (a video, audio or image file, a folder of frames) given as ``--input``."""
    path = Path(path)
    if path.suffix.lower() in MEDIA_SUFFIXES or path.is_dir():
        raise DataError(f"--input {path} is a raw clip (video, audio or frames), not a features file: "
                        f"pass it with --clip {path} to run the model's own extractors on it")  # fmt: skip
