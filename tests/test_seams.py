"""Each extension seam of docs/extending.md, plugged in from this file alone."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from karmma.config import load_config
from karmma.data.dataset import FeatureSet
from karmma.data.readers.base import READERS, DatasetReader, Kind, SampleRef
from karmma.data.sources import load_split
from karmma.data.store import open_store, write_store
from karmma.data.synthetic import generate
from karmma.engine.runs import run_distill, run_train
from karmma.engine.train import fit
from karmma.errors import ConfigError
from karmma.io.checkpoint import latest_checkpoint, load_model
from karmma.losses import multitask_ce
from karmma.modalities import ModalitySpec
from karmma.models import KARMMA
from karmma.models.addons import AddOn
from karmma.models.fusion import FUSION
from karmma.presets import preset_path
from karmma.registries import ADDONS, TASKS
from karmma.tasks import Task
from karmma.tasks.distillation import LogitDistillationTask
from karmma.typed_dict import typed_from_dict
from tests.hostile import QUICK, SMALL, cli, store_args


@FUSION.register("mean_mixer")
class MeanMixer(nn.Module):
    """Each token plus an MLP of the mean over attendable tokens (docs/extending.md, example 2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.dim)

    def forward(self, x, key_mask=None):
        w = torch.ones(x.shape[:2], device=x.device) if key_mask is None else key_mask.float()
        mean = (x * w[..., None]).sum(1, keepdim=True) / w.sum(1, keepdim=True)[..., None]
        return x + self.mlp(mean)


class ConfidencePenaltyTask(Task):
    """A custom objective: CE minus a weighted entropy bonus, reported as its own component."""

    def forward(self, batch, mask):
        logits = self.part("model")(batch.tokens, mask)
        ce = multitask_ce(logits, batch.labels)
        probs = torch.softmax(logits["action"], -1)
        entropy = -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean()
        return {"loss": ce - 0.1 * entropy, "ce": ce.detach(), "entropy": entropy.detach(), "output": logits}


@READERS.register("toy_sensors")
class ToySensors(DatasetReader):
    modalities = {"accel": Kind("signal", 3), "gyro": Kind("signal", 3)}
    default_modalities = ("accel", "gyro")
    extra = {"dataset": "toy_sensors"}

    def samples(self, root, split):
        files = sorted(root.glob("*.npz"))
        return [SampleRef(f.stem, {"action": int(f.stem.split("_")[0])}, None, f) for f in files]

    def tasks(self, refs):
        return {"action": 2}, {"action": ["still", "moving"]}

    def load(self, ref, modalities, on_error):
        with np.load(ref.source) as z:
            return {m: z[m] for m in modalities if m in z.files}


def _with_skeleton(fs: FeatureSet, dim: int, seed: int) -> FeatureSet:
    """``fs`` plus a 4th modality that carries the verb (absent for every 5th sample)."""
    rng = np.random.default_rng(seed)
    n = len(fs)
    proto = rng.normal(size=(fs.tasks["verb"], 8, dim))
    x = (proto[fs.labels["verb"]] + rng.normal(size=(n, 8, dim))).astype(np.float32)
    present = np.concatenate([fs.present, (np.arange(n) % 5 != 0)[:, None]], axis=1)
    x[~present[:, 3]] = 0.0
    return dataclasses.replace(
        fs,
        specs=[*fs.specs, ModalitySpec("skeleton", 8, dim)],
        features={**fs.features, "skeleton": x},
        present=present,
    )


