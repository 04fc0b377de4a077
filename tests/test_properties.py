"""Property tests (hypothesis) over presence masks and batch shapes: model and collate."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from karmma.data.dataset import FeatureSet
from karmma.modalities import ModalitySpec
from karmma.models import KARMMA
from tests.conftest import tiny_model_cfg

SPECS = [ModalitySpec("a", 3, 4), ModalitySpec("b", 2, 5), ModalitySpec("c", 1, 3)]
TASKS = {"x": 4, "y": 2}
MODELS = {m: KARMMA(SPECS, TASKS, tiny_model_cfg(missing=m)).eval() for m in ("token", "zero", "attn_mask")}

masks = st.integers(0, 16).flatmap(
    lambda b: st.lists(st.lists(st.booleans(), min_size=3, max_size=3).filter(any), min_size=b, max_size=b)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=masks, seed=st.integers(0, 2**16), missing=st.sampled_from(list(MODELS)))
def test_model_finite_shaped_and_blind_to_absent_values(rows, seed, missing):
    model = MODELS[missing]
    b = len(rows)
    present = torch.tensor(rows, dtype=torch.bool).reshape(b, 3)
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randn(b, s.num_tokens, s.dim, generator=g) for s in SPECS]
    with torch.no_grad():
        out = model(tokens, present)
        noisy = [torch.where(present[:, m, None, None], t, torch.randn_like(t) * 1e3) for m, t in enumerate(tokens)]
        out2 = model(noisy, present)
    for k, n in TASKS.items():
        assert out[k].shape == (b, n)
        assert torch.isfinite(out[k]).all()
        assert torch.allclose(out[k], out2[k], atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(rows=masks.filter(len), pick=st.lists(st.integers(0, 15), max_size=12), seed=st.integers(0, 1000))
def test_collate_roundtrip(rows, pick, seed):
    n = len(rows)
    rng = np.random.default_rng(seed)
    present = np.array(rows, bool).reshape(n, 3)
    feats = {s.name: rng.normal(size=(n, *s.shape)).astype(np.float32) for s in SPECS}
    fs = FeatureSet(SPECS, feats, present, {"x": rng.integers(0, 4, n), "y": rng.integers(0, 2, n)},
                    [f"s{i}" for i in range(n)], TASKS)  # fmt: skip
    idx = [i % n for i in pick]
    batch = fs.get_batch(idx)
    assert batch.ids == [f"s{i}" for i in idx]
    assert batch.present.tolist() == present[idx].tolist()
    for m, s in enumerate(SPECS):
        assert batch.tokens[m].shape == (len(idx), *s.shape)
        for j, i in enumerate(idx):
            expected = feats[s.name][i] if present[i, m] else np.zeros(s.shape, np.float32)
            np.testing.assert_array_equal(batch.tokens[m][j].numpy(), expected)
