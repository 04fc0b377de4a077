"""A hostile or clumsy user's probes of configs, export and predict, through ``main(argv)``."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from karmma.cli import main
from tests.hostile import cli, train_demo_student


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """The demo's student architecture trained from its shipped preset (dropout 0.1 on)."""
    return train_demo_student(tmp_path_factory.mktemp("runs") / "student")


@pytest.fixture(scope="module")
def exported(student_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    assert main(["export", str(student_run), "--out", str(path)]) == 0
    return path


def test_export_of_a_preset_trained_model_verifies_on_every_subset(student_run, tmp_path, capsys):
    rc, out, _ = cli(capsys, "export", student_run, "--out", tmp_path / "s.onnx")
    assert rc == 0 and "onnxruntime matches PyTorch on every subset" in out
    diffs = [float(x) for x in re.findall(r"^\| [a-z+]+ \| ([0-9.e+-]+) \|$", out, flags=re.M)]
    assert len(diffs) == 7 and max(diffs) < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["s.onnx"]  # no temporary file left


def test_export_to_a_folder_is_refused(student_run, tmp_path, capsys):
    rc, _, err = cli(capsys, "export", student_run, "--out", tmp_path)
    assert rc == 2 and "is a folder" in err and "student.onnx" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,words", [
    (b"\x08\x07garbage that is not protobuf" * 3, "not a readable ONNX model"),
    (None, "no karmma metadata"),
])  # fmt: skip
def test_predict_on_a_bad_onnx_file_is_explained(tmp_path, capsys, content, words):
    path = tmp_path / "m.onnx"
    if content is None:  # a valid ONNX model that `karmma export` did not write
        node = onnx.helper.make_node("Identity", ["x"], ["y"])
        vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy"]
        onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", vi[:1], vi[1:])), str(path))
    else:
        path.write_bytes(content)
    np.savez(tmp_path / "x.npz", rgb=np.zeros((8, 32), np.float32))
    rc, _, err = cli(capsys, "predict", path, "--input", tmp_path / "x.npz")
    assert rc == 2 and words in err and "Traceback" not in err


def test_predict_on_a_truncated_onnx_file_is_explained(exported, tmp_path, capsys):
    data = exported.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    np.savez(tmp_path / "x.npz", rgb=np.zeros((8, 32), np.float32))
    rc, _, err = cli(capsys, "predict", tmp_path / "cut.onnx", "--input", tmp_path / "x.npz")
    assert rc == 2 and "cut.onnx" in err and "export" in err and "Traceback" not in err


def test_predict_bad_samples_and_topk(exported, tmp_path, capsys):
    np.savez(tmp_path / "ok.npz", rgb=np.zeros((8, 32), np.float32))
    rc, out, _ = cli(capsys, "predict", exported, "--input", tmp_path / "ok.npz", "--topk", "2")
    assert rc == 0 and "modalities used: rgb" in out and "  2. " in out and "  3. " not in out
    for k in ("-3", "0"):
        rc, out, err = cli(capsys, "predict", exported, "--input", tmp_path / "ok.npz", "--topk", k)
        assert rc == 2 and "must be at least 1" in err and out == ""
    np.savez(tmp_path / "s.npz", rgb=np.array([["a"] * 32] * 8))
    rc, _, err = cli(capsys, "predict", exported, "--input", tmp_path / "s.npz")
    assert rc == 2 and "features must be numbers" in err
    (tmp_path / "t.npz").write_text("rgb: 1, 2, 3\n")
    rc, _, err = cli(capsys, "predict", exported, "--input", tmp_path / "t.npz")
    assert rc == 2 and "not an .npz archive" in err and "pickled" not in err
    (tmp_path / "x.py").write_text("import os\n")
    rc, _, err = cli(capsys, "predict", exported, "--input", tmp_path / "x.py")
    assert rc == 2 and "use an .npz or .safetensors file" in err and "corrupt" not in err


@pytest.mark.parametrize("line,key,words", [
    ("optim: {lr: .nan}", "optim.lr", "finite number > 0"),
    ("model: {attn_heads: 0}", "model.attn_heads", "must be >= 1"),
    ("device: quantum", "device", "'cpu', 'cuda'"),
    ("optim: {label_smoothing: 3}", "optim.label_smoothing", "[0, 1)"),
    ("optim: {weight_decay: -0.1}", "optim.weight_decay", ">= 0"),
    ("optim: {grad_clip: -1}", "optim.grad_clip", ">= 0"),
    ("optim: {warmup_steps: -5}", "optim.warmup_steps", ">= 0"),
])  # fmt: skip
def test_out_of_range_config_values_name_file_and_key(tmp_path, capsys, line, key, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(line + "\n")
    rc, _, err = cli(capsys, "train", "--config", cfg, "--run-dir", tmp_path / "r")
    assert rc == 2 and "c.yaml" in err and key in err and words in err
    assert not (tmp_path / "r").exists()


def test_numbers_written_as_yaml_1_1_strings_are_numbers(tmp_path, capsys):
    from karmma.config import load_config
    from karmma.presets import preset_path

    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {lr: 1e-3, epochs: 1}\n")
    assert load_config(cfg).optim.lr == 1e-3
    assert load_config(preset_path("demo_teacher"), ["optim.lr=2e-4"]).optim.lr == 2e-4
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", "--set", "optim.lr=abc")
    assert rc == 2 and err.startswith("error: --set optim.lr=abc") and "expected float" in err


def test_an_empty_config_file_is_refused(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    rc, _, err = cli(capsys, "train", "--config", tmp_path / "empty.yaml", "--run-dir", tmp_path / "r")
    assert rc == 2 and "empty.yaml" in err and "is empty" in err
