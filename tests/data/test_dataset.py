import numpy as np
import pytest
import torch

from karmma.data.dataset import FeatureSet, PairedFeatureSet, tokens_from_mapping, validate_features
from karmma.errors import DataError
from karmma.modalities import ModalitySpec

SPECS = [ModalitySpec("rgb", 2, 3), ModalitySpec("audio", 1, 2)]


def make(n=4, present=None, labels=None, feats=None):
    rng = np.random.default_rng(0)
    return FeatureSet(
        specs=SPECS,
        features=feats or {"rgb": rng.normal(size=(n, 2, 3)), "audio": rng.normal(size=(n, 1, 2))},
        present=present if present is not None else np.ones((n, 2), bool),
        labels={"action": labels if labels is not None else np.arange(n) % 3},
        ids=[f"s{i}" for i in range(n)],
        tasks={"action": 3},
        source="test.h5",
    )


def test_batch_zero_fills_absent_and_keeps_order():
    present = np.array([[1, 1], [1, 0], [0, 1], [1, 1]], bool)
    fs = make(present=present)
    b = fs.get_batch([3, 1, 2])
    assert b.ids == ["s3", "s1", "s2"]
    assert torch.equal(b.present, torch.from_numpy(present[[3, 1, 2]]))
    assert (b.tokens[1][1] == 0).all() and (b.tokens[0][2] == 0).all()
    assert torch.equal(b.labels["action"], torch.tensor([0, 1, 2]))


def test_empty_batch():
    b = make().get_batch([])
    assert len(b) == 0 and b.tokens[0].shape == (0, 2, 3) and b.present.shape == (0, 2)


def test_sample_without_modality_is_named():
    with pytest.raises(DataError, match=r"test\.h5.*s1.*no modality"):
        make(present=np.array([[1, 1], [0, 0], [1, 0], [0, 1]], bool))


def test_unknown_class_is_named():
    with pytest.raises(DataError, match=r"unknown class id.*\[7\].*s2"):
        make(labels=np.array([0, 1, 7, 2]))


def test_wrong_shape_is_named():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match=r"test\.h5.*'rgb'.*\(4, 2, 4\)"):
        make(feats={"rgb": rng.normal(size=(4, 2, 4)), "audio": rng.normal(size=(4, 1, 2))})


def test_nan_in_present_modality_is_named_but_absent_nan_is_ignored():
    rng = np.random.default_rng(0)
    rgb = rng.normal(size=(4, 2, 3))
    rgb[2, 0, 0] = np.nan
    present = np.ones((4, 2), bool)
    fs = make(feats={"rgb": rgb, "audio": rng.normal(size=(4, 1, 2))}, present=present)
    with pytest.raises(DataError, match=r"training split, modality 'rgb' of sample\(s\) \['s2'\].*NaN"):
        validate_features(fs, "training")
    present[2, 0] = False
    fs = make(feats={"rgb": rgb, "audio": rng.normal(size=(4, 1, 2))}, present=present)
    validate_features(fs, "training")
    assert fs.values_checked and torch.isfinite(fs.get_batch([2]).tokens[0]).all()


def test_paired_requires_same_samples():
    a, b = make(), make()
    b.ids = ["x"] * 4
    with pytest.raises(DataError, match="different samples"):
        PairedFeatureSet(a, b)
    p = PairedFeatureSet(make(), make())
    assert p.get_batch([0, 1]).teacher_tokens is not None


def test_tokens_from_mapping():
    tokens, present = tokens_from_mapping(SPECS, {"audio": np.ones((1, 2))}, "x.npz")
    assert present.tolist() == [[False, True]] and tokens[0].shape == (1, 2, 3)
    with pytest.raises(DataError, match="no modality"):
        tokens_from_mapping(SPECS, {}, "x.npz")
    with pytest.raises(DataError, match="unknown modality"):
        tokens_from_mapping(SPECS, {"depth": np.ones((1, 2))}, "x.npz")
    with pytest.raises(DataError, match="shape"):
        tokens_from_mapping(SPECS, {"audio": np.ones((2, 2))}, "x.npz")
