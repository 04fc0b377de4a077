"""The GPU path's options, checked for correctness on CPU through the CLI: bf16 autocast in
train/distill/evaluate and ``torch.compile`` (issue: data path, item 5)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from karmma.config import load_config
from karmma.errors import ConfigError
from karmma.io.checkpoint import load_model
from karmma.presets import preset_path
from tests.hostile import QUICK, cli, store_args


def _weights(run):
    return load_file(str(run / "final" / "model.safetensors"))


def test_bf16_training_learns_keeps_float32_weights_and_evaluates_close_to_fp32(tmp_path, capsys, stores):
    train, val = stores
    args = ["--config", "demo_teacher", *QUICK, *store_args(train, val), "--set", "optim.epochs=4"]
    for p in ("fp32", "bf16"):
        rc, _, err = cli(capsys, "train", *args, "--run-dir", tmp_path / p, "--set", f"precision={p}")
        assert rc == 0, err
    w16, w32 = _weights(tmp_path / "bf16"), _weights(tmp_path / "fp32")
    assert all(v.dtype == torch.float32 for v in w16.values())  # autocast never touches the weights
    assert any(not torch.equal(w16[k], w32[k]) for k in w32)  # bf16 really ran
    hist = json.loads((tmp_path / "bf16" / "history.json").read_text())
    assert hist[-1]["val_action_top1"] > 3 * 100 / 12  # learned: well above chance (12 actions)
    res = {}
    for p in ("fp32", "bf16"):
        out = tmp_path / f"eval_{p}"
        rc, _, err = cli(capsys, "evaluate", tmp_path / "bf16", "--val", val, "--out", out, "--precision", p,
                         "--device", "cpu", "--no-progress")  # fmt: skip
        assert rc == 0, err
        res[p] = json.loads((out / "results.json").read_text())["models"]["bf16"]["subsets"]
    for subset, r in res["fp32"].items():
        assert abs(r["action_top1"] - res["bf16"][subset]["action_top1"]) <= 10.0, subset  # 40 samples: 4 flips


def test_bf16_distillation_runs_with_the_same_mask_for_teacher_and_student(tmp_path, capsys, stores):
    train, val = stores
    assert cli(capsys, "train", "--config", "demo_teacher", *QUICK, *store_args(train, val),
               "--run-dir", tmp_path / "t")[0] == 0  # fmt: skip
    rc, _, err = cli(capsys, "distill", "--config", "demo_student", "--teacher", tmp_path / "t", *QUICK,
                     *store_args(train, val, "student"), "--run-dir", tmp_path / "s",
                     "--set", "precision=bf16")  # fmt: skip
    assert rc == 0, err
    assert load_model(tmp_path / "s")[1]["stage"] == "distill"


def test_precision_is_checked():
    with pytest.raises(ConfigError, match="precision='fp8'.*bf16"):
        load_config(preset_path("demo_teacher"), ["precision=fp8"])


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_checkpoints(tmp_path, capsys, stores):
    train, _ = stores
    # a small learning rate: Adam turns a rounding difference of a near-zero gradient into a step of
    # the learning rate, so the weights are compared at a scale where only real differences show
    args = ["--config", "demo_teacher", *QUICK, *store_args(train), "--set", "optim.lr=0.00001"]
    assert cli(capsys, "train", *args, "--run-dir", tmp_path / "eager")[0] == 0
    rc, _, err = cli(capsys, "train", *args, "--run-dir", tmp_path / "compiled", "--set", "compile=true")
    assert rc == 0, err
    eager, compiled = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert eager.keys() == compiled.keys()  # no "_orig_mod." prefixes: checkpoints load anywhere
    assert max(float((eager[k] - compiled[k]).abs().max()) for k in eager) < 1e-3
