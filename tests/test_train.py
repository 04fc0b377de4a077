"""Tiny end-to-end runs: train -> resume -> distill -> evaluate, on CPU inside pytest."""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from karmma.data.sources import load_paired, load_split
from karmma.engine.distill import cache_teacher_logits, distill
from karmma.engine.runs import run_distill, run_train
from karmma.evaluation.evaluate import evaluate_models, write_results
from karmma.io.checkpoint import latest_checkpoint, load_model
from karmma.models import KARMMA
from karmma.tasks import LogitDistillationTask
from tests.conftest import tiny_experiment


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), k


def test_train_learns_and_writes_checkpoints(tmp_path):
    cfg = tiny_experiment(epochs=3)
    res = run_train(cfg, tmp_path / "t")
    assert res.global_step == 3 * 3
    assert (tmp_path / "t" / "final" / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path / "t").name == "step-00000009"
    assert len(list((tmp_path / "t" / "checkpoints").glob("step-*"))) == cfg.keep_checkpoints
    model, meta = load_model(tmp_path / "t")
    assert meta["feature_set"] == "teacher" and meta["tasks"] == {"verb": 3, "noun": 4, "action": model.tasks["action"]}


def test_the_shipped_teacher_preset_fits_32_samples(tmp_path):
    """Learning, not just running: the demo teacher preset (dropout and modality dropout on)
    must fit 32 training samples with all modalities, and its loss must fall."""
    from karmma.config import load_config
    from karmma.engine.train import quick_eval
    from karmma.presets import preset_path

    sets = ["data.synthetic.num_train=32", "data.synthetic.num_val=32", "data.synthetic.absent_rate=0.0",
            "optim.epochs=60", "optim.batch_size=32", "optim.warmup_steps=5", "optim.lr=0.003"]  # fmt: skip
    cfg = load_config(preset_path("demo_teacher"), sets)
    assert cfg.model.dropout > 0 and cfg.modality_dropout.p > 0
    res = run_train(cfg, tmp_path / "t")
    assert res.history[-1]["ce"] < 0.5 * res.history[0]["ce"]
    model, _ = load_model(tmp_path / "t")
    train = load_split(cfg.data, "train")
    acc = quick_eval(model.eval(), train)
    assert acc["verb_top1"] > 90 and acc["noun_top1"] > 90 and acc["action_top1"] > 90, acc