def test_a_fourth_modality_with_its_own_encoder(tmp_path, capsys):
    paths = {}
    for split in ("train", "val"):
        sets = generate(SMALL)[split]
        paths[split] = write_store(tmp_path / f"{split}.h5", {k: _with_skeleton(v, 12, 0) for k, v in sets.items()})
    encoders = ["--set", "model.encoders={skeleton: temporal_conv}"]
    run = ["train", "--config", "demo_teacher", "--run-dir", tmp_path / "t4", *QUICK, *encoders]
    rc, _, err = cli(capsys, *run, *store_args(paths["train"], paths["val"]))
    assert rc == 0, err
    model, _ = load_model(tmp_path / "t4")
    assert model.modality_names == ["rgb", "flow", "audio", "skeleton"]
    assert type(model.encoders[3]).__name__ == "TemporalConvEncoder" and any(
        p.numel() for p in model.encoders[3].parameters()
    )
    rc, out, _ = cli(capsys, "evaluate", tmp_path / "t4", "--out", tmp_path / "ev", "--repeats", "1")
    assert rc == 0 and "| rgb+flow+audio+skeleton |" in out
    assert len(json.loads((tmp_path / "ev" / "results.json").read_text())["models"]["t4"]["subsets"]) == 15


def test_a_custom_fusion_block_by_config_and_by_object(tmp_path):
    cfg = load_config(preset_path("demo_teacher"), ["model.fusion=mean_mixer", "optim.epochs=1",
                      "data.synthetic.num_train=64", "data.synthetic.num_val=32"])  # fmt: skip
    run_train(cfg, tmp_path / "r")
    model, meta = load_model(tmp_path / "r")
    assert isinstance(model.fusion, MeanMixer) and meta["model"]["fusion"] == "mean_mixer"
    data = load_split(cfg.data, "val")
    direct = KARMMA(data.specs, data.tasks, cfg.model, fusion=MeanMixer(cfg.model.dim))
    assert isinstance(direct.fusion, MeanMixer)
    b = data.get_batch(np.arange(4))
    assert direct(b.tokens, b.present)["action"].shape == (4, data.tasks["action"])


def test_a_custom_task_through_the_generic_loop(tmp_path):
    cfg = load_config(preset_path("demo_teacher"), ["optim.epochs=2", "data.synthetic.num_train=64"])
    data = load_split(cfg.data, "train")
    task = ConfidencePenaltyTask(KARMMA(data.specs, data.tasks, cfg.model))
    res = fit(task, data, cfg, tmp_path / "r")
    last = res.history[-1]
    assert set(last) >= {"loss", "ce", "entropy"} and abs(last["loss"] - (last["ce"] - 0.1 * last["entropy"])) < 1e-4
    assert load_model(tmp_path / "r")[1]["tasks"] == data.tasks


def test_feature_distillation_task_checkpoints_and_resumes_its_projector(tmp_path):
    base = ["optim.epochs=1", "data.synthetic.num_train=64", "data.synthetic.num_val=32"]
    run_train(load_config(preset_path("demo_teacher"), base), tmp_path / "teacher")
    cfg = load_config(
        preset_path("demo_student"), [*base, "distill.task=feature_kd", "distill.cache_teacher_logits=false"]
    )
    res = run_distill(cfg, tmp_path / "teacher", tmp_path / "student")
    assert {"ce", "kd", "feat"} <= set(res.history[-1])
    extra = load_file(str(latest_checkpoint(tmp_path / "student") / "task.safetensors"))
    assert set(extra) == {"projector.proj.weight", "projector.proj.bias"} and extra["projector.proj.weight"].shape == (
        96,
        64,
    )
    more = load_config(preset_path("demo_student"), [*base[1:], "optim.epochs=2", "distill.task=feature_kd",
                                                     "distill.cache_teacher_logits=false"])  # fmt: skip
    res = run_distill(more, tmp_path / "teacher", tmp_path / "student")  # resumes, projector included
    assert [h["epoch"] for h in res.history] == [1, 2]
    student, _ = load_model(tmp_path / "student")
    assert not any("projector" in k for k in student.state_dict())  # the run's model is the student


