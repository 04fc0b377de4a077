"""Every registered model part, in every combination (missing-modality strategy × fusion block ×
encoder × add-on), on every presence pattern: the forward runs, what an absent modality holds
cannot change the output, and the ONNX export matches PyTorch. A new registry entry is covered by
adding it to the registry, nothing else."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from karmma.config import ModelConfig
from karmma.modalities import ModalitySpec, all_subsets, subset_mask
from karmma.models import KARMMA
from karmma.registries import ADDONS, ENCODERS, FUSION, MISSING

SPECS = [ModalitySpec("rgb", 3, 6), ModalitySpec("flow", 2, 9), ModalitySpec("audio", 4, 5)]
TASKS = {"verb": 3, "noun": 4}
# Encoders that take images of a fixed layout are tested where their inputs exist (motion maps,
# raw frames); the matrix runs the sequence encoders on every modality.
IMAGE_ENCODERS = {"motion_map_cnn", "efficientnet_lite0"}
ADDON_OPTIONS = {"late_fusion": {"loss_weight": 1.0, "ensemble": 2.0, "pool": "mixture", "weights": "per_subset"}}
MATRIX = list(
    itertools.product(
        MISSING.names(),
        FUSION.names(),
        [e for e in ENCODERS.names() if e not in IMAGE_ENCODERS],
        [None, *ADDONS.names()],
    )
)


def _model(missing: str, fusion: str, encoder: str, addon: str | None) -> KARMMA:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=8, depth=1, attn_heads=2, head_hidden=8, dropout=0.0, missing=missing, fusion=fusion,
                      encoders={"audio": encoder}, encoder_layers=1,
                      addons={addon: ADDON_OPTIONS.get(addon, {})} if addon else {})  # fmt: skip
    return KARMMA(SPECS, TASKS, cfg).eval()


def test_the_matrix_covers_every_built_in_entry():
    from karmma.registries import _BUILT_IN

    covered = {MISSING: {m for m, *_ in MATRIX}, FUSION: {f for _, f, *_ in MATRIX}, ADDONS: {a for *_, a in MATRIX}}
    covered[ENCODERS] = {e for _, _, e, _ in MATRIX} | IMAGE_ENCODERS
    for registry, names in covered.items():
        assert set(_BUILT_IN[registry]) <= names, registry.what


@pytest.mark.parametrize(("missing", "fusion", "encoder", "addon"), MATRIX)
def test_every_combination_runs_and_is_blind_to_absent_inputs(missing, fusion, encoder, addon):
    model = _model(missing, fusion, encoder, addon)
    names = [s.name for s in SPECS]
    g = torch.Generator().manual_seed(1)
    for subset in all_subsets(names):
        present = subset_mask(subset, names, 2)
        a = [torch.randn(2, s.num_tokens, s.dim, generator=g) for s in SPECS]
        b = [x if s.name in subset else 100 * torch.randn(x.shape, generator=g) for s, x in zip(SPECS, a)]
        with torch.no_grad():
            out_a, out_b = model(a, present), model(b, present)
        for task, n in TASKS.items():
            assert out_a[task].shape == (2, n) and torch.isfinite(out_a[task]).all()
            torch.testing.assert_close(out_a[task], out_b[task], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("missing", "addon"), list(itertools.product(MISSING.names(), [None, *ADDONS.names()])))
def test_every_strategy_and_add_on_exports_to_onnx_and_matches(missing, addon, tmp_path):
    from karmma.deploy.export import export_onnx, verify_onnx
    from karmma.io.checkpoint import model_metadata

    model = _model(missing, "transformer", "temporal_conv", addon)
    path = export_onnx(model, model_metadata(model), tmp_path / "m.onnx")
    report = verify_onnx(model, path)
    assert report["ok"], report
    assert max(report["max_abs_diff"].values()) < 1e-4 and np.isfinite(list(report["max_abs_diff"].values())).all()
