"""Raw modalities as readers and clip decoders hand them to the extractors: what each modality is
(:class:`Kind`) and one sample's arrays with the reasons for what is missing (:class:`Raw`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Kind:
    """What a raw modality is: ``frames`` (T, H, W[, C]), ``depth`` (T, H, W depth frames: depth motion
    maps with ``--encoder efficientnet``, frames otherwise), ``flow`` (T, H, W, 3: u, v, magnitude),
    ``signal`` (T, C) or ``skeleton`` (T, C joint coordinates)."""

    kind: str
    channels: int


class Raw(dict):
    """``{modality: array}`` of one sample, and:

    * ``absent``: ``{modality: why it is missing}``;
    * ``valid``: ``{modality: (T,) bool}`` over the first (time) axis of the modality's array,
      False where the sensor failed inside the clip (a black, frozen or undecodable frame, an
      audio stretch the track does not cover, a NaN or a timestamp gap in a signal). The failed
      steps hold a neutral stand-in (zeros, or the last good value held) so that extraction still
      sees finite values; extraction marks the tokens they cover absent
      (:mod:`karmma.presence`). A modality not named is valid throughout;
    * ``duration``: the clip's length in seconds, when the reader knows it (None otherwise).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.absent: dict[str, str] = {}
        self.valid: dict[str, np.ndarray] = {}
        self.duration: float | None = None


FAILED_THROUGHOUT = "the sensor failed for the whole clip"


def drop_failed(raw: dict, modalities) -> dict[str, str]:
    """Remove from ``raw`` the ``modalities`` whose ``valid`` says the sensor failed at every step,
    and return why each of them is absent (extraction and ``predict --clip`` treat them alike)."""
    valid = getattr(raw, "valid", {})
    gone = [m for m in modalities if m in raw and m in valid and not np.asarray(valid[m]).any()]
    for m in gone:
        del raw[m]
    return dict.fromkeys(gone, FAILED_THROUGHOUT)
