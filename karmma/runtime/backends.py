"""The two ways a deployment runs: onnxruntime (an export; no PyTorch) or PyTorch (a checkpoint).

Each gives the :class:`~karmma.runtime.predictor.Predictor` a *fusion* (tokens and presence, as
numpy arrays -> logits per task) and the frozen *encoders* that turn raw media into tokens. An
export folder (``karmma export --pipeline``) holds both as ONNX graphs and ``pipeline.json``; a
single ``.onnx`` file holds the fusion only (the encoders then need PyTorch, as before 0.3)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from karmma.errors import DataError, KarmmaError
from karmma.modalities import ModalitySpec

log = logging.getLogger(__name__)

PER_TOKEN = "per_token"  # the metadata's ``presence``: the file takes ``present`` (B, ΣN_m)
PIPELINE_FILE = "pipeline.json"  # the spec of an export folder (:mod:`karmma.deploy.export_pipeline`)
PIPELINE_FORMAT = "karmma-pipeline"

Fusion = Callable[[list[np.ndarray], np.ndarray], dict[str, np.ndarray]]
EncodersOf = Callable[[Mapping[str, Any], str], dict[str, Any]]  # (kinds, feature-set size) -> {modality: encoder}


def ort_session(path: str | Path):
    """An onnxruntime session on the CPU, and the karmma metadata inside the file; :class:`DataError`
    naming the file for anything that is not a model ``karmma export`` wrote."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise DataError(f"ONNX file {path} does not exist; create it with `karmma export`")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's InvalidProtobuf / InvalidGraph / Fail
        raise DataError(
            f"{path}: not a readable ONNX model ({type(e).__name__}); the file is truncated or "
            "not ONNX — export it again with `karmma export`"
        ) from e
    props = sess.get_modelmeta().custom_metadata_map
    return sess, props


def onnx_meta(props: Mapping[str, str], path: str | Path) -> dict:
    """The ``karmma`` metadata of an exported model, checked."""
    if "karmma" not in props:
        raise DataError(
            f"{path}: this ONNX model has no karmma metadata (modalities, tasks); "
            "predict takes files written by `karmma export`"
        )
    try:
        meta = json.loads(props["karmma"])
        [ModalitySpec(**d) for d in meta["specs"]]
        if not isinstance(meta["tasks"], dict):
            raise TypeError("tasks is not a mapping")
    except (json.JSONDecodeError, KeyError, TypeError, KarmmaError) as e:
        raise DataError(f"{path}: its karmma metadata is corrupt ({e}); export the model again") from e
    return meta


def ort_feed(names: list[str], tokens: list[np.ndarray], present: np.ndarray, meta: Mapping | None = None) -> dict:
    """The onnxruntime inputs of an exported fusion: one array per modality and ``present`` in the
    form the file takes (``meta``: its metadata; None: as given)."""
    present = np.asarray(present, dtype=bool)
    if meta is not None:
        counts = [t.shape[1] for t in tokens]
        if meta.get("presence") == PER_TOKEN and present.shape[1] != sum(counts):
            present = np.repeat(present, counts, axis=1)
        elif meta.get("presence") != PER_TOKEN and present.shape[1] != len(counts):  # a 0.1 export
            parts = np.split(present, np.cumsum(counts)[:-1], axis=1)
            if any(p.any(1).any() and not (p.all(1) | ~p.any(1)).all() for p in parts):
                log.warning("this ONNX file (exported before 0.2) takes whole-modality presence: a modality "
                            "present for part of the clip is given as present; export the model again")  # fmt: skip
            present = np.stack([p.any(1) for p in parts], 1)
    return {**{n: np.ascontiguousarray(t, np.float32) for n, t in zip(names, tokens)}, "present": present}


def ort_fusion(path: str | Path) -> tuple[Fusion, dict]:
    sess, props = ort_session(path)
    meta = onnx_meta(props, path)
    names, tasks = [d["name"] for d in meta["specs"]], list(meta["tasks"])

    def run(tokens: list[np.ndarray], present: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(tasks, sess.run(tasks, ort_feed(names, tokens, present, meta))))

    return run, meta


def ort_embed(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A frozen backbone's ONNX graph: (N, H, W, C) images in [0, 1] -> (N, features)."""
    sess, _ = ort_session(path)

    def embed(images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, np.float32)
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return sess.run(None, {"images": x})[0]

    return embed


def ort_encoders(folder: Path, spec: Mapping) -> EncodersOf:
    """The frozen encoders of an export folder, built without PyTorch: the ``efficientnet`` family
    with its backbones as ONNX graphs, or the parameter-free ``pool`` family."""
    from karmma.extractors.backbone_inputs import SIGNAL_STEPS, FlowTokens, FrameTokens, Resampled
    from karmma.extractors.families import NUM_TOKENS, pool_family

    family = spec["extractor"]["encoder"]
    embeds = {v: ort_embed(folder / b["file"]) for v, b in spec.get("backbones", {}).items()}

    def encoders_of(kinds: Mapping[str, Any], size: str) -> dict[str, Any]:
        if family == "pool":
            return pool_family(kinds, size)
        out: dict[str, Any] = {}
        for m, kind in kinds.items():
            if kind.kind in ("frames", "flow"):
                embed = embeds[spec["backbone_of"][size]]
                out[m] = FrameTokens(NUM_TOKENS, embed) if kind.kind == "frames" else FlowTokens(NUM_TOKENS, embed)
            elif kind.kind in ("signal", "skeleton"):
                out[m] = Resampled(SIGNAL_STEPS, kind.channels, velocity=kind.kind == "skeleton")
            else:
                raise DataError(f"{folder}: modality {m!r} ({kind.kind}) has no torch-free encoder")
        return out

    return encoders_of


def torch_fusion(model) -> Fusion:
    import torch

    def run(tokens: list[np.ndarray], present: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = model([torch.from_numpy(np.ascontiguousarray(t, np.float32)) for t in tokens],
                        torch.from_numpy(np.asarray(present, bool)))  # fmt: skip
        return {t: out[t].numpy() for t in model.tasks}

    return run


def torch_encoders(extractor: Mapping) -> EncodersOf:
    """The frozen encoders of a checkpoint: its extractor family, from the registry (PyTorch)."""
    from karmma.registries import EXTRACTORS

    if extractor["encoder"] not in EXTRACTORS:
        raise DataError(
            f"this model's features were made by the extractor family {extractor['encoder']!r}, which is not "
            f"installed (registered: {EXTRACTORS.names()}); extract the clip's features and pass --input"
        )
    family = EXTRACTORS.get(extractor["encoder"])
    return lambda kinds, size: family(kinds, size, extractor.get("weights"))
