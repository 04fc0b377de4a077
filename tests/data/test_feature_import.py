"""`karmma import-features`: MTCN HDF5, npy/npz folders and TBN pickles (restricted unpickler)."""

import json
import os
import pickle

import h5py
import numpy as np
import pytest

from karmma.cli import main
from karmma.data.feature_import import safe_unpickle
from karmma.data.store import open_store
from karmma.errors import DataError
from tests.media_trees import epic_csv

ROWS = [("P01_01_0", "P01_01", 1, 40, 0, 1), ("P01_01_1", "P01_01", 41, 80, 2, 3), ("P02_01_0", "P02_01", 1, 9, 4, 5)]


@pytest.fixture
def ann(tmp_path):
    return epic_csv(tmp_path / "EPIC_100_train.csv", ROWS)


def _import(tmp_path, fmt, source, ann, *extra):
    out = tmp_path / f"{fmt}.h5"
    code = main(["import-features", "--format", fmt, "--source", str(source), "--annotations", str(ann),
                 "--out", str(out), "--no-progress", *extra])  # fmt: skip
    return code, out


def test_mtcn_hdf5(tmp_path, ann, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "mtcn.hdf5"
    with h5py.File(src, "w") as h5:
        for nid in ("P01_01_0", "P01_01_1", "P02_01_0", "P09_01_3"):  # the last is in no annotation
            h5[f"visual_features/{nid}"] = rng.normal(size=(10, 6)).astype(np.float32)
        for nid in ("P01_01_0", "P02_01_0"):  # audio for two segments only
            h5[f"audio_features/{nid}"] = rng.normal(size=(10, 4)).astype(np.float32)
        expected = h5["visual_features/P01_01_1"][:]
    code, out = _import(tmp_path, "mtcn", src, ann, "--tokens", "5")
    assert code == 0
    printed = capsys.readouterr().out
    assert "audio: 5 tokens x 4, absent for 1 segment(s)" in printed and "1 feature row(s) match no" in printed
    data = open_store(out)
    assert data.ids == ["P01_01_0", "P01_01_1", "P02_01_0"] and data.modality_names == ["audio", "visual"]
    assert data.present.tolist() == [[True, True], [False, True], [True, True]]
    assert data.labels["noun"].tolist() == [1, 3, 5]
    np.testing.assert_allclose(data.features["visual"][1], expected[[0, 2, 4, 7, 9]])  # 10 clips -> 5, evenly


def test_npy_and_npz_folders(tmp_path, ann):
    src = tmp_path / "feats"
    (src / "rgb").mkdir(parents=True)
    np.save(src / "rgb" / "P01_01_0.npy", np.ones((3, 8), np.float32))
    np.save(src / "rgb" / "P02_01_0.npy", np.full((3, 8), 2, np.float32))
    np.savez(src / "P01_01_1.npz", rgb=np.zeros((3, 8), np.float32), flow=np.ones((3, 2), np.float32))
    code, out = _import(tmp_path, "npy", src, ann)
    assert code == 0
    data = open_store(out)
    assert data.modality_names == ["flow", "rgb"] and data.specs[1].shape == (3, 8)
    assert data.present.tolist() == [[False, True], [True, True], [False, True]]
    assert float(data.features["rgb"][2].mean()) == 2.0


def _tbn(path, nids, n=4, s=5, d=16):
    rng = np.random.default_rng(1)
    feats = {m: rng.normal(size=(len(nids), s, d)).astype(np.float32) for m in ("RGB", "Flow", "Audio")}
    with open(path, "wb") as f:
        pickle.dump({"features": feats, "narration_ids": nids}, f)
    return feats


def test_tbn_pickle_through_the_restricted_unpickler(tmp_path, ann):
    feats = _tbn(tmp_path / "tbn.pkl", ["P01_01_0", "P02_01_0"])  # P01_01_1 has no features: listed, not written
    code, out = _import(tmp_path, "tbn", tmp_path / "tbn.pkl", ann)
    assert code == 0
    data = open_store(out)
    assert data.ids == ["P01_01_0", "P02_01_0"] and data.modality_names == ["audio", "flow", "rgb"]
    np.testing.assert_allclose(data.features["flow"][1], feats["Flow"][1])
    summary = json.loads((tmp_path / "tbn.h5.summary.json").read_text())
    assert summary["not_written"] == ["P01_01_1"]
    # the imported store trains a teacher and distils a student (one feature set: the student reads it too)
    fast = ["--set", "optim.epochs=1", "--set", "optim.batch_size=2", "--set", f"data.train={out}",
            "--set", f"data.val={out}", "--no-progress"]  # fmt: skip
    assert main(["train", "--config", "epic100_teacher", "--run-dir", str(tmp_path / "t"), *fast]) == 0
    assert main(["distill", "--config", "epic100_student", "--teacher", str(tmp_path / "t"), "--run-dir",
                 str(tmp_path / "s"), *fast, "--set", "data.feature_set=teacher"]) == 0  # fmt: skip


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload", [_Exploit(), {"features": {"RGB": _Exploit()}, "narration_ids": ["a"]}])
def test_a_pickle_that_would_run_code_is_refused_by_name(tmp_path, ann, payload, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match=r"evil\.pkl: refused to unpickle (posix|os|nt)\.system"):
        safe_unpickle(bad)
    code, _ = _import(tmp_path, "tbn", bad, ann)
    assert code == 2 and "refused to unpickle" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def test_object_arrays_and_mismatches_are_refused(tmp_path, ann):
    p = tmp_path / "obj.pkl"
    p.write_bytes(pickle.dumps({"features": {"RGB": np.array([1, "x"], dtype=object)}, "narration_ids": ["a", "b"]}))
    with pytest.raises(DataError, match="obj.pkl"):
        safe_unpickle(p)
    _tbn(tmp_path / "other.pkl", ["P77_01_0"])
    code, _ = _import(tmp_path, "tbn", tmp_path / "other.pkl", ann)
    assert code == 2
