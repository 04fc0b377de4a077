"""The GPU path's numerics: bf16 autocast and ``torch.compile``, both off by default.

``precision: bf16`` runs the model's forward under ``torch.autocast`` (bfloat16 matmuls and
attention; weights, optimizer state and losses stay float32 — losses cast their inputs up);
``compile: true`` compiles the model's forward in place (``nn.Module.compile``: its state dict
and checkpoints are unchanged). Both work on CPU too, where they are tested for correctness;
their speed is a GPU matter (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def compile_model(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """Compile ``model``'s forward in place when ``enabled`` (once: a compiled model is left as is)."""
    if enabled and not getattr(model, "_karmma_compiled", False):
        model.compile(dynamic=None)
        model._karmma_compiled = True
    return model
