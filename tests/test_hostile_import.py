"""Hostile feature files through ``main(argv)``: the HDF5, pickle, npy and npz files a user hands
``import-features``, ``predict --input``, ``info``, ``train`` and ``evaluate`` may not read another
file, exhaust memory or hang; a failed import keeps the store it would have replaced. Memory cases
run in a child process under an address-space cap (``cli_limited``), hangs under a timeout."""

from __future__ import annotations

import json
import pickle
import zipfile

import h5py
import numpy as np
import pytest

from karmma.data.store import FeatureStoreWriter, open_store, store_info
from karmma.data.synthetic import specs
from karmma.errors import DataError
from tests.hostile import QUICK, cli, cli_limited, small_disk, store_args, synthetic_store
from tests.media_trees import epic_csv

ROWS = [("P01_01_0", "P01_01", 1, 40, 0, 1), ("P01_01_1", "P01_01", 41, 80, 2, 3), ("P02_01_0", "P02_01", 1, 9, 4, 5)]
IDS = [r[0] for r in ROWS]
VAR = "KARMMA_MAX_DECLARED_BYTES"
SECRET = b"ssh-rsa AAAAB-the-user's-private-key-bytes-" * 4  # 172 bytes of a file nobody handed karmma


@pytest.fixture
def ann(tmp_path):
    return epic_csv(tmp_path / "EPIC_100_train.csv", ROWS)


def imp(fmt, source, ann, out, *extra) -> list[str]:
    return ["import-features", "--format", fmt, "--source", source, "--annotations", ann, "--out", out,
            "--no-progress", *extra]  # fmt: skip


def tbn(path, ids=IDS, dtype=np.float32, protocol=4, **changes):
    feats = {m: np.random.default_rng(1).normal(size=(len(ids), 5, 16)).astype(dtype) for m in ("RGB", "Flow")}
    path.write_bytes(pickle.dumps({"features": {**feats, **changes}, "narration_ids": list(ids)}, protocol=protocol))
    return feats


# -- HDF5: nothing may read another file ------------------------------------------------------------


def _mtcn_reading(path, tmp_path, how):
    secret = tmp_path / "id_rsa"
    secret.write_bytes(SECRET)
    with h5py.File(path, "w") as h5:
        for nid in IDS[:2]:
            h5[f"visual_features/{nid}"] = np.ones((4, 43), np.float32)
        name = f"visual_features/{IDS[2]}"
        if how == "external storage":
            h5.create_dataset(name, shape=(1, 43), dtype=np.float32, external=[(str(secret), 0, len(SECRET))])
        elif how == "external link":
            with h5py.File(tmp_path / "other.h5", "w") as other:
                other["x"] = np.frombuffer(SECRET, np.float32).reshape(1, 43)
            h5[name] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/x")
        elif how == "virtual dataset":
            layout = h5py.VirtualLayout(shape=(1, 43), dtype=np.float32)
            layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "x", shape=(1, 43))
            with h5py.File(tmp_path / "other.h5", "w") as other:
                other["x"] = np.frombuffer(SECRET, np.float32).reshape(1, 43)
            h5.create_virtual_dataset(name, layout)
        else:  # a soft link: inside the file, but a path karmma does not follow
            h5[name] = h5py.SoftLink(f"/visual_features/{IDS[0]}")


@pytest.mark.parametrize("how,words", [
    ("external storage", "external storage"),
    ("external link", "external link"),
    ("virtual dataset", "virtual dataset"),
    ("soft link", "soft link"),
])  # fmt: skip
def test_an_mtcn_file_cannot_read_another_file(tmp_path, ann, capsys, how, words):
    _mtcn_reading(tmp_path / "mtcn.h5", tmp_path, how)
    rc, out, err = cli(capsys, *imp("mtcn", tmp_path / "mtcn.h5", ann, tmp_path / "s.h5"))
    assert rc == 2 and words in err and "mtcn.h5" in err and "P02_01_0" in err and "Traceback" not in err
    assert not (tmp_path / "s.h5").exists() and out == ""


def _link_out(store, tmp_path, dataset):
    """Replace ``dataset`` of a store with an external link to the same data in another file."""
    with h5py.File(store, "a") as h5:
        data = h5[dataset][()]
        del h5[dataset]
        with h5py.File(tmp_path / "elsewhere.h5", "w") as other:
            other["x"] = data
        h5[dataset] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "/x")


