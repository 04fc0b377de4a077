"""Full-pipeline cost per modality subset, as the paper's resource figure: the frozen extractors
(backbones on a clip's images) + the model (trainable encoders, fusion, heads). An absent
modality's extractor does not run. Next to it, :mod:`karmma.evaluation.cost` gives the model-only figures.

A clip's extractor cost comes from its extraction encoders: a backbone encoder runs
``images_per_clip`` images of ``resolution`` px through EfficientNet-Lite ``variant``; resampled
raw signals cost nothing to speak of.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from karmma.evaluation.cost import count_flops, count_params, latency_ms, peak_memory_bytes
from karmma.extractors.backbone import BackboneFlow, BackboneFrames, backbone
from karmma.modalities import all_subsets, subset_name
from karmma.models.karmma import KARMMA


def images_per_clip(encoder: object) -> int:
    if isinstance(encoder, BackboneFrames):
        return encoder.num_tokens * (2 if encoder.motion else 1)
    if isinstance(encoder, BackboneFlow):
        return encoder.num_tokens
    return 0


def _images(encoders: dict[str, object], subset: tuple[str, ...]) -> dict[tuple[str, int], int]:
    """(variant, resolution) -> images a clip sends through that backbone, for ``subset``."""
    out: dict[tuple[str, int], int] = {}
    for m in subset:
        n = images_per_clip(encoders[m])
        if n:
            key = (encoders[m].variant, encoders[m].resolution)
            out[key] = out.get(key, 0) + n
    return out


@functools.lru_cache(maxsize=64)
def _backbone_flops(variant: str, resolution: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        backbone(variant).forward_features(torch.zeros(1, 3, resolution, resolution))
    return int(counter.get_total_flops())


@functools.lru_cache(maxsize=64)
def _backbone_latency_ms(variant: str, resolution: int, images: int, repeats: int) -> float:
    x = torch.rand(images, 3, resolution, resolution)
    model, times = backbone(variant), []
    with torch.inference_mode():
        for _ in range(2):  # warm-up: oneDNN picks its kernels for this shape
            model.forward_features(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.forward_features(x)
            times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def extractor_flops(encoders: dict[str, object], subset: tuple[str, ...]) -> int:
    """FLOPs of the frozen backbones a clip with ``subset`` runs (0 for raw signals)."""
    return sum(n * _backbone_flops(*k) for k, n in _images(encoders, subset).items())


def pipeline_cost_table(pipelines: dict[str, tuple[KARMMA, dict[str, object]]], repeats: int = 5) -> dict:
    """``pipelines[name] = (model, extraction encoders by modality)`` -> per subset: params, GFLOPs,
    peak memory and CPU latency at batch 1 (one clip) of extractors + model, and the model alone."""
    table: dict = {"models": {}}
    for name, (model, encoders) in pipelines.items():
        model.eval()
        rows = {}
        for subset in all_subsets(model.modality_names):
            images = _images(encoders, subset)
            ext_flops = extractor_flops(encoders, subset)
            ext_params = sum(sum(p.numel() for p in backbone(v).parameters()) for v, _ in images)
            # Each modality's backbone runs on its own images (as extraction runs it), so the latency
            # sums per modality; FLOPs and parameters do not depend on that.
            ext_ms = sum(_backbone_latency_ms(v, r, n, repeats)
                         for m in subset for (v, r), n in _images(encoders, (m,)).items())  # fmt: skip
            model_ms = latency_ms(model, subset, 1, max(repeats, 10))
            model_params, model_flops = count_params(model, subset), count_flops(model, subset)
            rows[subset_name(subset)] = {
                "params": ext_params + model_params,
                "flops": ext_flops + model_flops,
                "latency_ms": ext_ms + model_ms,
                "peak_memory_bytes": peak_memory_bytes(model, subset),
                "model_params": model_params,
                "model_flops": model_flops,
                "model_latency_ms": model_ms,
                "extractor_images": sum(images.values()),
            }
        table["models"][name] = rows
    if {"teacher", "student"} <= set(pipelines):
        t, s = table["models"]["teacher"], table["models"]["student"]
        full = subset_name(tuple(pipelines["teacher"][0].modality_names))
        keys = ("params", "flops", "latency_ms", "model_flops")
        table["student_vs_teacher"] = {k: s[full][k] / t[full][k] for k in keys}
    return table


def format_pipeline_cost(table: dict) -> str:
    lines = [
        "| model | subset | params (all) | GFLOPs (all) | CPU latency ms (all) | GFLOPs (model only) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, rows in table["models"].items():
        for subset, r in rows.items():
            lines.append(
                f"| {name} | {subset} | {r['params'] / 1e6:.2f}M | {r['flops'] / 1e9:.3f} | "
                f"{r['latency_ms']:.1f} | {r['model_flops'] / 1e9:.4f} |"
            )
    if "student_vs_teacher" in table:
        ratio = table["student_vs_teacher"]
        lines += ["", "student / teacher, all modalities: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items())]
    return "\n".join(lines)
