"""The two training aids chosen on UTD-MHAD's validation subject: rotation of raw 3-vectors
(``augment.rotate``) and the unimodal auxiliary loss (``model.addons.late_fusion.loss_weight``)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from karmma.config import AugmentConfig, load_config
from karmma.engine.augment import VectorRotate, build_augmentation
from karmma.errors import ConfigError, DataError
from karmma.evaluation.cost import count_params
from karmma.losses import unimodal_ce
from karmma.modalities import ModalitySpec
from karmma.models import KARMMA
from karmma.models.late_fusion import LateFusion, late_fusion_of
from karmma.presets import preset_path
from tests.conftest import random_batch, tiny_model_cfg
from tests.hostile import cli


def _late(**options) -> dict:
    return {"late_fusion": {"loss_weight": 1.0, **options}}


def _rot_y(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])  # x turns towards z


def test_vector_rotate_turns_every_3_vector_of_a_sample_by_one_drawn_angle():
    x = torch.randn(3, 5, 6)  # 2 vectors per token, e.g. a joint's position and velocity
    rotate = VectorRotate([0.0, 1.0, 0.0]).train()
    torch.manual_seed(4)
    out = rotate(x)
    torch.manual_seed(4)
    thetas = 1.0 * (2.0 * torch.rand(3) - 1.0)  # the draws VectorRotate makes for this seed
    for b in range(3):
        want = (x[b].reshape(5, 2, 3) @ _rot_y(float(thetas[b])).T).reshape(5, 6)
        assert torch.allclose(out[b], want, atol=1e-6)
    assert torch.allclose(out[..., 1::3], x[..., 1::3])  # about y: the vertical values stay
    assert not torch.allclose(out, x)
    assert torch.equal(rotate.eval()(x), x)  # evaluation never rotates
    assert torch.equal(VectorRotate([0.0, 0.0, 0.0]).train()(x), x)
    assert VectorRotate([0.3, 0.3, 0.3]).train()(torch.zeros(0, 5, 6)).shape == (0, 5, 6)


def test_rotate_is_checked_against_the_config_and_the_data():
    specs = [ModalitySpec("skeleton", 4, 6), ModalitySpec("audio", 2, 4)]
    with pytest.raises(ConfigError, match=r"augment.rotate.skeleton.*three max angles"):
        AugmentConfig(rotate={"skeleton": [0.0, 1.0]}).validate()
    with pytest.raises(ConfigError, match=r"in \[0, pi\]"):
        AugmentConfig(rotate={"skeleton": [0.0, 4.0, 0.0]}).validate()
    with pytest.raises(
        ConfigError, match=r"augment.rotate names modality \['depth'\]; the data has \['audio', 'skeleton'\]"
    ):
        build_augmentation(specs, AugmentConfig(rotate={"depth": [0.0, 1.0, 0.0]}))
    with pytest.raises(DataError, match=r"augment.rotate.audio: its tokens have 4 values, not a whole number"):
        build_augmentation(specs, AugmentConfig(rotate={"audio": [0.0, 1.0, 0.0]}))
    with pytest.raises(ConfigError, match=r"augment.rotate.skeleton\[1\]: expected float, got str .abc."):
        load_config(preset_path("utd_mhad_teacher"), ["augment.rotate={skeleton: [0, abc, 0]}"])
    cfg = load_config(preset_path("utd_mhad_teacher"), ["augment.rotate={skeleton: [0, 1, 0]}"]).augment
    assert cfg.rotate == {"skeleton": [0.0, 1.0, 0.0]} and all(type(a) is float for a in cfg.rotate["skeleton"])


def test_rotation_reaches_only_the_named_present_modality_in_training():
    specs = [ModalitySpec("skeleton", 4, 6), ModalitySpec("audio", 2, 4)]
    augment = build_augmentation(specs, AugmentConfig(rotate={"skeleton": [0.5, 0.5, 0.5]}))
    model = KARMMA(specs, {"a": 3}, tiny_model_cfg())
    tokens, present = random_batch(specs, 4)
    model.eval()
    still = model.encode(tokens, present)  # evaluation: the engine passes no pipeline
    model.train()
    torch.manual_seed(0)
    turned = model.encode(tokens, present, augment)
    assert not torch.allclose(turned[0], still[0]) and torch.equal(turned[1], still[1])


def test_unimodal_ce_averages_over_present_sample_modality_pairs_only():
    logits = {"action": torch.randn(3, 2, 4)}
    labels = {"action": torch.tensor([0, 3, 1])}
    present = torch.tensor([[True, False], [True, True], [False, False]])
    pairs = [(0, 0), (1, 0), (1, 1)]
    want = sum(F.cross_entropy(logits["action"][b, m][None], labels["action"][b][None]) for b, m in pairs) / 3
    assert torch.allclose(unimodal_ce(logits, labels, present), want)
    assert unimodal_ce(logits, labels, torch.zeros(3, 2, dtype=torch.bool)).item() == 0.0


def test_unimodal_heads_are_training_only_by_default(specs, tasks):
    model = KARMMA(specs, tasks, tiny_model_cfg(addons=_late())).eval()
    lf = late_fusion_of(model)
    tokens, present = random_batch(specs, 5)
    before = model(tokens, present)
    assert "late_fusion" not in before.extras  # inference never runs the heads ...
    unimodal = lf.unimodal(before.encoded)
    assert {k: v.shape for k, v in unimodal.items()} == {t: (5, len(specs), n) for t, n in tasks.items()}
    heads = model.train()(tokens, present).extras["late_fusion"]["heads"]  # ... training does
    assert {k: v.shape for k, v in heads.items()} == {k: v.shape for k, v in unimodal.items()}
    model.eval()
    with torch.no_grad():
        for p in lf.heads.parameters():
            p.add_(1.0)
    after = model(tokens, present)
    assert all(torch.equal(before[t], after[t]) for t in tasks)  # ... nor depends on them
    plain = KARMMA(specs, tasks, tiny_model_cfg())
    assert count_params(model, tuple(s.name for s in specs)) == count_params(plain, tuple(s.name for s in specs))
    assert late_fusion_of(plain) is None and "late_fusion" not in plain.train()(tokens, present).extras
    with pytest.raises(ConfigError, match=r"model.addons.late_fusion: loss_weight=-1.0 must be"):
        KARMMA(specs, tasks, tiny_model_cfg(addons=_late(loss_weight=-1.0)))


def test_unimodal_loss_is_learned_by_teacher_and_distilled_student_through_the_cli(tmp_path, capsys):
    """The shipped demo presets with the unimodal loss on: the per-modality heads learn (their
    loss falls), the distilled student logs both objectives, and the student exports to ONNX."""
    data = ["data.synthetic.num_train=64", "data.synthetic.num_val=32", "optim.batch_size=32",
            "optim.warmup_steps=2", "optim.lr=0.003", "model.addons.late_fusion.loss_weight=1.0"]  # fmt: skip
    sets = [a for s in [*data, "optim.epochs=25"] for a in ("--set", s)]
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", *sets, "--run-dir", tmp_path / "t", "--no-progress")
    assert rc == 0, err
    history = json.loads((tmp_path / "t" / "history.json").read_text())
    assert history[-1]["unimodal"] < 0.75 * history[0]["unimodal"], history
    sets = [a for s in [*data, "optim.epochs=2"] for a in ("--set", s)]
    rc, _, err = cli(capsys, "distill", "--config", "demo_student", "--teacher", tmp_path / "t", *sets,
                     "--run-dir", tmp_path / "s", "--no-progress")  # fmt: skip
    assert rc == 0, err
    last = json.loads((tmp_path / "s" / "history.json").read_text())[-1]
    assert last["unimodal"] > 0 and last["kd"] > 0 and last["ce"] > 0
    rc, _, err = cli(capsys, "export", tmp_path / "s", "--out", tmp_path / "s.onnx")
    assert rc == 0, err
    assert (tmp_path / "s.onnx").stat().st_size > 10_000


def test_unimodal_ensemble_late_fuses_the_present_modalities_heads_at_inference_only(specs, tasks):
    """``model.addons.late_fusion.ensemble=w``: outside training the output is (log softmax(fused) + w * the
    mean over present modalities of the unimodal heads' log softmax) / (1 + w); training, the fused
    logits; an absent modality's head has no effect; its parameters count in the cost."""
    plain = KARMMA(specs, tasks, tiny_model_cfg(addons=_late(), dropout=0.2))
    fused = KARMMA(specs, tasks, tiny_model_cfg(addons=_late(ensemble=2.0), dropout=0.2))
    fused.load_state_dict(plain.state_dict())
    tokens, present = random_batch(specs, 6)
    present[:3, 0] = False  # half the batch lacks the first modality
    plain.eval(), fused.eval()
    logits = plain(tokens, present)
    unimodal = late_fusion_of(plain).unimodal(logits.encoded)
    out = fused(tokens, present)
    experts = out.extras["late_fusion"]  # what was fused: the plain output and the heads
    assert all(torch.equal(experts["fused"][t], logits[t]) and torch.equal(experts["heads"][t], unimodal[t])
               for t in tasks)  # fmt: skip
    for t in tasks:
        uni = unimodal[t].log_softmax(-1)
        for b in range(6):
            want = (logits[t][b].log_softmax(-1) + 2.0 * uni[b][present[b]].mean(0)) / 3.0
            assert torch.allclose(out[t][b], want, atol=1e-5)
    assert not torch.allclose(out["verb"], logits["verb"])
    with torch.no_grad():
        for p in late_fusion_of(fused).heads[0].parameters():
            p.add_(1.0)
    after = fused(tokens, present)
    assert torch.allclose(after["verb"][:3], out["verb"][:3], atol=1e-6)  # absent there: no effect
    assert not torch.allclose(after["verb"][3:], out["verb"][3:])
    fused.load_state_dict(plain.state_dict())
    plain.train(), fused.train()
    torch.manual_seed(0)
    a = plain(tokens, present)
    torch.manual_seed(0)
    b = fused(tokens, present)
    assert all(torch.equal(a[t], b[t]) for t in tasks)  # training fits the fused logits
    names = tuple(s.name for s in specs)
    heads = [sum(p.numel() for p in h.parameters()) for h in late_fusion_of(fused).heads]
    assert count_params(fused, names) == count_params(plain, names) + sum(heads)
    assert count_params(fused, names[1:]) == count_params(plain, names[1:]) + sum(heads[1:])


def test_unimodal_ensemble_needs_the_unimodal_heads(specs, tasks):
    with pytest.raises(ConfigError, match=r"model.addons.late_fusion: loss_weight=0.0 must be a finite number > 0"):
        KARMMA(specs, tasks, tiny_model_cfg(addons=_late(loss_weight=0.0, ensemble=1.0)))
    with pytest.raises(ConfigError, match=r"model.addons.late_fusion: ensemble=nan must be a finite number >= 0"):
        LateFusion.parse({"loss_weight": 1.0, "ensemble": float("nan")}, "late_fusion")


def test_unimodal_ensemble_model_exports_to_onnx_and_matches_on_every_subset(tmp_path, specs, tasks):
    from karmma.deploy.export import export_onnx, verify_onnx
    from karmma.io.checkpoint import model_metadata

    model = KARMMA(specs, tasks, tiny_model_cfg(addons=_late(ensemble=2.0), dropout=0.2))
    path = export_onnx(model, model_metadata(model), tmp_path / "m.onnx")
    report = verify_onnx(model, path)
    assert len(report["max_abs_diff"]) == 8 and report["ok"], report  # 7 subsets + a per-token mask