def test_a_store_that_reads_another_file_is_refused_by_info_train_and_evaluate(tmp_path, capsys, teacher_run):
    store = synthetic_store(tmp_path / "linked.h5", "val")
    _link_out(store, tmp_path, "features/teacher/rgb")
    rc, out, err = cli(capsys, "info", store)
    assert rc == 2 and "external link" in err and "features/teacher/rgb" in err and out == ""
    train = ["train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *QUICK, *store_args(store)]
    rc, _, err = cli(capsys, *train)
    assert rc == 2 and "external link" in err and "linked.h5" in err
    rc, _, err = cli(capsys, "evaluate", teacher_run, "--val", store, "--out", tmp_path / "ev")
    assert rc == 2 and "external link" in err


def test_resuming_into_a_store_that_reads_another_file_is_refused(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStoreWriter(path, ["a", "b"], {"action": [0, 1]}, {"action": 2}, {"teacher": specs("teacher")}):
        pass
    _link_out(path, tmp_path, "labels/action")
    with pytest.raises(DataError, match="external link"):
        FeatureStoreWriter(path, ["a", "b"], {"action": [0, 1]}, {"action": 2}, {"teacher": specs("teacher")})


# -- memory: what a file declares is bounded before it is read ----------------------------------------


def test_an_mtcn_dataset_declaring_gigabytes_is_refused_within_memory(tmp_path, ann):
    with h5py.File(tmp_path / "mtcn.h5", "w") as h5:  # 4 GB of zeros declared, a few KB on disk
        h5.create_dataset(f"visual_features/{IDS[0]}", shape=(100_000, 10_000), dtype=np.float32,
                          chunks=(1000, 1000), compression="gzip")  # fmt: skip
    rc, _, err = cli_limited(*imp("mtcn", tmp_path / "mtcn.h5", ann, tmp_path / "s.h5"), timeout=120)
    assert rc == 2 and VAR in err and "P01_01_0" in err and "MemoryError" not in err


def test_an_mtcn_file_is_read_a_segment_at_a_time(tmp_path, ann):
    # twelve 250 MB datasets (3 GB together, the cap), three of them annotated: never all in memory at once
    with h5py.File(tmp_path / "mtcn.h5", "w") as h5:
        for nid in [*IDS, *(f"P09_01_{i}" for i in range(9))]:
            h5.create_dataset(f"visual_features/{nid}", shape=(62_500, 1000), dtype=np.float32, chunks=(500, 1000),
                              compression="gzip")  # fmt: skip
    rc, out, err = cli_limited(*imp("mtcn", tmp_path / "mtcn.h5", ann, tmp_path / "s.h5", "--tokens", "4"),
                               timeout=180)  # fmt: skip
    assert rc == 0, err
    assert "3 segments" in out and "9 feature row(s) match no annotated segment" in out
    assert open_store(tmp_path / "s.h5").specs[0].shape == (4, 1000)


def _pickle_reduced(obj, reduce, protocol=2) -> bytes:
    """``obj`` pickled with every ``_Marker`` in it written as ``reduce`` says."""
    import io

    class P(pickle.Pickler):
        def reducer_override(self, x):
            return reduce(x) if isinstance(x, _Marker) else NotImplemented

    buf = io.BytesIO()
    P(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


class _Marker:
    pass


def test_a_zero_stride_pickle_is_refused_within_memory(tmp_path, ann):
    # numpy.ndarray called over 8 bytes with zero strides: a 178-byte file declaring 4 GB
    strided = (np.ndarray, ((2, 50_000, 10_000), np.dtype("f8"), b"\0" * 8, 0, (0, 0, 0)))
    data = _pickle_reduced({"features": {"RGB": _Marker()}, "narration_ids": IDS[:2]}, lambda _: strided)
    (tmp_path / "z.pkl").write_bytes(data)
    rc, _, err = cli_limited(*imp("tbn", tmp_path / "z.pkl", ann, tmp_path / "s.h5"), timeout=120)
    assert rc == 2 and "z.pkl" in err and "numpy.ndarray" in err and "MemoryError" not in err


def test_pickled_arrays_over_the_bound_are_refused_naming_the_variable(tmp_path, ann, capsys, monkeypatch):
    # one 512 KiB byte string, memoised, rebuilt into eight arrays: the arrays declare 4 MiB
    from numpy._core.multiarray import _reconstruct

    raw = bytes(512 << 10)
    build = (_reconstruct, (np.ndarray, (0,), b"b"), (1, (2, 64, 1024), np.dtype("f4"), False, raw))
    feats = {f"m{i}": _Marker() for i in range(8)}
    (tmp_path / "amp.pkl").write_bytes(_pickle_reduced({"features": feats, "narration_ids": IDS[:2]},
                                                       lambda _: build, protocol=3))  # fmt: skip
    assert (tmp_path / "amp.pkl").stat().st_size < 1 << 20
    rc, _, err = cli_limited(*imp("tbn", tmp_path / "amp.pkl", ann, tmp_path / "s.h5"), env={VAR: "1M"})
    assert rc == 2 and VAR in err and "amp.pkl" in err and "arrays together" in err
    tbn(tmp_path / "big.pkl", dtype=np.float64, RGB=np.zeros((3, 5, 10_000)))  # a genuine 1.2 MB file
    monkeypatch.setenv(VAR, "1M")
    rc, _, err = cli(capsys, *imp("tbn", tmp_path / "big.pkl", ann, tmp_path / "s.h5"))
    assert rc == 2 and VAR in err and "big.pkl (the pickle file)" in err


def _npy_header(shape, descr="<f4") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _npz_bomb(path):
    """An .npz whose member declares (100000, 10000) float32 (4 GB) over 1 MB of zeros."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("rgb.npy", _npy_header((100_000, 10_000)) + bytes(1 << 20))


def test_an_npz_bomb_is_refused_by_import_and_predict(tmp_path, ann, teacher_run):
    (tmp_path / "feats").mkdir()
    _npz_bomb(tmp_path / "feats" / f"{IDS[0]}.npz")
    rc, _, err = cli_limited(*imp("npy", tmp_path / "feats", ann, tmp_path / "s.h5"), timeout=120)
    assert rc == 2 and VAR in err and "'rgb'" in err and "MemoryError" not in err
    rc, _, err = cli_limited("predict", teacher_run, "--input", tmp_path / "feats" / f"{IDS[0]}.npz", timeout=120)
    assert rc == 2 and VAR in err and "'rgb'" in err and "MemoryError" not in err


def test_an_npy_header_declaring_gigabytes_over_a_tiny_file_is_refused(tmp_path, ann, capsys):
    (tmp_path / "feats" / "rgb").mkdir(parents=True)
    (tmp_path / "feats" / "rgb" / f"{IDS[0]}.npy").write_bytes(_npy_header((100_000, 10_000)) + bytes(64))
    rc, _, err = cli_limited(*imp("npy", tmp_path / "feats", ann, tmp_path / "s.h5"), timeout=120)
    assert rc == 2 and VAR in err and f"{IDS[0]}.npy" in err and "MemoryError" not in err
    (tmp_path / "feats" / "rgb" / f"{IDS[0]}.npy").write_bytes(_npy_header((1000, 1000)) + bytes(64))
    rc, _, err = cli(capsys, *imp("npy", tmp_path / "feats", ann, tmp_path / "s.h5"))
    assert rc == 2 and "truncated" in err and "holds 64" in err


@pytest.mark.parametrize("content,words", [
    (_npy_header((3, 8))[:20], "truncated"),
    (b"rgb,1,2,3\n" * 10, "not an .npy array"),
    (_npy_header((3,), "|O") + b"\0" * 24, "object (pickled) array; refused"),
])  # fmt: skip
def test_npy_errors_say_what_is_wrong(tmp_path, ann, capsys, content, words):
    (tmp_path / "feats" / "rgb").mkdir(parents=True)
    (tmp_path / "feats" / "rgb" / f"{IDS[0]}.npy").write_bytes(content)
    rc, _, err = cli(capsys, *imp("npy", tmp_path / "feats", ann, tmp_path / "s.h5"))
    assert rc == 2 and words in err and f"{IDS[0]}.npy" in err and err.count("\n") == 1


# -- pickles that would hang -----------------------------------------------------------------------


def _dag() -> list:
    node: list = []
    for _ in range(40):
        node = [node, node]  # 41 lists, 2**40 paths
    return node


def _punycode() -> bytes:
    import _codecs

    slow = (_codecs.encode, ("".join(chr(0x100 + i) for i in range(20_000)), "punycode"))  # over a minute
    return _pickle_reduced({"features": {"RGB": _Marker()}, "narration_ids": IDS}, lambda _: slow)


def _deep() -> bytes:
    n = 200_000  # lists nested 200 000 deep, built without recursion by the pickle itself
    return b"\x80\x02}(X\x0d\x00\x00\x00narration_ids" + b"]" * n + b"a" * (n - 1) + b"X\x08\x00\x00\x00features}u."


@pytest.mark.parametrize("make,words", [
    (lambda: pickle.dumps({"features": {"RGB": _dag()}, "narration_ids": _dag()}), "narration_ids is not a list"),
    (_punycode, "punycode"),
    (_deep, "narration_ids is not a list"),
])  # fmt: skip
def test_pickles_that_would_hang_are_refused_in_seconds(tmp_path, ann, make, words):
    (tmp_path / "h.pkl").write_bytes(make())
    rc, _, err = cli_limited(*imp("tbn", tmp_path / "h.pkl", ann, tmp_path / "s.h5"), timeout=45)
    assert rc == 2 and words in err and "h.pkl" in err and "Traceback" not in err


# -- genuine files of every kind still import -------------------------------------------------------


@pytest.mark.parametrize("protocol", range(6))
def test_genuine_tbn_pickles_of_every_protocol_import(tmp_path, ann, capsys, protocol):
    feats = tbn(tmp_path / "tbn.pkl", protocol=protocol, Audio=np.asfortranarray(np.ones((3, 5, 4), ">f8")))
    rc, out, err = cli(capsys, *imp("tbn", tmp_path / "tbn.pkl", ann, tmp_path / "s.h5"))
    assert rc == 0, err
    data = open_store(tmp_path / "s.h5")
    assert data.modality_names == ["audio", "flow", "rgb"] and data.ids == IDS
    np.testing.assert_allclose(data.features["flow"][2], feats["Flow"][2])


@pytest.mark.parametrize("fmt", ["tbn", "npy", "npz", "mtcn"])
def test_complex_features_are_refused_naming_file_and_modality(tmp_path, ann, capsys, fmt):
    x = np.ones((3, 5, 16), np.complex64)
    src = tmp_path / "src"
    if fmt == "tbn":
        tbn(src, RGB=x)
    elif fmt == "npy":
        (src / "rgb").mkdir(parents=True)
        np.save(src / "rgb" / f"{IDS[0]}.npy", x[0])
    elif fmt == "npz":
        src.mkdir()
        np.savez(src / f"{IDS[0]}.npz", rgb=x[0])
    else:
        with h5py.File(src, "w") as h5:
            h5[f"visual_features/{IDS[0]}"] = x[0]
    rc, _, err = cli(capsys, *imp("npy" if fmt == "npz" else fmt, src, ann, tmp_path / "s.h5"))
    assert rc == 2 and "complex" in err and "real numbers" in err and ("rgb" in err.lower() or "visual" in err)


def test_predict_refuses_complex_features(tmp_path, capsys, teacher_run, stores):
    s = open_store(stores[0]).specs[0]
    np.savez(tmp_path / "c.npz", **{s.name: np.ones(s.shape, np.complex64)})
    rc, out, err = cli(capsys, "predict", teacher_run, "--input", tmp_path / "c.npz")
    assert rc == 2 and "complex" in err and "real numbers" in err and repr(s.name) in err and "c.npz" in err


@pytest.mark.parametrize("tokens", ["0", "-3"])
def test_tokens_below_one_are_refused_at_parsing(tmp_path, ann, capsys, tokens):
    tbn(tmp_path / "tbn.pkl")
    rc, _, err = cli(capsys, *imp("tbn", tmp_path / "tbn.pkl", ann, tmp_path / "s.h5", "--tokens", tokens))
    assert rc == 2 and "--tokens" in err and "must be at least 1" in err and not (tmp_path / "s.h5").exists()


# -- a failed import loses nothing; the summary is the store's --------------------------------------


def test_a_failed_or_interrupted_import_keeps_the_old_store(tmp_path, ann, capsys, monkeypatch):
    tbn(tmp_path / "good.pkl", ids=IDS[:2])
    out = tmp_path / "s.h5"
    assert cli(capsys, *imp("tbn", tmp_path / "good.pkl", ann, out))[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    tbn(tmp_path / "nan.pkl", RGB=np.full((3, 5, 16), np.nan, np.float32))  # all three segments, one is NaN
    rc, _, err = cli(capsys, *imp("tbn", tmp_path / "nan.pkl", ann, out))
    assert rc == 2 and "NaN" in err
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != "nan.pkl"}
    assert after == before  # the store and its summary byte-identical, no temporary file left

    import karmma.data.feature_import as fi

    def interrupted(x, n):
        raise KeyboardInterrupt

    tbn(tmp_path / "all.pkl")
    monkeypatch.setattr(fi, "as_tokens", interrupted)
    rc, _, _ = cli(capsys, *imp("tbn", tmp_path / "all.pkl", ann, out))
    assert rc == 130
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".pkl"}
    assert after == {k: v for k, v in before.items() if not k.endswith(".pkl")}
    monkeypatch.undo()
    assert cli(capsys, *imp("tbn", tmp_path / "all.pkl", ann, out))[0] == 0
    summary = json.loads((tmp_path / "s.h5.summary.json").read_text())
    assert summary["samples"] == store_info(out)["num_samples"] == 3 and summary["not_written"] == []


def test_a_full_disk_keeps_the_old_store_and_says_so(tmp_path, ann, capsys):
    disk = tmp_path / "disk"
    with small_disk(disk, "5M"):
        tbn(tmp_path / "small.pkl", ids=IDS[:2])
        assert cli(capsys, *imp("tbn", tmp_path / "small.pkl", ann, disk / "s.h5"))[0] == 0
        before = {p.name: p.read_bytes() for p in disk.iterdir()}
        noise = np.random.default_rng(0).normal(size=(3, 500, 1024)).astype(np.float32)
        tbn(tmp_path / "big.pkl", RGB=noise)  # 6 MB of features that do not compress: the disk fills mid-write
        rc, _, err = cli(capsys, *imp("tbn", tmp_path / "big.pkl", ann, disk / "s.h5"))
        assert rc == 2 and "no space left" in err and f"{disk / 's.h5'} is left as it was" in err
        assert {p.name: p.read_bytes() for p in disk.iterdir()} == before


# -- info -----------------------------------------------------------------------------------------------


def _odd_store(path, tmp_path, kind):
    store = synthetic_store(path, "val")
    with h5py.File(store, "a") as h5:
        if kind == "no ids":
            del h5["ids"], h5["done"]
        elif kind == "corrupt meta":
            h5.attrs["meta"] = '{"tasks": [' * 5000
        elif kind == "not a store":
            del h5.attrs["format"]
    if kind == "external link":
        _link_out(store, tmp_path, "done")


@pytest.mark.parametrize("kind,words", [
    ("no ids", "no readable ids/done"),
    ("corrupt meta", "metadata is missing or corrupt"),
    ("not a store", "not a karmma feature store"),
    ("external link", "external link"),
])  # fmt: skip
def test_info_on_odd_stores_is_one_line(tmp_path, capsys, kind, words):
    _odd_store(tmp_path / "odd.h5", tmp_path, kind)
    rc, out, err = cli(capsys, "info", tmp_path / "odd.h5")
    assert rc == 2 and words in err and "odd.h5" in err and err.count("\n") == 1 and out == ""


def test_info_prints_valid_json_for_long_class_lists(tmp_path, capsys):
    store = synthetic_store(tmp_path / "s.h5", "val")
    with h5py.File(store, "a") as h5:
        meta = json.loads(h5.attrs["meta"])
        meta["class_names"] = {"verb": [f"verb number {i} with a long name" for i in range(3000)]}
        h5.attrs["meta"] = json.dumps(meta)
    rc, out, _ = cli(capsys, "info", store)
    info = json.loads(out)
    assert rc == 0 and info["class_names"]["verb"]["count"] == 3000 and len(info["class_names"]["verb"]["first"]) == 5
