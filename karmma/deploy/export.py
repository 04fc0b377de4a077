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
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from karmma.errors import DataError, KarmmaError
from karmma.io.checkpoint import MODEL_VERSION
from karmma.modalities import ModalitySpec, all_subsets, dummy_inputs, subset_name
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
    """Write ``path`` atomically; the model is left in eval mode (as it was exported)."""
    from karmma.outputs import check_file_writable, fsync_dir, write_failed

    path = Path(path)
    if path.is_dir():
        raise DataError(f"--out {path} is a folder; give a file name, e.g. {path / 'student.onnx'}")
    check_file_writable(path, "--out")
    model.eval()
    names = model.modality_names
    tokens, present = dummy_inputs(model.specs, 2)
    dynamic = {n: {0: "batch"} for n in [*names, "present", *model.tasks]}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The wrapper must be in eval mode too: the exporter restores the *wrapper's* mode on
            # return, recursively, which would otherwise switch the model back to training.
            torch.onnx.export(
                _Positional(model).eval(), (*tokens, present), str(tmp),
                input_names=[*names, "present"], output_names=list(model.tasks),
                dynamic_axes=dynamic, opset_version=opset, dynamo=False,
            )  # fmt: skip
        proto = onnx.load(str(tmp))
        names = ("specs", "tasks", "class_names", "model", "feature_set", "name", "extractor")
        keep = {k: meta[k] for k in names if k in meta}
        keep.update(model=asdict(model.cfg), version=MODEL_VERSION)  # as this release describes the model
        onnx.helper.set_model_props(proto, {"karmma": json.dumps(keep)})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        raise write_failed(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)
        model.eval()
    fsync_dir(path.parent)
    return path


def onnx_metadata(path: str | Path) -> dict:
    """The karmma metadata inside an exported file; :class:`DataError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ONNX file {path} does not exist; create it with `karmma export`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, truncated files, ...
        raise DataError(
            f"{path}: not a readable ONNX model ({type(e).__name__}); the file is truncated or "
            "not ONNX — export it again with `karmma export`"
        ) from e
    props = {p.key: p.value for p in proto.metadata_props}
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


def onnx_feed(names: list[str], tokens: list[torch.Tensor], present: torch.Tensor) -> dict[str, np.ndarray]:
    """The onnxruntime inputs of an exported model: one array per modality and ``present``."""
    return {**{n: t.numpy() for n, t in zip(names, tokens)}, "present": present.numpy()}


def verify_onnx(model: KARMMA, path: str | Path, seed: int = 0, batch: int = 4, tol: float = 1e-4) -> dict:
    """Compare onnxruntime with PyTorch on every non-empty subset; absent inputs hold noise."""
    import onnxruntime as ort

    model.eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = model.modality_names
    diffs = {}
    for i, subset in enumerate(all_subsets(names)):
        tokens, mask = dummy_inputs(model.specs, batch, subset, seed=seed + i)
        with torch.no_grad():
            ref = model(tokens, mask)
        got = sess.run(list(model.tasks), onnx_feed(names, tokens, mask))
        diffs[subset_name(subset)] = float(max(np.abs(g_ - ref[t].numpy()).max() for t, g_ in zip(model.tasks, got)))
    return {"max_abs_diff": diffs, "tol": tol, "ok": all(d <= tol for d in diffs.values())}
