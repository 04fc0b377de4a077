"""A decoded raw clip (``karmma predict --clip``) as a reader's raw modalities."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from karmma.data.readers import Raw
from karmma.extractors.media import Clip

VIDEO_MODALITIES = ("rgb", "flow")


def clip_modalities(clip: Clip, modalities: tuple[str, ...], from_frames: Callable[[np.ndarray], dict]) -> Raw:
    """rgb/flow (``from_frames`` of the clip's frames) and audio (its audio features, already
    framed); each asked modality the clip lacks is named in ``absent`` with the reason."""
    raw = Raw()
    if clip.frames is not None:
        raw.update({m: x for m, x in from_frames(clip.frames).items() if m in modalities})
    for m in VIDEO_MODALITIES:
        if m in modalities and m not in raw:
            raw.absent[m] = clip.absent.get("video", "not decoded")
    if "audio" in modalities:
        if clip.audio is not None:
            raw["audio"] = clip.audio
        else:
            raw.absent["audio"] = clip.absent.get("audio", "no audio track")
    return raw
