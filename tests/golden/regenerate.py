"""Regenerate ``karmma_tiny.safetensors``: a tiny KARMMA per missing-modality strategy, its
weights, fixed inputs (every presence pattern of 3 modalities) and its eval-mode outputs.

Run only when a change to the model's arithmetic is intended (then say so in the commit):

    python tests/golden/regenerate.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from karmma.config import ModelConfig
from karmma.modalities import ModalitySpec
from karmma.models import KARMMA

SPECS = [ModalitySpec("rgb", 4, 6), ModalitySpec("flow", 3, 5), ModalitySpec("audio", 2, 4)]
TASKS = {"verb": 3, "noun": 4, "action": 5}
MISSING = ("token", "zero", "attn_mask")
PATH = Path(__file__).with_name("karmma_tiny.safetensors")
PRESENT = [[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]]


def build(missing: str) -> KARMMA:
    torch.manual_seed(1)
    cfg = ModelConfig(dim=16, depth=2, attn_heads=2, head_hidden=16, dropout=0.1, missing=missing)
    model = KARMMA(SPECS, TASKS, cfg)
    model.embed.set_input_stats([torch.randn(s.dim) for s in SPECS], [torch.rand(s.dim) + 0.5 for s in SPECS])
    with torch.no_grad():  # move off the tiny initial weights, so that the outputs are O(1)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    return model.eval()


def inputs() -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randn(len(PRESENT), s.num_tokens, s.dim, generator=g) for s in SPECS]
    return tokens, torch.tensor(PRESENT, dtype=torch.bool)


def main() -> None:
    tokens, present = inputs()
    out = {f"input.{s.name}": t for s, t in zip(SPECS, tokens)} | {"input.present": present}
    for missing in MISSING:
        model = build(missing)
        out |= {f"{missing}.weights.{k}": v.contiguous() for k, v in model.state_dict().items()}
        with torch.no_grad():
            out |= {f"{missing}.output.{t}": v for t, v in model(tokens, present).items()}
    save_file(out, str(PATH))
    print(f"wrote {PATH} ({len(out)} tensors)")


if __name__ == "__main__":
    main()
