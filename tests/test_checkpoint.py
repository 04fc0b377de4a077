import json
import re
from pathlib import Path

import pytest
import torch

from karmma.cli import main
from karmma.engine.runs import run_train
from karmma.errors import CheckpointError
from karmma.io.checkpoint import load_model, model_metadata, save_model
from karmma.models import KARMMA
from tests.conftest import tiny_experiment, tiny_model_cfg


def test_save_load_roundtrip(tmp_path, specs, tasks):
    m = KARMMA(specs, tasks, tiny_model_cfg()).eval()
    save_model(tmp_path / "m", m, model_metadata(m))
    save_model(tmp_path / "m", m, model_metadata(m))  # replacing an existing one is fine
    m2, meta = load_model(tmp_path / "m")
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    assert meta["format"] == "karmma-model"


def test_corrupt_and_missing(tmp_path, specs, tasks):
    with pytest.raises(CheckpointError, match="no model found"):
        load_model(tmp_path)
    m = KARMMA(specs, tasks, tiny_model_cfg())
    folder = save_model(tmp_path / "m", m, model_metadata(m))
    (folder / "model.safetensors").write_bytes(b"\x00" * 50)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(folder)


def test_checkpoint_of_another_architecture(tmp_path, specs, tasks):
    m = KARMMA(specs, tasks, tiny_model_cfg())
    folder = save_model(tmp_path / "m", m, model_metadata(m))
    meta = json.loads((folder / "model.json").read_text())
    meta["model"]["dim"] = 32
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load_model(folder)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model(tmp_path / "m", expect={"tasks": {"verb": 1}})


def test_resume_with_another_architecture_is_refused(tmp_path):
    run_train(tiny_experiment(epochs=1), tmp_path / "run")
    other = tiny_experiment(epochs=2)
    other.model.dim = 32
    with pytest.raises(CheckpointError, match=r"other config keys \['model.dim'\].*--no-resume"):
        run_train(other, tmp_path / "run")
    assert main(["train", "--config", "demo_teacher", "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2


def test_library_never_unpickles():
    src = Path(__file__).resolve().parents[1] / "karmma"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text, path  # no plain unpickling anywhere
        if path.name == "safe_pickle.py":  # the one restricted unpickler (TBN pickles), tested with hostile files
            assert "def find_class" in text and "_SAFE_GLOBALS" in text
        else:
            assert "import pickle" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "allow_pickle=True" not in text, path
