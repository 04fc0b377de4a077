"""The data path at scale (issue: data path): buffered per-sample writes, float16 stores, in-memory
stores no larger than their data, chunk-aware shuffling, chunk-sliced lazy reads, and the bounded
teacher-logit cache — each through files the library writes and runs made with the CLI."""

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import karmma.data.store
import karmma.data.store_format
from karmma.cli import main
from karmma.data.order import epoch_order
from karmma.data.sources import load_paired
from karmma.data.store import FeatureStoreWriter, LazyH5, open_store, write_store
from karmma.engine.runs import run_train
from karmma.errors import DataError
from karmma.io.checkpoint import load_model
from karmma.modalities import ModalitySpec, subset_index
from karmma.tasks import cache_teacher_logits
from tests.conftest import tiny_experiment
from tests.hostile import QUICK, cli, store_args, synthetic_store

SPECS = [ModalitySpec("a", 4, 64), ModalitySpec("b", 2, 32)]


def _samples(n, seed=0):
    rng = np.random.default_rng(seed)
    present = rng.random((n, 2)) < 0.8
    present[:, 0] |= ~present[:, 1]
    feats = {s.name: rng.standard_normal((n, *s.shape)).astype(np.float32) for s in SPECS}
    return feats, present


def _writer(path, n, **kw):
    return FeatureStoreWriter(path, [f"x{i}" for i in range(n)], {"t": [i % 3 for i in range(n)]}, {"t": 3},
                              {"teacher": SPECS}, resume=False, **kw)  # fmt: skip


def test_per_sample_writes_are_buffered_per_chunk_and_equal_a_bulk_write(tmp_path, monkeypatch):
    n = 150
    feats, present = _samples(n)
    for m, x in enumerate(feats.values()):
        x[~present[:, m]] = 0.0  # absent: zeros, as a per-sample write leaves them
    monkeypatch.setattr(karmma.data.store_format, "CHUNK_BYTES", 4 * 64 * 4 * 16)  # 16 samples per chunk
    with _writer(tmp_path / "bulk.h5", n) as w:
        w.write_all({"teacher": feats}, present)
    chunk_writes = []
    with _writer(tmp_path / "one.h5", n) as w:
        real = w._write_pending
        w._write_pending = lambda: chunk_writes.append(len(w._pending)) or real()
        for i in range(n):
            w.write(i, {"teacher": {k: v[i] if present[i, m] else None for m, (k, v) in enumerate(feats.items())}},
                    present[i])  # fmt: skip
            if i == 20:  # sample 20 waits in the buffer; it is not marked done on disk yet
                assert not w.h5["done"][16:21].any() and w.done[20]
    assert [c for c in chunk_writes if c] == [16] * 9 + [6]  # one write per chunk, none per sample
    with h5py.File(tmp_path / "bulk.h5") as a, h5py.File(tmp_path / "one.h5") as b:
        assert a["features/teacher/a"].chunks == (16, 4, 64)
        for name in ("features/teacher/a", "features/teacher/b", "present", "done"):
            np.testing.assert_array_equal(a[name][:], b[name][:])


def test_an_interrupted_writer_keeps_what_it_flushed_and_resumes(tmp_path):
    feats, present = _samples(10)
    w = _writer(tmp_path / "s.h5", 10)
    for i in range(4):
        w.write(i, {"teacher": {k: v[i] for k, v in feats.items()}}, [True, True])
    w.close()  # as the extraction's `finally` does on Ctrl-C: the buffered samples reach the file
    w = FeatureStoreWriter(tmp_path / "s.h5", [f"x{i}" for i in range(10)], {"t": [i % 3 for i in range(10)]},
                           {"t": 3}, {"teacher": SPECS}, resume=True)  # fmt: skip
    assert w.done.tolist() == [True] * 4 + [False] * 6
    w.close()
    np.testing.assert_array_equal(open_store(tmp_path / "s.h5").features["a"], feats["a"][:4])


def test_float16_stores_halve_the_file_and_read_back_as_float32(tmp_path):
    feats, present = _samples(200)
    for dtype in ("float32", "float16"):
        with _writer(tmp_path / f"{dtype}.h5", 200, dtype=dtype) as w:
            w.write_all({"teacher": feats}, present)
    f32, f16 = (tmp_path / "float32.h5").stat().st_size, (tmp_path / "float16.h5").stat().st_size
    assert f16 < 0.6 * f32
    held = open_store(tmp_path / "float16.h5", in_memory=True)
    assert held.features["a"].dtype == np.float16  # in memory: no float32 copy of float16 data
    assert sum(a.nbytes for a in held.features.values()) == sum(x.nbytes for x in feats.values()) // 2
    for in_memory in (True, False):
        batch = open_store(tmp_path / "float16.h5", in_memory=in_memory).get_batch(np.array([7, 3, 150]))
        assert batch.tokens[0].dtype == torch.float32
        ref = feats["a"][[7, 3, 150]] * present[[7, 3, 150], 0, None, None]
        np.testing.assert_allclose(batch.tokens[0].numpy(), ref, rtol=1e-3, atol=1e-3)
    # a store written from float16 data stays float16
    write_store(tmp_path / "copy.h5", {"teacher": held})
    assert open_store(tmp_path / "copy.h5").features["a"].dtype == np.float16


