"""``distill.unimodal``: the student's unimodal heads learn from the teacher's prediction with
that modality alone (with or without the teacher-logit cache), and the late-fusion add-on's
``ensemble`` (``model.addons.late_fusion``) through the CLI."""

import json

import numpy as np
import pytest
import torch

from karmma.data.sources import load_paired
from karmma.engine.distill import cache_teacher_logits
from karmma.engine.runs import run_train
from karmma.io.checkpoint import load_model
from karmma.losses import kd_kl, unimodal_ce, unimodal_kd
from karmma.models import KARMMA
from karmma.models.late_fusion import late_fusion_of
from karmma.tasks import LogitDistillationTask
from tests.conftest import tiny_experiment, tiny_model_cfg
from tests.hostile import cli


def test_unimodal_kd_is_the_kl_of_each_present_sample_modality_pair():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 5, generator=g)
    present = torch.tensor([[True, False], [True, True], [False, True]])
    pairs = [(b, m) for b in range(3) for m in range(2) if present[b, m]]
    want = torch.stack([kd_kl(student[b, m][None], teacher[b, m][None], 2.0) for b, m in pairs]).mean()
    got = unimodal_kd({"a": student}, {"a": teacher}, present, 2.0)
    assert torch.allclose(got, want, atol=1e-6)
    assert unimodal_kd({"a": student}, {"a": teacher}, torch.zeros(3, 2, dtype=torch.bool), 2.0).item() == 0.0


def _teacher_and_student(tmp_path):
    tcfg = tiny_experiment(epochs=1)
    tcfg.model = tiny_model_cfg(addons={"late_fusion": {"loss_weight": 1.0, "ensemble": 1.0}})
    run_train(tcfg, tmp_path / "teacher")
    teacher = load_model(tmp_path / "teacher")[0]
    scfg = tiny_experiment(feature_set="student", epochs=1)
    data = load_paired(scfg.data, "train", "teacher")
    student = KARMMA(data.specs, data.tasks, tiny_model_cfg(addons={"late_fusion": {"loss_weight": 0.5}}))
    return teacher, student, data


def test_distilled_unimodal_heads_learn_from_the_teachers_single_modality_prediction(tmp_path):
    teacher, student, data = _teacher_and_student(tmp_path)
    b = data.get_batch(np.arange(12))
    mask = b.present.clone()
    mask[:4, 0] = False
    mask[~mask.any(1)] = b.present[~mask.any(1)]
    live = LogitDistillationTask(student, teacher, alpha=0.3, temperature=2.0, unimodal=True).train()
    cached = LogitDistillationTask(student, teacher, alpha=0.3, temperature=2.0, unimodal=True,
                                   cache=cache_teacher_logits(teacher.eval(), data, batch_size=5)).train()  # fmt: skip
    singles = {}  # the teacher's prediction with each modality alone, (B, M, C)
    for m in range(len(data.specs)):
        only = torch.zeros_like(mask)
        only[:, m] = True
        want = teacher(b.teacher_tokens, only)
        for k, v in want.items():
            assert torch.allclose(live.teacher_logits(b, only)[k], v, atol=1e-5)
            assert torch.allclose(cached.teacher_logits(b, only)[k], v, atol=1e-5)
            singles.setdefault(k, []).append(v)
    singles = {k: torch.stack(v, 1) for k, v in singles.items()}
    out = live(b, mask)
    uni = student(b.tokens, mask).extras["late_fusion"]["heads"]
    ce = unimodal_ce(uni, b.labels, mask)
    want = 0.3 * ce + 0.7 * unimodal_kd(uni, singles, mask, 2.0)
    assert torch.allclose(out["unimodal"], want, atol=1e-5) and not torch.allclose(out["unimodal"], ce)
    assert torch.allclose(cached(b, mask)["unimodal"], want, atol=1e-5)
    plain = LogitDistillationTask(student, teacher, alpha=0.3, temperature=2.0).train()
    assert torch.allclose(plain(b, mask)["unimodal"], ce, atol=1e-5)  # off: the heads' CE only


def test_cli_distils_unimodal_heads_and_late_fuses_them_or_says_what_is_missing(tmp_path, capsys):
    data = ["data.synthetic.num_train=64", "data.synthetic.num_val=32", "optim.batch_size=32",
            "optim.warmup_steps=2", "model.addons.late_fusion.loss_weight=1.0",
            "model.addons.late_fusion.ensemble=2.0"]  # fmt: skip
    sets = [a for s in [*data, "optim.epochs=2"] for a in ("--set", s)]
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", *sets, "--run-dir", tmp_path / "t", "--no-progress")
    assert rc == 0, err
    rc, _, err = cli(capsys, "distill", "--config", "demo_student", "--teacher", tmp_path / "t", *sets,
                     "--set", "distill.unimodal=true", "--run-dir", tmp_path / "s", "--no-progress")  # fmt: skip
    assert rc == 0, err
    last = json.loads((tmp_path / "s" / "history.json").read_text())[-1]
    assert last["unimodal"] > 0 and last["kd"] > 0
    assert late_fusion_of(load_model(tmp_path / "s")[0]).cfg.ensemble == 2.0
    rc, _, err = cli(capsys, "export", tmp_path / "s", "--out", tmp_path / "s.onnx")
    assert rc == 0, err
    rc, _, err = cli(capsys, "distill", "--config", "demo_student", "--teacher", tmp_path / "t",
                     "--set", "distill.unimodal=true", "--run-dir", tmp_path / "s2", "--no-progress")  # fmt: skip
    assert rc == 2 and "distill.unimodal" in err and "model.addons.late_fusion" in err, err


def test_shipped_presets_late_fuse_and_distil_the_unimodal_heads_on_utd_mhad_only():
    from karmma.config import load_config
    from karmma.presets import preset_path

    teacher, student = (load_config(preset_path(f"utd_mhad_{k}")) for k in ("teacher", "student"))
    late = [c.model.addons["late_fusion"] for c in (teacher, student)]
    assert late[0]["ensemble"] == late[1]["ensemble"] == 2.0  # docs/results/utd_mhad.md
    assert student.distill.unimodal
    demo = load_config(preset_path("demo_student"))
    assert demo.model.addons.get("late_fusion", {}).get("ensemble", 0.0) == 0.0 and not demo.distill.unimodal


def test_feature_kd_learns_from_the_late_fused_teacher_and_refuses_unimodal(tmp_path):
    from karmma.errors import ConfigError
    from karmma.tasks.feature_distillation import FeatureDistillationTask

    teacher, student, data = _teacher_and_student(tmp_path)
    task = FeatureDistillationTask(student, teacher, alpha=0.3, temperature=2.0, beta=1.0).train()
    b = data.get_batch(np.arange(12))
    out = task(b, b.present)
    fused = teacher.eval()(b.teacher_tokens, b.present)  # late-fused (late_fusion ensemble=1.0)
    kd = torch.stack([kd_kl(out["output"][k], fused[k], 2.0) for k in fused]).mean()
    assert torch.allclose(out["kd"], kd, atol=1e-5)
    cfg = tiny_experiment(feature_set="student")
    cfg.distill.task, cfg.distill.unimodal = "feature_kd", True
    with pytest.raises(ConfigError, match="distill.unimodal works with distill.task=logit_kd"):
        FeatureDistillationTask.from_config(student, teacher, cfg)
