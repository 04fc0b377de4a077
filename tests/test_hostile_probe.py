"""What a second hostile probe of round 3 found, each through ``main(argv)``: features whose float32
form passes the bound, odd HDF5 names, zero-size arrays of absurd shapes, files with hundreds of
modalities, an ``--out`` that is one of the command's own inputs, stores with odd layouts, absurd
counts and grids, and CSVs that lose rows silently."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from karmma.data.store import write_store
from tests.hostile import QUICK, cli, store_args, synthetic_store
from tests.media_trees import EPIC_HEADER
from tests.test_hostile_import import IDS, _Marker, _pickle_reduced, ann, imp  # noqa: F401 (ann: a fixture)


def test_int8_features_are_bounded_as_the_float32_they_become(tmp_path, ann, capsys, monkeypatch):  # noqa: F811
    with h5py.File(tmp_path / "m.h5", "w") as h5:
        h5[f"visual_features/{IDS[0]}"] = np.ones((100, 4000), np.int8)  # 400 KB read, 1.6 MB as float32
    monkeypatch.setenv("KARMMA_MAX_DECLARED_BYTES", "1M")
    rc, _, err = cli(capsys, *imp("mtcn", tmp_path / "m.h5", ann, tmp_path / "s.h5"))
    assert rc == 2 and "1.5 MiB" in err and "KARMMA_MAX_DECLARED_BYTES" in err and not (tmp_path / "s.h5").exists()


def test_a_name_that_is_not_utf8_names_no_segment(tmp_path, ann, capsys):  # noqa: F811
    with h5py.File(tmp_path / "m.h5", "w") as h5:
        h5[f"visual_features/{IDS[0]}"] = np.ones((4, 8), np.float32)
        h5["visual_features"].create_dataset(b"\xff\xfe", data=np.ones((4, 8), np.float32))
    rc, out, err = cli(capsys, *imp("mtcn", tmp_path / "m.h5", ann, tmp_path / "s.h5"))
    assert rc == 0 and "1 segments" in out and (tmp_path / "s.h5.summary.json").is_file(), err


def test_a_zero_size_array_of_an_absurd_shape_is_refused(tmp_path, ann, capsys):  # noqa: F811
    from numpy._core.multiarray import _reconstruct

    state = (_reconstruct, (np.ndarray, (0,), b"b"), (1, (3, 1 << 61, 0), np.dtype("f4"), False, b""))
    data = _pickle_reduced({"features": {"RGB": _Marker()}, "narration_ids": IDS}, lambda _: state)
    (tmp_path / "z.pkl").write_bytes(data)
    rc, _, err = cli(capsys, *imp("tbn", tmp_path / "z.pkl", ann, tmp_path / "s.h5"))
    assert rc == 2 and "z.pkl" in err and "beyond what an array can be" in err


def test_a_file_of_hundreds_of_modalities_is_refused_at_once(tmp_path, ann, capsys):  # noqa: F811
    (tmp_path / "f").mkdir()
    np.savez(tmp_path / "f" / f"{IDS[0]}.npz", **{f"m{k}": np.ones((2, 3), np.float32) for k in range(100)})
    rc, _, err = cli(capsys, *imp("npy", tmp_path / "f", ann, tmp_path / "s.h5"))
    assert rc == 2 and "holds 100 modalities" in err and list(tmp_path.glob(".s.h5*")) == []


@pytest.mark.parametrize("which", ["annotations", "source"])
def test_out_cannot_be_one_of_the_inputs(tmp_path, ann, capsys, which):  # noqa: F811
    with h5py.File(tmp_path / "m.h5", "w") as h5:
        h5[f"visual_features/{IDS[0]}"] = np.ones((4, 8), np.float32)
    target = ann if which == "annotations" else tmp_path / "m.h5"
    before = target.read_bytes()
    rc, _, err = cli(capsys, *imp("mtcn", tmp_path / "m.h5", ann, target))
    assert rc == 2 and f"is the file given as --{which}" in err and target.read_bytes() == before


def _odd_store(path, change):
    synthetic_store(path, "train")
    with h5py.File(path, "r+") as h5:
        change(h5)
    return path


def _retask(h5):
    import json

    meta = json.loads(h5.attrs["meta"])
    meta["tasks"] = dict.fromkeys(meta["tasks"], "abc")
    h5.attrs["meta"] = json.dumps(meta)


def _shorten(name):
    def change(h5):
        data = h5[name][:-2]
        del h5[name]
        h5[name] = data

    return change


def _duplicate_ids(h5):
    ids = list(h5["ids"].asstr()[:])
    ids[1] = ids[0]
    del h5["ids"]
    h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())


@pytest.mark.parametrize("change,words", [
    (_retask, "has 'abc' classes in the store's metadata"),
    (_shorten("present"), "dataset 'present' has shape (78, 3), expected (80, 3)"),
    (_shorten("labels/verb"), "dataset 'labels/verb' has shape (78,), expected (80,)"),
    (_duplicate_ids, "appear more than once"),
])  # fmt: skip
def test_stores_of_odd_layouts_are_refused_by_train(tmp_path, capsys, change, words):
    store = _odd_store(tmp_path / "odd.h5", change)
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *QUICK,
                     *store_args(store))  # fmt: skip
    assert rc == 2 and words in err and "odd.h5" in err and "Traceback" not in err, err


@pytest.mark.parametrize("args,words", [
    (["evaluate", "run", "--repeats", "100000000000000000000"], "is more than 1,000,000"),
    (["cost", "run", "--batch-size", "100000000"], "is more than 1,000,000"),
    (["demo", "--seeds", "99999999999999999999999"], "outside 0..4294967295"),
    (["export", "run", "--seed", "-1"], "outside 0..4294967295"),
])  # fmt: skip
def test_absurd_counts_and_seeds_are_refused_at_parsing(capsys, args, words):
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and words in err


def test_a_grid_of_billions_of_settings_is_refused_before_anything(tmp_path, capsys):
    values = ",".join(str(i) for i in range(1, 31))
    grid = [a for k in ("optim.epochs", "optim.batch_size", "model.depth", "optim.warmup_steps", "model.dim")
            for a in ("--grid", f"{k}={values}")]  # fmt: skip
    rc, _, err = cli(capsys, "sweep", "--config", "demo_student", "--out", tmp_path / "sw", *grid)
    assert rc == 2 and "24,300,000 settings" in err and not (tmp_path / "sw").exists()


ROW = "P01_01_0,P01,P01_01,00:00:00.00,00:00:00.00,00:00:01.00,1,20,x y,x,0,y,1,['y'],[1]\n"


@pytest.mark.parametrize("data,words", [
    ((EPIC_HEADER + ROW.replace("x y", '"x y') + ROW.replace("_0,", "_1,") + ROW.replace("_0,", "_2,")).encode(),
     "run over several lines (an unmatched quote"),
    ((EPIC_HEADER.replace("verb_class", "noun_class") + ROW).encode(), "names column(s) ['noun_class'] more than once"),
    ((EPIC_HEADER + ROW).encode("utf-32"), "is UTF-32 text"),
])  # fmt: skip
def test_csvs_that_would_lose_rows_or_be_misread_are_named(tmp_path, capsys, data, words):
    csv = tmp_path / "EPIC_100_train.csv"
    csv.write_bytes(data)
    (tmp_path / "EPIC").mkdir()
    rc, _, err = cli(capsys, "extract", "epic100", "--encoder", "pool",
                     "--root", tmp_path / "EPIC", "--annotations", csv, "--out",
                     tmp_path / "s.h5", "--no-progress")  # fmt: skip
    assert rc == 2 and words in err, err


def test_bad_values_in_an_import_name_the_source_and_the_segment(tmp_path, ann, capsys):  # noqa: F811
    with h5py.File(tmp_path / "m.h5", "w") as h5:
        h5[f"visual_features/{IDS[0]}"] = np.ones((4, 8), np.float32)
        h5[f"visual_features/{IDS[1]}"] = np.full((4, 8), np.inf, np.float32)
    rc, _, err = cli(capsys, *imp("mtcn", tmp_path / "m.h5", ann, tmp_path / "s.h5"))
    assert rc == 2 and "m.h5" in err and f"['{IDS[1]}']" in err and ".importing" not in err, err


def test_write_store_names_samples_by_id(tmp_path):
    from karmma.data.synthetic import generate
    from karmma.errors import DataError
    from tests.hostile import SMALL

    sets = generate(SMALL)["val"]
    bad = np.array(sets["teacher"].features["rgb"])
    bad[4, 0, 0] = np.nan
    sets["teacher"].features["rgb"] = bad
    with pytest.raises(DataError, match=r"sample\(s\) \['val_00004'\]"):
        write_store(tmp_path / "s.h5", sets)


def test_an_npz_member_no_modality_can_be_named_names_the_folder(tmp_path, ann, capsys):  # noqa: F811
    import io
    import zipfile

    (tmp_path / "f").mkdir()
    buf = io.BytesIO()
    np.save(buf, np.ones((2, 3), np.float32))
    with zipfile.ZipFile(tmp_path / "f" / f"{IDS[0]}.npz", "w") as z:
        z.writestr("..npy", buf.getvalue())
    rc, _, err = cli(capsys, *imp("npy", tmp_path / "f", ann, tmp_path / "s.h5"))
    assert rc == 2 and f"{tmp_path / 'f'}: modality '.'" in err and "is this a feature file?" in err