def test_float16_refuses_values_it_cannot_hold_naming_the_sample_and_fix(tmp_path):
    feats, _ = _samples(3)
    feats["a"][2, 0, 0] = 1e5
    with (
        _writer(tmp_path / "s.h5", 3, dtype="float16") as w,
        pytest.raises(DataError, match=r"\['x2'\].*float16.*float32"),
    ):
        for i in range(3):
            w.write(i, {"teacher": {k: v[i] for k, v in feats.items()}}, [True, True])
    with pytest.raises(DataError, match="'bfloat8'.*float32"):
        _writer(tmp_path / "t.h5", 3, dtype="bfloat8")


def test_extract_writes_float16_stores(tmp_path):
    from tests.extractors.test_extract import make_utd  # a tiny UTD-MHAD tree

    root, out = make_utd(tmp_path / "utd"), tmp_path / "s.h5"
    argv = ["extract", "utd_mhad", "--encoder", "pool", "--root", str(root), "--out", str(out), "--dtype", "float16"]
    assert main([*argv, "--no-progress"]) == 0
    fs = open_store(out, in_memory=True)
    assert fs.features["inertial"].dtype == np.float16 and len(fs) == 3


def test_chunk_aware_order_is_a_permutation_reading_few_chunks_at_a_time():
    g = torch.Generator().manual_seed(0)
    assert np.array_equal(epoch_order(100, g, 16, 16), torch.randperm(100, generator=torch.Generator().manual_seed(0)))
    order = epoch_order(1000, torch.Generator().manual_seed(1), chunk_rows=10, window=4)
    assert sorted(order.tolist()) == list(range(1000))
    for start in range(0, 1000, 40):  # each window of 4 chunks' worth of steps reads 4 chunks
        assert len(set(order[start : start + 40] // 10)) == 4
    assert not np.array_equal(order, epoch_order(1000, torch.Generator().manual_seed(2), 10, 4))


def test_lazy_reads_slice_chunks_and_equal_memory(tmp_path):
    feats, present = _samples(300)
    with _writer(tmp_path / "s.h5", 300) as w:
        w.write_all({"teacher": feats}, present)
    lazy = open_store(tmp_path / "s.h5", in_memory=False)
    assert isinstance(lazy.features["a"], LazyH5) and lazy.chunk_rows == 64
    rows = np.random.default_rng(0).choice(300, 50, replace=False)
    for x, y in zip(lazy.get_batch(rows).tokens, open_store(tmp_path / "s.h5", in_memory=True).get_batch(rows).tokens):
        assert torch.equal(x, y)


def test_training_from_disk_with_chunk_aware_shuffling_equals_memory(tmp_path, monkeypatch):
    train = synthetic_store(tmp_path / "train.h5", "train", num_train=150)
    # 3 windows of one chunk (64 samples) each: the chunk-aware order, not a uniform permutation
    args = ["train", "--config", "demo_teacher", *QUICK, *store_args(train), "--set", "data.shuffle_chunks=1"]
    assert main([*args[:3], "--run-dir", str(tmp_path / "memory"), *args[3:]]) == 0
    monkeypatch.setattr(karmma.data.store, "_IN_MEMORY_LIMIT", 0)
    assert main([*args[:3], "--run-dir", str(tmp_path / "disk"), *args[3:]]) == 0
    a, b = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("memory", "disk"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_logits_on_disk_match_memory_and_are_reused(tmp_path, monkeypatch):
    run_train(tiny_experiment(epochs=1), tmp_path / "teacher")
    teacher = load_model(tmp_path / "teacher")[0].eval()
    data = load_paired(tiny_experiment(feature_set="student").data, "train", "teacher")
    mem = cache_teacher_logits(teacher, data, batch_size=20)
    disk = cache_teacher_logits(teacher, data, batch_size=20, memory_mb=0, path=tmp_path / "c.h5", teacher_hash="h")
    assert not mem.on_disk and disk.on_disk
    with h5py.File(tmp_path / "c.h5") as h5:
        assert h5["action"].dtype == np.float16 and h5.attrs["rows_done"] == len(data)
    b = data.get_batch(np.arange(len(data)))
    mask = torch.rand(len(data), 3, generator=torch.Generator().manual_seed(0)) < 0.5
    mask = (mask & b.present) | (~(mask & b.present).any(1, keepdim=True) & b.present)
    col = subset_index(mask)
    for k, v in mem.lookup(b.index, col).items():
        torch.testing.assert_close(disk.lookup(b.index, col)[k], v, rtol=2e-3, atol=2e-3)
    disk.close()
    calls = []
    monkeypatch.setattr(teacher, "forward", lambda *a: calls.append(1))
    again = cache_teacher_logits(teacher, data, memory_mb=0, path=tmp_path / "c.h5", teacher_hash="h")
    assert calls == [] and again.on_disk  # complete and of this teacher: reused, not recomputed


def test_distillation_with_the_logit_cache_on_disk_matches_memory_within_noise(tmp_path, capsys):
    train, val = synthetic_store(tmp_path / "t.h5", "train"), synthetic_store(tmp_path / "v.h5", "val")
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "teacher", *QUICK,
                     *store_args(train, val))  # fmt: skip
    assert rc == 0, err
    base = ["distill", "--config", "demo_student", "--teacher", tmp_path / "teacher", *QUICK,
            *store_args(train, val, "student"), "--set", "distill.cache_teacher_logits=true"]  # fmt: skip
    assert cli(capsys, *base[:2], *base[2:], "--run-dir", tmp_path / "mem")[0] == 0
    assert cli(capsys, *base, "--run-dir", tmp_path / "disk", "--set", "distill.cache_memory_mb=0")[0] == 0
    assert (tmp_path / "disk" / "teacher_logits.h5").is_file() and not (tmp_path / "mem" / "teacher_logits.h5").exists()
    a, b = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("mem", "disk"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3  # float16 logits: the same run within noise
