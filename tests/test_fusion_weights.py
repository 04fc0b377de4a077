"""``model.fusion_weights: validation``: the late fusion's weights, fitted on the validation split
after training (karmma/fusion_weights.py), carried by checkpoints, evaluation and ONNX export."""

import json

import numpy as np
import pytest
import torch

from karmma.checkpoint import load_model
from karmma.config import ModelConfig, load_config
from karmma.data.dataset import FeatureSet
from karmma.errors import ConfigError, DataError
from karmma.fusion_weights import fit_fusion_weights, fusion_weight_names
from karmma.modalities import ModalitySpec
from karmma.models import KARMMA
from karmma.presets import preset_path
from karmma.runs import run_train
from karmma.tasks import ClassificationTask
from karmma.train import build_model, fit
from tests.conftest import random_batch, tiny_experiment, tiny_model_cfg
from tests.hostile import cli


def _model(specs, tasks, **kw):
    return KARMMA(specs, tasks, tiny_model_cfg(unimodal_weight=1.0, unimodal_ensemble=2.0, dropout=0.2, **kw))


def test_weighted_late_fusion_is_the_normalised_pool_of_the_present_experts(specs, tasks):
    """Output = (a log softmax(fused) + sum over present m of b_m log softmax(head_m)) / (a + sum b_m);
    an absent modality's weight has no effect; before fitting the weights are (1, w, .., w)."""
    model = _model(specs, tasks, fusion_weights="validation").eval()
    assert model.fusion_weights.tolist() == [1.0, 2.0, 2.0, 2.0]
    tokens, present = random_batch(specs, 6)
    present[:3, 0] = False
    present[5, 1:] = False  # the first modality alone
    w = torch.tensor([0.5, 3.0, 0.25, 1.5])
    model.fusion_weights.copy_(w)
    out = model(tokens, present)
    fused, uni = model.forward_experts(tokens, present)
    for t in tasks:
        for b in range(6):
            keep = present[b]
            num = w[0] * fused[t][b].log_softmax(-1) + (w[1:][keep, None] * uni[t][b][keep].log_softmax(-1)).sum(0)
            assert torch.allclose(out[t][b], num / (w[0] + w[1:][keep].sum()), atol=1e-5)
    model.fusion_weights[1] = 100.0
    after = model(tokens, present)
    assert torch.allclose(after["verb"][:3], out["verb"][:3], atol=1e-6)  # absent there
    assert not torch.allclose(after["verb"][3:], out["verb"][3:])
    equal = _model(specs, tasks).eval()
    equal.load_state_dict({k: v for k, v in model.state_dict().items() if k != "fusion_weights"})
    model.fusion_weights.copy_(torch.tensor([1.0, 2.0, 2.0, 2.0]))
    one = torch.zeros_like(present)
    one[:, 2] = True  # one modality present: the starting weights give the equal rule exactly
    assert all(torch.allclose(model(tokens, one)[t], equal(tokens, one)[t], atol=1e-5) for t in tasks)


def _sensors(n: int, seed: int) -> FeatureSet:
    """Two sensors: ``good`` carries the label (one-hot, a little noise), ``bad`` is noise."""
    g = np.random.default_rng(seed)
    labels = g.integers(0, 4, n)
    good = np.eye(4, dtype=np.float32)[labels][:, None] * 3 + g.normal(0, 0.5, (n, 1, 4)).astype(np.float32)
    specs = [ModalitySpec("good", 1, 4), ModalitySpec("bad", 1, 4)]
    features = {"good": good, "bad": g.normal(0, 3, (n, 1, 4)).astype(np.float32)}
    ids = [f"c{i}" for i in range(n)]
    return FeatureSet(specs, features, np.ones((n, 2), bool), {"action": labels}, ids, {"action": 4})


