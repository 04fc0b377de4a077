"""Cost per modality subset: parameters, FLOPs, peak memory and latency.

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, attention; 2 FLOPs per MAC).
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak of the bytes of
  live tensors created during the forward pass (activations; weights excluded), tracked with a
  ``TorchDispatchMode``.
* Latency: median wall time over ``repeats`` forward passes after warm-up (batch 1 by default).

Parameters are those a subset uses: the fusion model and heads, plus the input projections and
encoders of the present modalities (their unimodal heads only where the late-fusion add-on's ``ensemble``
runs them). (With the missing-modality tokens the fusion compute does not shrink with fewer
sensors; what a deployment saves is the absent modalities' extractors.)
"""

from __future__ import annotations

import statistics
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from karmma import modalities
from karmma.errors import ConfigError
from karmma.modalities import all_subsets, subset_name
from karmma.models.karmma import KARMMA
from karmma.models.late_fusion import late_fusion_of


def dummy_inputs(model: KARMMA, subset: tuple[str, ...], batch: int = 1, device: str = "cpu"):
    tokens, mask = modalities.dummy_inputs(model.specs, batch, subset)
    return [t.to(device) for t in tokens], mask.to(device)


def count_flops(model: KARMMA, subset: tuple[str, ...], batch: int = 1) -> int:
    tokens, mask = dummy_inputs(model, subset, batch)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tokens, mask)
    return int(counter.get_total_flops())


def count_params(model: KARMMA, subset: tuple[str, ...]) -> int:
    unused = [m for m, n in enumerate(model.modality_names) if n not in subset]
    skip = {id(p) for m in unused for part in (model.embed.proj[m], model.encoders[m]) for p in part.parameters()}
    lf = late_fusion_of(model)
    if lf is not None:  # the unimodal heads: training-only, unless late-fused at inference (its ensemble)
        heads = [h for m, h in enumerate(lf.heads) if lf.cfg.ensemble == 0 or m in unused]
        skip |= {id(p) for h in heads for p in h.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def peak_memory_bytes(model: KARMMA, subset: tuple[str, ...], batch: int = 1) -> int:
    device = next(model.parameters()).device
    tokens, mask = dummy_inputs(model, subset, batch, str(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            model(tokens, mask)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    tracker = _LiveBytes()
    with tracker, torch.no_grad():
        model(tokens, mask)
    return int(tracker.peak)


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensors created by ops and still alive; ``peak`` is the maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.refs: dict[int, int] = {}

    def _release(self, ptr: int, nbytes: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            del self.refs[ptr]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                ptr, nbytes = storage.data_ptr(), storage.nbytes()
                if ptr not in self.refs:
                    self.refs[ptr] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self.refs[ptr] += 1
                weakref.finalize(t, self._release, ptr, nbytes)
        return out


def latency_ms(model: KARMMA, subset: tuple[str, ...], batch: int = 1, repeats: int = 30, warmup: int = 5) -> float:
    device = next(model.parameters()).device
    tokens, mask = dummy_inputs(model, subset, batch, str(device))
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(tokens, mask)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def cost_table(models: dict[str, KARMMA], repeats: int = 30, batch_size: int = 1) -> dict:
    """``{model: {subset: {params, flops, peak_memory_bytes, latency_ms}}}`` plus student/teacher ratios."""
    if repeats < 1 or batch_size < 1:
        raise ConfigError(f"repeats={repeats}, batch_size={batch_size}: both must be at least 1")
    table: dict = {"batch_size": batch_size, "device": "cpu", "models": {}}
    for name, model in models.items():
        model.eval()
        table["device"] = str(next(model.parameters()).device)
        rows = {}
        for subset in all_subsets(model.modality_names):
            rows[subset_name(subset)] = {
                "params": count_params(model, subset),
                "flops": count_flops(model, subset, batch_size),
                "peak_memory_bytes": peak_memory_bytes(model, subset, batch_size),
                "latency_ms": latency_ms(model, subset, batch_size, repeats),
            }
        table["models"][name] = rows
    names = list(models)
    if "teacher" in models and "student" in models:
        t, s = table["models"]["teacher"], table["models"]["student"]
        full = subset_name(tuple(models["teacher"].modality_names))
        table["student_vs_teacher"] = {k: s[full][k] / t[full][k] for k in ("params", "flops", "latency_ms")}
    elif len(names) == 2:
        a, b = (table["models"][n] for n in names)
        full = list(a)[-1]
        table[f"{names[1]}_vs_{names[0]}"] = {k: b[full][k] / a[full][k] for k in ("params", "flops", "latency_ms")}
    return table


def format_cost_table(table: dict) -> str:
    lines = ["| model | subset | params | GFLOPs | peak mem (MiB) | latency (ms) |", "|---|---|---:|---:|---:|---:|"]
    for name, rows in table["models"].items():
        for subset, r in rows.items():
            lines.append(
                f"| {name} | {subset} | {r['params'] / 1e6:.3f}M | {r['flops'] / 1e9:.4f} | "
                f"{r['peak_memory_bytes'] / 2**20:.2f} | {r['latency_ms']:.2f} |"
            )
    for key, ratio in table.items():
        if key.endswith("_vs_teacher") or "_vs_" in key:
            lines.append("")
            lines.append(f"{key}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    return "\n".join(lines)


def write_cost(table: dict, out_dir: str | Path) -> dict[str, Path]:
    """``cost.json`` and ``cost.md``, each written whole or not at all."""
    from karmma.outputs import check_writable, write_json_atomic, write_text_atomic

    out = check_writable(out_dir, "--out")
    paths = {"json": out / "cost.json", "markdown": out / "cost.md"}
    write_json_atomic(paths["json"], table)
    write_text_atomic(paths["markdown"], format_cost_table(table) + "\n")
    return paths
