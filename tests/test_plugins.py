"""Plugin discovery: a package that registers a fusion block, an encoder and a model add-on
through the ``karmma.plugins`` entry-point group is found by ``karmma train``, ``evaluate``,
``export``, ``distill`` and ``predict`` with no import by hand — the package is really installed
(``pip install --target``) and the commands run in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = '''
"""A tiny karmma plugin: one new file per extension, registered on import."""
import torch
from torch import nn

from karmma.models.addons import AddOn
from karmma.models.encoders import ModalityEncoder
from karmma.registries import ADDONS, ENCODERS, FUSION


@FUSION.register("mean_mixer")
class MeanMixer(nn.Module):
    """Each token plus the mean of all tokens, through one linear layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Linear(dim, dim)

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.dim)

    def forward(self, x, key_mask=None):
        return x + self.mix(x.mean(1, keepdim=True))


@ENCODERS.register("halve")
class Halve(ModalityEncoder):
    def __init__(self, spec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x):
        return x * 0.5


@ADDONS.register("temperature")
class Temperature(AddOn):
    """Divides the logits at inference by a fixed temperature (an add-on with its own options)."""

    from dataclasses import dataclass

    @dataclass
    class Config:
        t: float = 2.0

        def validate(self) -> None:
            if self.t <= 0:
                raise ValueError("t must be > 0")

    def forward(self, out, present):
        if self.training:
            return out
        return out.replace_logits({k: v / self.cfg.t for k, v in out.items()})
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "tiny_karmma_plugin").mkdir()
    (src / "tiny_karmma_plugin" / "__init__.py").write_text(PLUGIN)
    (src / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "tiny-karmma-plugin"
        version = "0.0.1"
        [project.entry-points."karmma.plugins"]
        tiny = "tiny_karmma_plugin"
        [tool.setuptools]
        packages = ["tiny_karmma_plugin"]
    """)
    )
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True)  # fmt: skip
    return target


def _karmma(target: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "karmma", *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_an_installed_plugin_is_found_by_train_evaluate_export_distill_and_predict(installed, tmp_path):
    run = tmp_path / "run"
    sets = [
        "model.fusion=mean_mixer",
        "model.encoders={audio: halve}",
        "model.addons={temperature: {t: 3.0}}",
        "optim.epochs=1",
        "data.synthetic.num_train=64",
        "data.synthetic.num_val=32",
        "data.synthetic.num_test=32",
    ]
    args = [a for s in sets for a in ("--set", s)]
    r = _karmma(installed, "train", "--config", "demo_teacher", "--run-dir", str(run), "--no-progress", *args)
    assert r.returncode == 0, r.stderr
    meta = json.loads((run / "final" / "model.json").read_text())
    assert meta["model"]["fusion"] == "mean_mixer" and meta["model"]["addons"] == {"temperature": {"t": 3.0}}
    r = _karmma(installed, "evaluate", str(run), "--out", str(tmp_path / "eval"), "--repeats", "1")
    assert r.returncode == 0, r.stderr
    r = _karmma(installed, "export", str(run), "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0 and "onnxruntime matches PyTorch on every subset" in r.stdout, r.stderr
    student = tmp_path / "student"
    r = _karmma(installed, "distill", "--config", "demo_student", "--teacher", str(run), "--run-dir", str(student),
                "--no-progress", *args)  # fmt: skip
    assert r.returncode == 0, r.stderr
    import numpy as np

    from karmma.io.checkpoint import read_model_meta

    for model, made_by in ((run, run), (student, student), (tmp_path / "m.onnx", run)):
        specs = read_model_meta(made_by / "final")["specs"]  # each model's own feature sizes
        sample = {d["name"]: np.zeros((d["num_tokens"], d["dim"]), np.float32) for d in specs[:2]}
        np.savez(tmp_path / "x.npz", **sample)
        r = _karmma(installed, "predict", str(model), "--input", str(tmp_path / "x.npz"))
        assert r.returncode == 0 and "modalities used: rgb, flow" in r.stdout, r.stderr
    # Without the plugin on the path, the same run is refused by name, with the registered ones.
    r = subprocess.run([sys.executable, "-m", "karmma", "export", str(run), "--out", str(tmp_path / "x.onnx")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "mean_mixer" in r.stderr and "transformer" in r.stderr, r.stderr


def test_a_plugin_name_is_checked_by_load_config(installed):
    code = (
        "from karmma.config import load_config\n"
        "cfg = load_config(None, ['model.fusion=mean_mixer', 'model.addons={temperature: {t: 2.0}}'])\n"
        "from karmma.plugins import loaded_plugins\nprint(cfg.model.fusion, loaded_plugins())"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "mean_mixer ['tiny']", out


def test_configs_name_built_ins_without_importing_the_models_tasks_or_readers():
    code = (
        "import sys\nfrom karmma.config import load_config\n"
        "load_config('karmma/configs/utd_mhad_student.yaml')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('karmma.data.readers.', 'karmma.models.', "
        "'karmma.tasks.'))))"
    )
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.strip() == "[]", out


def test_a_broken_plugin_is_reported_and_skipped(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[karmma.plugins]\nbroken = no_such_module_here\n")
    code = (
        "import logging; logging.basicConfig()\nfrom karmma.registries import FUSION\n"
        "print('transformer' in FUSION, 'nope' in FUSION)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert r.stdout.strip() == "True False"
    assert "karmma plugin 'broken' (no_such_module_here) failed to load and is skipped" in r.stderr