def test_the_fit_gives_a_sensor_that_carries_nothing_a_small_weight():
    """The experts here are fixed functions of the inputs (no training): the fused output and the
    ``bad`` head are noise, the ``good`` head reads the label off its sensor."""
    data = _sensors(200, 0)
    model = KARMMA(data.specs, data.tasks, tiny_model_cfg(unimodal_weight=1.0, unimodal_ensemble=2.0,
                                                          fusion_weights="validation"))  # fmt: skip

    def experts(tokens, present):
        good, bad = tokens
        return {"action": bad[:, 0].flip(-1)}, {"action": torch.stack([good[:, 0], bad[:, 0]], 1)}

    model.forward_experts = experts
    weights = fit_fusion_weights(model, data)
    named = fusion_weight_names(model)
    assert torch.equal(model.fusion_weights, weights) and list(named) == ["fused", "good", "bad"]
    assert named["good"] > 1.0 and named["bad"] < 0.1 and named["fused"] < 0.1, named
    assert model.training  # the mode it was in (a fresh module trains)
    unlabelled = _sensors(8, 1)
    unlabelled.labelled, unlabelled.labels["action"][:] = False, -1
    with pytest.raises(DataError, match="no labels to fit the late-fusion weights"):
        fit_fusion_weights(model, unlabelled)
    assert torch.equal(model.fusion_weights, weights)  # untouched


def test_training_fits_them_on_the_validation_split_and_every_tool_uses_them(tmp_path, capsys):
    sets = ["model.unimodal_weight=1.0", "model.unimodal_ensemble=2.0", "model.fusion_weights=validation",
            "optim.epochs=2", "optim.warmup_steps=2", "data.synthetic.num_train=64",
            "data.synthetic.num_val=32"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    rc, out, err = cli(capsys, "train", "--config", "demo_teacher", *args, "--run-dir", tmp_path / "t", "--no-progress")
    assert rc == 0, err
    assert "late-fusion weights fitted on the validation split: fused " in out and " audio " in out
    model, meta = load_model(tmp_path / "t")
    saved = json.loads((tmp_path / "t" / "final" / "model.json").read_text())["fusion_weights"]
    assert meta["fusion_weights"] == saved == fusion_weight_names(model)
    assert model.fusion_weights.tolist() != [1.0, 2.0, 2.0, 2.0]  # fitted, not the starting weights
    rc, _, err = cli(capsys, "export", tmp_path / "t", "--out", tmp_path / "t.onnx")
    assert rc == 0, err
    rc, _, err = cli(capsys, "distill", "--config", "demo_student", "--teacher", tmp_path / "t", *args,
                     "--run-dir", tmp_path / "s", "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert set(load_model(tmp_path / "s")[1]["fusion_weights"]) == {"fused", "rgb", "flow", "audio"}


def test_without_a_validation_split_it_stops_before_training_and_says_how(tmp_path):
    cfg = tiny_experiment()
    cfg.model = tiny_model_cfg(unimodal_weight=1.0, unimodal_ensemble=2.0, fusion_weights="validation")
    cfg.validate()
    from karmma.data.sources import load_split

    train = load_split(cfg.data, "train")
    with pytest.raises(ConfigError, match="data.val") as err:
        fit(ClassificationTask(build_model(cfg, train)), train, cfg, tmp_path / "run")
    assert "model.fusion_weights=equal" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
    run_train(tiny_experiment(), tmp_path / "plain")  # equal shares: nothing fitted, nothing recorded
    assert "fusion_weights" not in load_model(tmp_path / "plain")[1]


def test_the_config_names_the_choices_and_what_it_needs():
    with pytest.raises(ConfigError, match="'equal' or 'validation'"):
        ModelConfig(fusion_weights="learned").validate()
    with pytest.raises(ConfigError, match="model.unimodal_ensemble > 0"):
        ModelConfig(unimodal_weight=1.0, fusion_weights="validation").validate()
    for who in ("teacher", "student"):  # docs/utd_mhad.md: chosen on the four validation folds
        assert load_config(preset_path(f"utd_mhad_{who}")).model.fusion_weights == "validation"
    assert load_config(preset_path("demo_teacher")).model.fusion_weights == "equal"


def test_the_fit_reads_fewer_samples_where_their_log_probabilities_would_not_fit_in_memory():
    from types import SimpleNamespace

    from karmma.fusion_weights import sample_budget

    epic = SimpleNamespace(specs=[None] * 3, tasks={"verb": 97, "noun": 300, "action": 3806})
    assert sample_budget(epic) == 256 * 2**20 // (7 * 4 * 4203 * 4) == 570
    utd = SimpleNamespace(specs=[None] * 4, tasks={"action": 27})
    assert sample_budget(utd) == 2048  # the whole 108-clip validation subject, and then some
