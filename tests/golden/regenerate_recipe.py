"""Regenerate ``utd_recipe_tiny.safetensors``: the UTD-MHAD recipe's inference path at tiny sizes —
depth motion maps through ``motion_map_cnn``, sequences through ``temporal_conv``, KARMMA fusion,
and the ``late_fusion`` add-on (mixture pool, a table of per-subset weights) — its weights, fixed
inputs (every presence pattern of the four modalities) and eval-mode outputs.

Written by karmma 0.2 after the closed-core refactor, whose arithmetic was checked against files
karmma 0.1 wrote (tests/fixtures/release_0_1). Run only when a change to the recipe's inference
arithmetic is intended (then say so in the commit):

    python tests/golden/regenerate_recipe.py
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from safetensors.torch import save_file

from karmma.config import ModelConfig
from karmma.modalities import ModalitySpec
from karmma.models import KARMMA

SPECS = [
    ModalitySpec("depth", 3, 3 * 16 * 16),  # three views of 3 x 16 x 16 motion maps
    ModalitySpec("flow", 4, 6),
    ModalitySpec("inertial", 8, 6),
    ModalitySpec("skeleton", 8, 9),
]
TASKS = {"action": 5}
PATH = Path(__file__).with_name("utd_recipe_tiny.safetensors")
PRESENT = [p for p in itertools.product([0, 1], repeat=4) if any(p)]


def build() -> KARMMA:
    torch.manual_seed(2)
    cfg = ModelConfig(
        dim=16, depth=1, attn_heads=2, head_hidden=16, dropout=0.2, missing="token", image_encoder_width=4,
        encoders={"depth": "motion_map_cnn", "flow": "temporal_conv", "inertial": "temporal_conv",
                  "skeleton": "temporal_conv"},
        encoder_layers=2, encoder_tokens=4,
        addons={"late_fusion": {"loss_weight": 1.0, "ensemble": 2.0, "pool": "mixture", "weights": "per_subset"}},
    )  # fmt: skip
    model = KARMMA(SPECS, TASKS, cfg)
    model.embed.set_input_stats([torch.randn(s.dim) for s in SPECS], [torch.rand(s.dim) + 0.5 for s in SPECS])
    with torch.no_grad():  # off the tiny initial weights (outputs O(1)); a fitted-looking weights table
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape))
        lf = model.addons["late_fusion"]
        lf.weights.copy_(torch.rand(lf.weights.shape) * 2 + 0.1)
    return model.eval()


def inputs() -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randn(len(PRESENT), s.num_tokens, s.dim, generator=g) for s in SPECS]
    tokens[0] = tokens[0].sigmoid()  # motion maps are images in [0, 1]
    return tokens, torch.tensor(PRESENT, dtype=torch.bool)


def main() -> None:
    tokens, present = inputs()
    model = build()
    out = {f"input.{s.name}": t for s, t in zip(SPECS, tokens)} | {"input.present": present}
    out |= {f"weights.{k}": v.contiguous() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out |= {f"output.{t}": v for t, v in model(tokens, present).items()}
    save_file(out, str(PATH))
    print(f"wrote {PATH} ({len(out)} tensors)")


if __name__ == "__main__":
    main()
