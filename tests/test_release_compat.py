"""What karmma 0.1 wrote keeps loading, predicting and exporting (tests/fixtures/release_0_1, written
by tests/fixtures/make_release_0_1.py with 0.1), and the imports 0.1's README and docs showed keep
working, with a deprecation warning where the module moved."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from karmma.cli import main
from karmma.io.checkpoint import MODEL_VERSION, load_model
from karmma.modalities import all_subsets

FIXTURES = Path(__file__).parent / "fixtures" / "release_0_1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def _inputs() -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / "inputs.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


@pytest.mark.parametrize("name", ["recipe", "plain"])
def test_a_0_1_model_folder_loads_and_predicts_what_0_1_predicted(name):
    model, meta = load_model(FIXTURES / name)
    assert meta["version"] == 1  # read as written
    model.eval()
    tokens = _inputs()
    for subset in all_subsets(model.modality_names):
        present = torch.tensor([[m in subset for m in model.modality_names]] * 3)
        with torch.no_grad():
            out = model(tokens, present)
        for task, logits in EXPECTED[name]["+".join(subset)].items():
            torch.testing.assert_close(out[task], torch.tensor(logits), rtol=1e-5, atol=1e-6)


def test_a_0_1_recipe_model_reads_as_the_late_fusion_add_on_without_training_keys():
    model, _ = load_model(FIXTURES / "recipe")
    assert set(model.addons) == {"late_fusion"}
    assert model.cfg.addons["late_fusion"] == {"loss_weight": 1.0, "ensemble": 2.0, "pool": "mixture",
                                               "weights": "per_subset"}  # fmt: skip
    saved = json.loads((FIXTURES / "recipe" / "model.json").read_text())["model"]
    assert saved["time_warp"] == 0.2 and saved["swap"] == {"flow": 0.5}  # 0.1 saved them ...
    assert not hasattr(model.cfg, "time_warp") and not hasattr(model, "augment")  # ... 0.2 builds none


@pytest.mark.parametrize("name", ["recipe", "plain"])
def test_a_0_1_onnx_file_still_predicts(name, capsys):
    rc = main(["predict", str(FIXTURES / f"{name}.onnx"), "--input", str(FIXTURES / "inputs.npz")])
    out = capsys.readouterr().out
    assert rc == 2 or rc == 0, out  # the npz holds a batch of 3: predict takes one sample
    import onnxruntime as ort

    sess = ort.InferenceSession(str(FIXTURES / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    tokens = _inputs()
    names = ["rgb", "flow", "audio"]
    for subset in all_subsets(names):
        present = np.array([[m in subset for m in names]] * 3)
        got = sess.run(None, {**{n: tokens[n].numpy() for n in names}, "present": present})
        outputs = [o.name for o in sess.get_outputs()]
        for task, value in zip(outputs, got):
            np.testing.assert_allclose(value, np.array(EXPECTED[name]["+".join(subset)][task]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["recipe", "plain"])
def test_a_0_1_model_folder_exports_again_and_the_new_file_says_format_2(name, tmp_path, capsys):
    out = tmp_path / f"{name}.onnx"
    assert main(["export", str(FIXTURES / name), "--out", str(out)]) == 0
    assert "onnxruntime matches PyTorch on every subset" in capsys.readouterr().out
    from karmma.deploy.export import onnx_metadata

    meta = onnx_metadata(out)
    assert meta["version"] == MODEL_VERSION and "time_warp" not in meta["model"]


def test_a_0_1_yaml_config_with_the_old_model_keys_loads_at_the_new_places(tmp_path, caplog):
    from karmma.config import load_config

    cfg_file = tmp_path / "old.yaml"
    cfg_file.write_text(
        "model: {dim: 32, attn_heads: 4, time_warp: 0.2, rotate: {flow: [0, 1, 0]}, swap: {flow: 0.5},\n"
        "        unimodal_weight: 1.0, unimodal_ensemble: 2.0, unimodal_pool: mixture, fusion_weights: validation}\n"
    )
    cfg = load_config(cfg_file)
    assert cfg.augment.time_warp == 0.2 and cfg.augment.swap == {"flow": 0.5}
    assert cfg.model.addons == {"late_fusion": {"loss_weight": 1.0, "ensemble": 2.0, "pool": "mixture",
                                                "weights": "validation"}}  # fmt: skip
    assert "model.time_warp -> augment.time_warp" in caplog.text
    assert "model.unimodal_weight -> model.addons.late_fusion.loss_weight" in caplog.text
    # ... and as --set overrides
    cfg = load_config(None, ["model.unimodal_weight=0.5", "model.input_noise=0.1"])
    assert cfg.model.addons["late_fusion"]["loss_weight"] == 0.5 and cfg.augment.input_noise == 0.1


def test_a_model_file_of_a_newer_format_is_refused_with_the_fix(tmp_path):
    import shutil

    from karmma.errors import CheckpointError

    shutil.copytree(FIXTURES / "plain", tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps({**meta, "version": MODEL_VERSION + 1}))
    with pytest.raises(CheckpointError, match="written by a newer karmma"):
        load_model(tmp_path / "m")


# The imports karmma 0.1's README and docs showed.
SHOWN = [
    ("karmma.models", "KARMMA"),
    ("karmma.config", "load_config"),
    ("karmma.config", "ExperimentConfig"),
    ("karmma.data.dataset", "FeatureSet"),
    ("karmma.data.store", "write_store"),
    ("karmma.data.store", "open_store"),
    ("karmma.modalities", "ModalitySpec"),
]
MOVED = [
    ("karmma.checkpoint", "load_model", "karmma.io.checkpoint"),
    ("karmma.train", "fit", "karmma.engine.train"),
    ("karmma.distill", "distill", "karmma.engine.distill"),
    ("karmma.runs", "run_train", "karmma.engine.runs"),
    ("karmma.export", "export_onnx", "karmma.deploy.export"),
    ("karmma.evaluate", "evaluate_models", "karmma.evaluation.evaluate"),
    ("karmma.data.utd_mhad", "UTDMHADReader", "karmma.data.readers.utd_mhad"),
    ("karmma.extractors.media", "decode_clip", "karmma.data.media.decode"),
    ("karmma.models.augment", "TokenAugment", "karmma.engine.augment"),
]


@pytest.mark.parametrize(("module", "name"), SHOWN)
def test_the_imports_0_1_showed_still_work(module, name):
    assert hasattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_a_moved_module_imports_from_its_old_path_with_a_deprecation_warning(old, name, new):
    code = (
        "import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
        f"try:\n    importlib.import_module({old!r})\nexcept DeprecationWarning as e:\n    print('WARNED', e)\n"
        f"warnings.simplefilter('ignore')\nimport {old} as a, {new} as b\nprint(a is b, hasattr(a, {name!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"WARNED {old} moved to {new}" in out and out.strip().endswith("True True"), out


def test_the_0_1_forward_flags_still_return_the_0_1_tuple_with_a_warning():
    model, _ = load_model(FIXTURES / "recipe")
    tokens = _inputs()
    present = torch.ones(3, 3, dtype=torch.bool)
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits, readers, unimodal = model(tokens, present, with_features=True, with_unimodal=True)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert readers.shape == (3, 4, 16) and unimodal["action"].shape[:2] == (3, 3)


def test_the_readme_library_snippet_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = readme.split("## Library use", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102  (our own README)
    assert {k: tuple(v.shape) for k, v in scope["out"].items()} == {"verb": (2, 97), "noun": (2, 300)}
    assert tuple(scope["out"].readers.shape) == (2, 4, 256)
