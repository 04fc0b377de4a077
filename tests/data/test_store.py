import h5py
import numpy as np
import pytest

from karmma.data.store import FeatureStoreWriter, open_store, store_info, write_store
from karmma.errors import DataError
from karmma.modalities import ModalitySpec


def test_roundtrip_both_feature_sets(tmp_path, tiny_data):
    path = write_store(tmp_path / "train.h5", tiny_data["train"])
    for fs in ("teacher", "student"):
        for in_memory in (True, False):
            ref = tiny_data["train"][fs]
            got = open_store(path, fs, in_memory=in_memory)
            assert got.ids == ref.ids and got.specs == ref.specs
            np.testing.assert_array_equal(got.present, ref.present)
            b1, b2 = got.get_batch([5, 1, 9]), ref.get_batch([5, 1, 9])
            for x, y in zip(b1.tokens, b2.tokens):
                np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-6)
    info = store_info(path)
    assert info["num_samples"] == len(tiny_data["train"]["teacher"]) and info["tasks"]["verb"] == 3


def test_absent_modalities_survive(tmp_path):
    specs = [ModalitySpec("a", 1, 2), ModalitySpec("b", 1, 2)]
    with FeatureStoreWriter(tmp_path / "s.h5", ["x", "y"], {"t": [0, 1]}, {"t": 2}, {"teacher": specs}) as w:
        w.write(0, {"teacher": {"a": np.ones((1, 2)), "b": None}}, [True, False])
        w.write(1, {"teacher": {"a": None, "b": np.ones((1, 2))}}, [False, True])
    fs = open_store(tmp_path / "s.h5")
    assert fs.present.tolist() == [[True, False], [False, True]]


def test_interrupted_store_resumes_and_reads_done_only(tmp_path):
    specs = [ModalitySpec("a", 1, 2)]
    args = (tmp_path / "s.h5", ["x", "y", "z"], {"t": [0, 1, 0]}, {"t": 2}, {"teacher": specs})
    w = FeatureStoreWriter(*args)
    w.write(0, {"teacher": {"a": np.ones((1, 2))}}, [True])
    w.close()
    assert open_store(tmp_path / "s.h5").ids == ["x"]
    w = FeatureStoreWriter(*args, resume=True)
    assert w.done.tolist() == [True, False, False]
    w.write(2, {"teacher": {"a": np.ones((1, 2))}}, [True])
    w.close()
    assert open_store(tmp_path / "s.h5", in_memory=False).ids == ["x", "z"]


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist.*karmma extract"):
        open_store(tmp_path / "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(DataError, match=r"bad\.h5.*corrupt"):
        open_store(bad)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = 1
    with pytest.raises(DataError, match="not a karmma feature store"):
        open_store(other)


def test_unknown_feature_set_and_misshaped_entry(tmp_path, tiny_data):
    path = write_store(tmp_path / "t.h5", tiny_data["train"])
    with pytest.raises(DataError, match="no feature set 'large'"):
        open_store(path, "large")
    with h5py.File(path, "r+") as h5:
        del h5["features/teacher/rgb"]
        h5.create_dataset("features/teacher/rgb", data=np.zeros((len(h5["ids"]), 8, 5), np.float32))
    with pytest.raises(DataError, match=r"t\.h5.*'rgb'.*expected"):
        open_store(path, "teacher")


def test_writer_checks_shapes(tmp_path):
    specs = [ModalitySpec("a", 1, 2)]
    with FeatureStoreWriter(tmp_path / "s.h5", ["x"], {"t": [0]}, {"t": 1}, {"teacher": specs}) as w:
        with pytest.raises(DataError, match="expected"):
            w.write(0, {"teacher": {"a": np.ones((3, 2))}}, [True])


def test_write_store_from_its_old_module_still_works_with_a_deprecation_warning():
    import karmma.data.store_writer as old
    from karmma.data.store import write_store

    with pytest.warns(DeprecationWarning, match="import write_store from karmma.data.store"):
        assert old.write_store is write_store
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018
