"""The data path: DataLoader workers over lazily read stores, one read per split in evaluation,
no teacher-feature reads with cached teacher logits."""

import numpy as np
import torch
from safetensors.torch import load_file

import karmma.data.store
from karmma.cli import main
from karmma.data.dataset import FeatureSet, PairedFeatureSet
from karmma.data.loader import batch_loader
from karmma.data.sources import load_split
from karmma.data.store import LazyH5, open_store
from karmma.engine.runs import run_distill, run_train
from karmma.evaluation.evaluate import evaluate_models
from karmma.io.checkpoint import load_model
from karmma.models import KARMMA
from tests.conftest import tiny_experiment
from tests.hostile import QUICK, store_args, synthetic_store


def test_lazy_store_with_two_workers_trains_exactly_like_memory(tmp_path, monkeypatch):
    train, val = synthetic_store(tmp_path / "train.h5", "train"), synthetic_store(tmp_path / "val.h5", "val")
    args = ["train", "--config", "demo_teacher", *QUICK, *store_args(train, val), "--set", "optim.epochs=2"]
    assert main([*args[:3], "--run-dir", str(tmp_path / "memory"), *args[3:]]) == 0
    monkeypatch.setattr(karmma.data.store, "_IN_MEMORY_LIMIT", 0)  # every store read lazily from disk
    assert isinstance(open_store(train).features["rgb"], LazyH5)
    assert main([*args[:3], "--run-dir", str(tmp_path / "disk"), *args[3:], "--set", "data.num_workers=2"]) == 0
    a, b = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("memory", "disk"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loader_yields_the_requested_batches_in_order(tiny_data):
    data = tiny_data["train"]["teacher"]
    rows = [np.array([5, 1, 3]), np.array([0]), np.array([], dtype=np.int64)]
    got = list(batch_loader(data, rows, num_workers=2))
    assert [b.index.tolist() for b in got] == [[5, 1, 3], [0], []]
    assert torch.equal(got[0].tokens[0], data.get_batch(rows[0]).tokens[0])


def test_evaluation_reads_each_split_once(tiny_data, monkeypatch):
    reads = []
    real = FeatureSet.get_batch
    monkeypatch.setattr(FeatureSet, "get_batch", lambda self, idx: reads.append(len(idx)) or real(self, idx))
    cfg = tiny_experiment()
    data = load_split(cfg.data, "val")
    model = KARMMA(data.specs, data.tasks, cfg.model).eval()
    res = evaluate_models({"m": model}, {"m": data}, repeats=3)
    assert len(res["models"]["m"]["subsets"]) == 7 and len(res["models"]["m"]["sensor_dropout"]) == 10
    assert reads == [len(data)]  # 7 subsets + 10 rates x 3 repeats from one read


def test_cached_distillation_reads_teacher_features_only_for_the_cache(tmp_path, monkeypatch):
    run_train(tiny_experiment(epochs=1), tmp_path / "teacher")
    cfg = tiny_experiment(feature_set="student", epochs=2)
    cfg.distill.cache_teacher_logits = True
    teacher_reads = []
    real = PairedFeatureSet.get_batch
    monkeypatch.setattr(PairedFeatureSet, "get_batch", lambda self, idx: teacher_reads.append(1) or real(self, idx))
    run_distill(cfg, tmp_path / "teacher", tmp_path / "student")
    assert teacher_reads == []  # training read the student's features alone
    student, meta = load_model(tmp_path / "student")
    assert meta["stage"] == "distill" and student.cfg == cfg.model
