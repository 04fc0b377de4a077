"""ONNX export of a model (the student, typically) with the presence mask as an input.

Inputs: one float tensor ``(B, num_tokens, dim)`` per modality, named after it, and ``present``
``(B, M)`` bool. Outputs: one logits tensor per task. The model's metadata (modalities, tasks,
class names) travels inside the file (``metadata_props["karmma"]``). :func:`verify_onnx` runs
the file in onnxruntime for every non-empty modality subset and reports the max abs difference
to PyTorch.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from karmma.modalities import all_subsets, subset_mask, subset_name
from karmma.models.karmma import KARMMA

log = logging.getLogger(__name__)


class _Positional(nn.Module):
    def __init__(self, model: KARMMA) -> None:
        super().__init__()
        self.model = model
        self.m = len(model.specs)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(list(inputs[: self.m]), inputs[self.m])
        return tuple(out[t] for t in self.model.tasks)


def export_onnx(model: KARMMA, meta: dict, path: str | Path, opset: int = 17) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    names = model.modality_names
    tokens = [torch.randn(2, s.num_tokens, s.dim) for s in model.specs]
    present = torch.ones(2, len(names), dtype=torch.bool)
    dynamic = {n: {0: "batch"} for n in [*names, "present", *model.tasks]}
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Positional(model), (*tokens, present), str(tmp),
            input_names=[*names, "present"], output_names=list(model.tasks),
            dynamic_axes=dynamic, opset_version=opset, dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(tmp))
    keep = {k: meta[k] for k in ("specs", "tasks", "class_names", "model", "feature_set", "name") if k in meta}
    onnx.helper.set_model_props(proto, {"karmma": json.dumps(keep)})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def onnx_metadata(path: str | Path) -> dict:
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props.get("karmma", "{}"))


def onnx_feed(names: list[str], tokens: list[torch.Tensor], present: torch.Tensor) -> dict[str, np.ndarray]:
    """The onnxruntime inputs of an exported model: one array per modality and ``present``."""
    return {**{n: t.numpy() for n, t in zip(names, tokens)}, "present": present.numpy()}


def verify_onnx(model: KARMMA, path: str | Path, seed: int = 0, batch: int = 4, tol: float = 1e-4) -> dict:
    """Compare onnxruntime with PyTorch on every non-empty subset; absent inputs hold noise."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    names = model.modality_names
    diffs = {}
    for subset in all_subsets(names):
        tokens = [torch.randn(batch, s.num_tokens, s.dim, generator=g) for s in model.specs]
        mask = subset_mask(subset, names, batch)
        with torch.no_grad():
            ref = model(tokens, mask)
        got = sess.run(list(model.tasks), onnx_feed(names, tokens, mask))
        diffs[subset_name(subset)] = float(max(np.abs(g_ - ref[t].numpy()).max() for t, g_ in zip(model.tasks, got)))
    return {"max_abs_diff": diffs, "tol": tol, "ok": all(d <= tol for d in diffs.values())}