def test_same_seed_same_weights(tmp_path):
    cfg = tiny_experiment(epochs=1)
    run_train(cfg, tmp_path / "a")
    run_train(cfg, tmp_path / "b")
    _same(_weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final"))


def test_resume_from_a_mid_epoch_checkpoint_matches(tmp_path):
    cfg = tiny_experiment(epochs=2, checkpoint_every=2)
    run_train(cfg, tmp_path / "full")
    run_train(cfg, tmp_path / "part")
    # Roll the second run back to its mid-epoch checkpoint at step 4, then resume from there.
    ckdir = tmp_path / "part" / "checkpoints"
    assert (ckdir / "step-00000004").is_dir()
    (ckdir / "latest.json").write_text(json.dumps({"checkpoint": "step-00000004", "global_step": 4}))
    res = run_train(cfg, tmp_path / "part")
    assert res.global_step == 6
    _same(_weights(tmp_path / "full" / "final"), _weights(tmp_path / "part" / "final"), atol=1e-6)


def test_distill_freezes_teacher_and_shares_the_mask(tmp_path, monkeypatch):
    tcfg = tiny_experiment(epochs=1)
    run_train(tcfg, tmp_path / "teacher")
    teacher, _ = load_model(tmp_path / "teacher")
    scfg = tiny_experiment(feature_set="student", epochs=1)
    data = load_paired(scfg.data, "train", "teacher")
    student = KARMMA(data.specs, data.tasks, scfg.model)
    seen = []
    orig = teacher.forward

    def spy(tokens, present):
        assert not teacher.training
        seen.append(("t", present.clone()))
        return orig(tokens, present)

    teacher.forward = spy
    orig_s = student.forward

    def spy_s(tokens, present, **kwargs):
        seen.append(("s", present.clone()))
        return orig_s(tokens, present, **kwargs)

    student.forward = spy_s
    distill(student, teacher, data, scfg, tmp_path / "student")
    assert all(not p.requires_grad for p in teacher.parameters())
    task = LogitDistillationTask(student, teacher, alpha=0.5, temperature=2.0)
    task.train()
    assert task.model.training and not teacher.training  # the task keeps its teacher in eval mode
    assert {id(p) for p in task.trainable_parameters()} == {id(p) for p in student.parameters()}
    start = next(i for i, call in enumerate(seen) if call[0] == "s")  # before it: the teacher diagnostics
    seen = seen[start:]
    pairs = [(seen[i], seen[i + 1]) for i in range(0, len(seen) - 1, 2)]
    assert pairs and all({a[0], b[0]} == {"s", "t"} and torch.equal(a[1], b[1]) for a, b in pairs)


def test_cached_teacher_logits_equal_live_teacher(tmp_path):
    run_train(tiny_experiment(epochs=1), tmp_path / "teacher")
    teacher = load_model(tmp_path / "teacher")[0].eval()
    scfg = tiny_experiment(feature_set="student", epochs=1)
    data = load_paired(scfg.data, "train", "teacher")
    cache = cache_teacher_logits(teacher, data, batch_size=7)
    b = data.get_batch(np.arange(10))
    mask = torch.tensor([[1, 0, 0], [0, 1, 1]] * 5, dtype=torch.bool) & b.present
    mask[~mask.any(1)] = b.present[~mask.any(1)]
    live = teacher(b.teacher_tokens, mask)
    from karmma.modalities import subset_index

    col = subset_index(mask)
    for k in live:
        assert torch.allclose(cache.lookup(b.index, col)[k], live[k], atol=1e-5)


def test_cached_and_live_distillation_agree(tmp_path):
    run_train(tiny_experiment(epochs=1), tmp_path / "teacher")
    a = tiny_experiment(feature_set="student", epochs=1)
    b = tiny_experiment(feature_set="student", epochs=1)
    b.distill.cache_teacher_logits = True
    run_distill(a, tmp_path / "teacher", tmp_path / "live")
    run_distill(b, tmp_path / "teacher", tmp_path / "cached")
    _same(_weights(tmp_path / "live" / "final"), _weights(tmp_path / "cached" / "final"), atol=1e-5)


def test_train_resume_distill_evaluate_chain(tmp_path):
    cfg = tiny_experiment(epochs=1)
    run_train(cfg, tmp_path / "teacher")
    cfg2 = tiny_experiment(epochs=2)
    # Resuming with more epochs extends the run from its checkpoint.
    res = run_train(cfg2, tmp_path / "teacher")
    assert res.global_step == 6
    scfg = tiny_experiment(feature_set="student", epochs=1)
    run_distill(scfg, tmp_path / "teacher", tmp_path / "student")
    teacher, tmeta = load_model(tmp_path / "teacher")
    student, smeta = load_model(tmp_path / "student")
    assert smeta["stage"] == "distill" and smeta["feature_set"] == "student"
    data = {"teacher": load_split(cfg.data, "val", "teacher"), "student": load_split(cfg.data, "val", "student")}
    results = evaluate_models({"teacher": teacher, "student": student}, data, seed=0, repeats=2, rates=(0.0, 0.5, 0.9))
    for r in results["models"].values():
        assert len(r["subsets"]) == 7
        assert set(r["sensor_dropout"]) == {"0.0", "0.5", "0.9"}
        full = r["subsets"]["rgb+flow+audio"]["action_top1"]
        assert r["sensor_dropout"]["0.0"]["action_top1"] == pytest.approx(full)
    again = evaluate_models({"teacher": teacher}, {"teacher": data["teacher"]}, seed=0, repeats=2, rates=(0.5,))
    assert again["models"]["teacher"]["sensor_dropout"]["0.5"] == results["models"]["teacher"]["sensor_dropout"]["0.5"]
    paths = write_results(results, tmp_path / "eval", list(teacher.tasks))
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    assert json.loads(paths["json"].read_text())["models"]["student"]["subsets"]["rgb"]["count"] == 48


def _tiny_yaml(tmp_path, **over):
    cfg = tiny_experiment(epochs=2, checkpoint_every=1).to_dict()
    cfg.update(over)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cli(args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "KARMMA_FAULT"}
    env.update({"OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.run(
        [sys.executable, "-m", "karmma", *args], env=env, capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["train-step@4", "checkpoint-write@3", "checkpoint-pointer@2"])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, fault):
    cfg = _tiny_yaml(tmp_path)
    ref = _cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "ref"), "--no-progress"])
    assert ref.returncode == 0, ref.stderr
    killed = _cli(
        ["train", "--config", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-progress"], {"KARMMA_FAULT": fault}
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "final").exists()
    latest = latest_checkpoint(tmp_path / "run")  # the previous checkpoint is intact and usable
    assert latest is not None
    load_model(latest)
    resumed = _cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    _same(_weights(tmp_path / "ref" / "final"), _weights(tmp_path / "run" / "final"), atol=1e-6)


def test_checkpoint_every_n_epochs_and_always_the_last(tmp_path):
    cfg = tiny_experiment(epochs=3, checkpoint_epochs=2, keep_checkpoints=5)  # 3 steps per epoch
    run_train(cfg, tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step-*")) == ["step-00000006", "step-00000009"]


def test_distill_prints_what_the_teacher_passes_on_and_warns_when_it_memorised(tmp_path, capsys):
    from karmma.cli import main

    small = ["--set", "data.synthetic.num_train=64", "--set", "data.synthetic.num_val=32", "--no-progress"]
    assert main(["train", "--config", "demo_teacher", "--run-dir", str(tmp_path / "t"), "--set", "optim.epochs=1",
                 *small]) == 0  # fmt: skip
    capsys.readouterr()
    args = [
        "distill",
        "--config",
        "demo_student",
        "--teacher",
        str(tmp_path / "t"),
        "--set",
        "optim.epochs=1",
        "--set",
        "distill.temperature=2",
        *small,
    ]
    assert main([*args, "--run-dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "| teacher on the distillation data (T=2) |" in out
    assert re.search(r"^\| rgb\+flow\+audio \| [1-9]\d \| \d+\.\d \| 0\.\d\d \|", out, flags=re.M)
    assert "warning" not in out  # one epoch: nowhere near memorised
    # A teacher trained to memorise 64 samples: the warning says so, and what to do.
    assert main(["train", "--config", "demo_teacher", "--run-dir", str(tmp_path / "m"), "--set", "optim.epochs=80",
                 "--set", "optim.lr=0.003", "--set", "data.synthetic.absent_rate=0.0", "--set", "model.dropout=0.0",
                 "--set", "modality_dropout.kind=none", *small]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["distill", "--config", "demo_student", "--teacher", str(tmp_path / "m"), "--run-dir",
                 str(tmp_path / "s2"), "--set", "optim.epochs=1", "--set", "data.synthetic.absent_rate=0.0",
                 "--set", "distill.temperature=1.0", *small]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "warning: the teacher's soft targets are nearly the labels" in out and "out-of-fold" in out
