"""ONNX export of a model (the student, typically) with the presence mask as an input.

Inputs: one float tensor ``(B, num_tokens, dim)`` per modality, named after it, and ``present``
``(B, ΣN_m)`` bool: one flag per token, modality after modality (:mod:`karmma.presence`), so a
sensor that failed for part of the clip is given as the tokens it missed (a whole modality:
all its tokens). Files exported before 0.2 take ``present`` ``(B, M)``; the metadata says which
(``presence``: ``per_token`` or absent). Outputs: one logits tensor per task. The model's metadata (modalities, tasks,
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

from karmma import presence
from karmma.errors import DataError
from karmma.io.checkpoint import MODEL_VERSION
from karmma.modalities import all_subsets, dummy_inputs, subset_name
from karmma.models.karmma import KARMMA
from karmma.runtime.backends import PER_TOKEN  # the metadata's ``presence`` (its home before 0.3 was here)

log = logging.getLogger(__name__)


class _Positional(nn.Module):
    def __init__(self, model: KARMMA) -> None:
        super().__init__()
        self.model = model
        self.m = len(model.specs)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # always the per-token path (a traced graph has no data-dependent branch); with every
        # token of a modality present it computes what the whole-modality path does
        masks = presence.split(inputs[self.m].bool(), presence.counts_of(self.model.specs))
        out = self.model.forward_presence(list(inputs[: self.m]), presence.whole(masks), masks)
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
    present = presence.per_token(present, presence.counts_of(model.specs))
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
        keep.update(model=asdict(model.cfg), version=MODEL_VERSION, presence=PER_TOKEN)  # as this release says
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
    from karmma.runtime.backends import onnx_meta, ort_session

    return onnx_meta(ort_session(path)[1], path)


def onnx_feed(names: list[str], tokens: list[torch.Tensor], present: torch.Tensor,
              meta: dict | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """The onnxruntime inputs of an exported model (:func:`karmma.runtime.backends.ort_feed`)."""
    from karmma.runtime.backends import ort_feed

    return ort_feed(names, [t.numpy() for t in tokens], present.numpy(), meta)


def verify_onnx(model: KARMMA, path: str | Path, seed: int = 0, batch: int = 4, tol: float = 1e-4) -> dict:
    """Compare onnxruntime with PyTorch on every non-empty subset; absent inputs hold noise."""
    import onnxruntime as ort

    model.eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = onnx_metadata(path)
    names = model.modality_names
    diffs = {}
    for i, subset in enumerate(all_subsets(names)):
        tokens, mask = dummy_inputs(model.specs, batch, subset, seed=seed + i)
        with torch.no_grad():
            ref = model(tokens, mask)
        got = sess.run(list(model.tasks), onnx_feed(names, tokens, mask, meta))
        diffs[subset_name(subset)] = float(max(np.abs(g_ - ref[t].numpy()).max() for t, g_ in zip(model.tasks, got)))
    # and with every modality present for part of the clip: the first half of its tokens
    tokens, mask = dummy_inputs(model.specs, batch, seed=seed + len(diffs))
    counts = presence.counts_of(model.specs)
    flat = presence.flatten([torch.arange(n).expand(batch, n) < max(1, n // 2) for n in counts])
    with torch.no_grad():
        ref = model(tokens, flat)
    got = sess.run(list(model.tasks), onnx_feed(names, tokens, flat, meta))
    diffs["first half of each"] = float(max(np.abs(g_ - ref[t].numpy()).max() for t, g_ in zip(model.tasks, got)))
    return {"max_abs_diff": diffs, "tol": tol, "ok": all(d <= tol for d in diffs.values())}