def test_a_new_dataset_reader_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "toy").mkdir()
    for i in range(6):
        arrays = {"accel": rng.normal(size=(40, 3)) * (i % 2 + 0.1), "gyro": rng.normal(size=(40, 3))}
        if i == 3:
            arrays.pop("gyro")  # a sensor that did not record: absent, not invented
        np.savez(tmp_path / "toy" / f"{i % 2}_{i}.npz", **arrays)
    rc, out, err = cli(
        capsys, "extract", "toy_sensors", "--encoder", "pool", "--root", tmp_path / "toy", "--out", tmp_path / "toy.h5"
    )
    assert rc == 0, err
    fs = open_store(tmp_path / "toy.h5")
    assert fs.modality_names == ["accel", "gyro"]
    assert {i for i, p in zip(fs.ids, fs.present[:, 1]) if not p} == {"1_3"}
    assert fs.class_names["action"] == ["still", "moving"]


@dataclasses.dataclass
class ScaledKDOptions:
    scale: float = 1.0  # multiplies the KD term


@TASKS.register("scaled_kd")
class ScaledKD(LogitDistillationTask):
    """A KD objective with its own options (``distill.options``), docs/extending.md example 3."""

    def __init__(self, student, teacher, cfg, cache, options: ScaledKDOptions) -> None:
        super().__init__(student, teacher, cfg.distill.alpha, cfg.distill.temperature, cache)
        self.options = options

    @classmethod
    def from_config(cls, student, teacher, cfg, cache=None):
        return cls(
            student, teacher, cfg, cache, typed_from_dict(ScaledKDOptions, cfg.distill.options, "distill.options")
        )

    def forward(self, batch, mask):
        out = super().forward(batch, mask)
        loss = self.alpha * out["ce"] + (1 - self.alpha) * self.options.scale * out["kd"]
        return {**out, "loss": out["loss"] - out["loss"].detach() + loss.detach()}


@ADDONS.register("logit_scale")
class LogitScale(AddOn):
    """A model add-on with its own options and weights: a learned scale of the logits (example 5)."""

    @dataclasses.dataclass
    class Config:
        init: float = 1.0

        def validate(self) -> None:
            if self.init <= 0:
                raise ValueError("init must be > 0")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.scale = nn.Parameter(torch.tensor(float(cfg.init)))

    def forward(self, out, present):
        return out.replace_logits({k: v * self.scale for k, v in out.items()})


def test_a_kd_objective_with_its_own_options(tmp_path):
    base = ["optim.epochs=1", "data.synthetic.num_train=64", "data.synthetic.num_val=32"]
    run_train(load_config(preset_path("demo_teacher"), base), tmp_path / "teacher")
    cfg = load_config(preset_path("demo_student"), [*base, "distill.task=scaled_kd", "distill.options={scale: 0.5}"])
    res = run_distill(cfg, tmp_path / "teacher", tmp_path / "student")
    assert {"ce", "kd"} <= set(res.history[-1])
    bad = load_config(preset_path("demo_student"), [*base, "distill.task=scaled_kd", "distill.options={scal: 1}"])
    with pytest.raises(ConfigError, match=r"distill.options: unknown key\(s\) \['scal'\]"):
        run_distill(bad, tmp_path / "teacher", tmp_path / "student2")


def test_a_model_add_on_with_its_own_options_and_weights(tmp_path):
    cfg = load_config(preset_path("demo_teacher"), ["optim.epochs=1", "data.synthetic.num_train=64",
                                                    "model.addons={logit_scale: {init: 2.0}}"])  # fmt: skip
    res = run_train(cfg, tmp_path / "r")
    model, meta = load_model(res.run_dir)
    assert meta["model"]["addons"] == {"logit_scale": {"init": 2.0}}
    assert "addons.logit_scale.scale" in model.state_dict()
    with pytest.raises(ConfigError, match=r"model.addons.logit_scale: unknown key"):
        KARMMA(model.specs, model.tasks, dataclasses.replace(model.cfg, addons={"logit_scale": {"x": 1}}))
