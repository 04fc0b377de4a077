"""``karmma export MODEL --pipeline --out DIR``: the whole deployment as ONNX graphs, to run without
PyTorch (:mod:`karmma.runtime`).

The folder holds ``fusion.onnx`` (:func:`~karmma.deploy.export.export_onnx`: fusion and heads,
presence as an input), one ``backbone_<variant>.onnx`` per frozen image backbone the model's
extractor uses ((N, H, W, 3) images in [0, 1] -> (N, 1280) features, the resize to the backbone's
resolution inside the graph), and ``pipeline.json``: the extractor (clip format, encoder family,
feature-set size, modality kinds) and its preprocessing (frame size, frames per clip, audio
features: :func:`karmma.data.clips.preprocessing`). Written into a temporary folder and renamed:
an interrupted export leaves no half folder.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from karmma.errors import DataError
from karmma.models.karmma import KARMMA
from karmma.runtime.backends import PIPELINE_FILE, PIPELINE_FORMAT

FAMILIES = ("efficientnet", "pool")  # the extractor families with a torch-free runtime


class _Embed(nn.Module):
    def __init__(self, net: nn.Module, resolution: int) -> None:
        super().__init__()
        self.net, self.resolution = net, resolution

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return self.net.forward_features(x)  # type: ignore[operator]


def export_backbone(variant: str, resolution: int, path: Path, opset: int = 17) -> Path:
    from karmma.extractors.backbone import backbone

    module = _Embed(backbone(variant), resolution).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.rand(2, 64, 64, 3),), str(path), input_names=["images"], output_names=["features"],
            dynamic_axes={"images": {0: "n", 1: "h", 2: "w"}, "features": {0: "n"}}, opset_version=opset,
            dynamo=False,
        )  # fmt: skip
    return path


def pipeline_spec(meta: dict) -> dict:
    """The extractor a model records, checked for a torch-free deployment, and its preprocessing."""
    from karmma.data.clips import CLIP_FORMATS, preprocessing
    from karmma.extractors.backbone_inputs import BACKBONES

    ex = meta.get("extractor") or {}
    if not ex.get("reader") or not ex.get("kinds"):
        raise DataError("this model records no extractor (trained on features from another tool or an older karmma): "
                        "export the fusion alone with `karmma export MODEL --out model.onnx`")  # fmt: skip
    if ex["reader"] not in CLIP_FORMATS or ex.get("encoder") not in FAMILIES:
        raise DataError(
            f"a whole-pipeline export runs the clip formats {sorted(CLIP_FORMATS)} with the extractor families "
            f"{list(FAMILIES)}; this model's features come from {ex['reader']!r} with {ex.get('encoder')!r}: "
            "export the fusion alone with `karmma export MODEL --out model.onnx`"
        )
    size = ex.get("feature_set", "teacher")
    spec: dict[str, Any] = {"format": PIPELINE_FORMAT, "version": 1, "fusion": "fusion.onnx", "extractor": ex,
            "preprocessing": preprocessing(ex["reader"], ex.get("preprocessing")), "backbones": {},
            "backbone_of": {}}  # fmt: skip
    images = any(kind in ("frames", "flow") for kind, _ in ex["kinds"].values())
    if ex["encoder"] == "efficientnet" and images:
        variant, resolution = BACKBONES[size]
        spec["backbones"][variant] = {"file": f"backbone_{variant}.onnx", "resolution": resolution}
        spec["backbone_of"][size] = variant
    return spec


def _earlier_export(out: Path) -> bool:
    """An empty folder, or one holding only what an earlier export wrote (its spec names them)."""
    if not out.is_dir():
        return False
    files = {p.name for p in out.iterdir()}
    if not files:
        return True
    try:
        spec = json.loads((out / PIPELINE_FILE).read_text())
        listed = {PIPELINE_FILE, spec["fusion"], *(b["file"] for b in spec.get("backbones", {}).values())}
        return spec.get("format") == PIPELINE_FORMAT and files <= listed
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def export_pipeline(model: KARMMA, meta: dict, out: str | Path) -> Path:
    """Write the export folder ``out`` (replacing an earlier export there, never another folder)."""
    from karmma.deploy.export import export_onnx
    from karmma.outputs import fsync_dir

    out = Path(out).resolve()
    if out.exists() and not _earlier_export(out):
        raise DataError(f"--out {out} exists and is not an earlier pipeline export (or an empty folder); give a new "
                        "folder name: an export replaces only what an export wrote")  # fmt: skip
    spec = pipeline_spec(meta)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        export_onnx(model, meta, tmp / spec["fusion"])
        for variant, b in spec["backbones"].items():
            export_backbone(variant, b["resolution"], tmp / b["file"])
        (tmp / PIPELINE_FILE).write_text(json.dumps(spec, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(out.parent)
    return out


def verify_pipeline(model: KARMMA, out: Path, seed: int = 0, tol: float = 1e-4) -> dict:
    """onnxruntime against PyTorch: the fusion on every subset (:func:`~karmma.deploy.export.verify_onnx`)
    and each backbone on random images at two frame sizes (the features' max abs difference)."""
    from karmma.deploy.export import verify_onnx
    from karmma.extractors.backbone import embed_images
    from karmma.runtime.backends import ort_embed

    report = verify_onnx(model, out / "fusion.onnx", seed=seed, tol=tol)
    spec = json.loads((out / PIPELINE_FILE).read_text())
    rng = np.random.default_rng(seed)
    for variant, b in spec["backbones"].items():
        embed = ort_embed(out / b["file"])
        images = rng.random((3, 64, 64, 3), dtype=np.float32)
        diff = float(np.abs(embed(images) - embed_images(images, variant, b["resolution"])).max())
        rel = 10 * tol  # backbone features are O(1-10): a relative tolerance
        report["max_abs_diff"][f"backbone {variant}"] = diff
        report["ok"] = report["ok"] and diff <= rel
    return report
