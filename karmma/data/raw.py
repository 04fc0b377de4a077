"""Raw modalities as readers and clip decoders hand them to the extractors: what each modality is
(:class:`Kind`) and one sample's arrays with the reasons for what is missing (:class:`Raw`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """What a raw modality is: ``frames`` (T, H, W[, C]), ``depth`` (T, H, W depth frames: depth motion
    maps with ``--encoder efficientnet``, frames otherwise), ``flow`` (T, H, W, 3: u, v, magnitude),
    ``signal`` (T, C) or ``skeleton`` (T, C joint coordinates)."""

    kind: str
    channels: int


class Raw(dict):
    """``{modality: array}`` of one sample, and ``absent``: ``{modality: why it is missing}``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.absent: dict[str, str] = {}
