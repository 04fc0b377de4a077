"""A hostile or clumsy user's probes of training, data and evaluation, each through the CLI's
``main(argv)``: the exit code and the key words of the message are asserted, and nothing is lost."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
from safetensors import SafetensorError

import karmma.io.checkpoint
from karmma.config_migration import migrate_experiment
from karmma.data.store import FeatureStoreWriter, open_store, write_store
from karmma.data.synthetic import generate, specs
from karmma.errors import CheckpointError, DataError
from karmma.io.checkpoint import latest_checkpoint
from karmma.io.rundir import RunLock, check_resume
from tests.hostile import QUICK, SMALL, cli, corrupt_chunk, renamed, store_args, synthetic_store

# What safetensors raises when the disk is full.
DISK_FULL = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


def test_train_on_an_empty_store_is_refused(tmp_path, capsys):
    # An extraction stopped before its first sample: the store exists, no sample is done.
    with FeatureStoreWriter(tmp_path / "empty.h5", ["a", "b"], {"action": [0, 1]}, {"action": 2},
                            {"teacher": specs("teacher")}):  # fmt: skip
        pass
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *QUICK,
                     *store_args(tmp_path / "empty.h5"))  # fmt: skip
    assert rc == 2 and "training split has no samples" in err and "empty.h5" in err
    assert not (tmp_path / "r" / "final").exists()


def test_empty_stores_cannot_be_written_and_leave_nothing(tmp_path):
    empty = generate(SMALL)["val"]["teacher"].subset([])
    with pytest.raises(DataError, match="no samples to write"):
        write_store(tmp_path / "e.h5", {"teacher": empty})
    assert list(tmp_path.iterdir()) == []


def test_evaluate_on_an_empty_store_is_refused(tmp_path, capsys, teacher_run):
    with FeatureStoreWriter(tmp_path / "empty.h5", ["a"], {"verb": [0], "noun": [0], "action": [0]},
                            {"verb": 3, "noun": 4, "action": 5}, {"teacher": specs("teacher")}):  # fmt: skip
        pass
    rc, _, err = cli(capsys, "evaluate", teacher_run, "--val", tmp_path / "empty.h5", "--out", tmp_path / "ev")
    assert rc == 2 and "evaluation split has no samples" in err


@pytest.mark.parametrize("change,words", [
    ({"num_verbs": 4}, "tasks/classes"),
    ({"num_nouns": 3}, "tasks/classes"),
])  # fmt: skip
def test_evaluate_on_a_store_of_other_classes_is_refused(tmp_path, capsys, teacher_run, change, words):
    other = synthetic_store(tmp_path / "other.h5", "val", **change)
    rc, out, err = cli(capsys, "evaluate", teacher_run, "--val", other, "--out", tmp_path / "ev")
    assert rc == 2 and words in err and "other.h5" in err and "| rgb |" not in out


def test_evaluate_on_a_store_of_other_modalities_or_dims_is_refused(tmp_path, capsys, teacher_run):
    val = generate(SMALL)["val"]
    write_store(tmp_path / "depth.h5", {k: renamed(v, names={"rgb": "depth"}) for k, v in val.items()})
    rc, _, err = cli(capsys, "evaluate", teacher_run, "--val", tmp_path / "depth.h5", "--out", tmp_path / "ev")
    assert rc == 2 and "modalities ['depth', 'flow', 'audio']" in err and "takes ['rgb', 'flow', 'audio']" in err
    write_store(tmp_path / "dim.h5", {k: renamed(v, dims={"flow": 7}) for k, v in val.items()})
    rc, _, err = cli(capsys, "evaluate", teacher_run, "--val", tmp_path / "dim.h5", "--out", tmp_path / "ev")
    assert rc == 2 and "modality 'flow' has tokens of shape (8, 7)" in err and "Traceback" not in err


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys, stores):
    with RunLock(tmp_path / "r"):
        rc, _, err = cli(
            capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *QUICK, *store_args(*stores)
        )
    assert rc == 2 and "another karmma process" in err and "another --run-dir" in err
    assert not (tmp_path / "r" / "checkpoints").exists()
    # Released with its holder: the same command now runs.
    rc, _, _ = cli(
        capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *QUICK, *store_args(*stores)
    )
    assert rc == 0


def test_resume_refuses_other_data_or_config(tmp_path, capsys):
    train = synthetic_store(tmp_path / "train.h5", "train")
    args = ["train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *QUICK, *store_args(train)]
    assert cli(capsys, *args)[0] == 0
    config_before = (tmp_path / "r" / "config.json").read_text()
    rc, _, err = cli(capsys, *args, "--set", "optim.lr=0.01")
    assert rc == 2 and "other config keys ['optim.lr']" in err and "--no-resume" in err
    fp = json.loads((tmp_path / "r" / "fingerprint.json").read_text())
    del fp["config"]["augment"]["swap_min_present"]  # as an older karmma wrote it, before the key existed
    (tmp_path / "r" / "fingerprint.json").write_text(json.dumps(fp))
    assert cli(capsys, *args)[0] == 0  # the new key at its default: no change
    # As karmma 0.1 recorded it: augmentation and late fusion as model.* keys (at their defaults).
    fp = json.loads((tmp_path / "r" / "fingerprint.json").read_text())
    augment, _ = fp["config"].pop("augment"), fp["config"]["model"].pop("addons")
    fp["config"]["model"].update(augment, unimodal_weight=0.0, unimodal_ensemble=0.0, unimodal_pool="product",
                                 fusion_weights="equal")  # fmt: skip
    (tmp_path / "r" / "fingerprint.json").write_text(json.dumps(fp))
    assert cli(capsys, *args)[0] == 0  # the same run: resumed
    rc, _, err = cli(capsys, *args, "--set", "model.addons={late_fusion: {ensemble: 1, weights: validation}}")
    assert rc == 2 and "has none: give data.val" in err and "model.addons.late_fusion.weights=equal" in err
    new = json.loads((tmp_path / "r" / "fingerprint.json").read_text())
    new["config"] = migrate_experiment(new["config"], "fingerprint", warn=False)
    new["config"]["augment"]["time_warp"] = 0.1  # another value: a change
    with pytest.raises(CheckpointError, match=r"other config keys \['augment.time_warp'\]"):
        check_resume(tmp_path / "r", new)
    train.unlink()
    synthetic_store(train, "train", seed=2)  # other samples at the same path
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "the training data" in err
    assert (tmp_path / "r" / "config.json").read_text() == config_before
    assert cli(capsys, *args, "--no-resume")[0] == 0


def test_a_corrupt_chunk_is_detected_and_named(tmp_path, capsys, teacher_run):
    val = synthetic_store(tmp_path / "val.h5", "val")
    corrupt_chunk(val, "features/teacher/flow", chunk=0)
    rc, _, err = cli(capsys, "evaluate", teacher_run, "--val", val, "--out", tmp_path / "ev")
    assert rc == 2 and "val.h5" in err and "modality 'flow'" in err and "val_00000" in err and "corrupt" in err
    with pytest.raises(DataError, match="val_00000"):
        open_store(val, in_memory=False).get_batch([0])


def test_absurd_or_nan_features_are_refused_at_write_time(tmp_path):
    sets = generate(SMALL)["val"]
    bad = np.array(sets["teacher"].features["audio"])
    bad[3, 0, 0] = 2.7e38
    sets["teacher"].features["audio"] = bad
    with pytest.raises(DataError, match=r"modality 'audio' \(teacher\) of sample\(s\) \['val_00003'\].*beyond"):
        write_store(tmp_path / "s.h5", sets)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_nan_in_the_validation_store_stops_before_training(tmp_path, capsys, stores):
    val = synthetic_store(tmp_path / "val.h5", "val")
    with h5py.File(val, "r+") as h5:
        h5["features/teacher/rgb"][5, 1, 2] = np.nan
    rc, _, err = cli(
        capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *QUICK, *store_args(stores[0], val)
    )
    assert rc == 2 and "validation split" in err and "'rgb'" in err and "val_00005" in err and "NaN" in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_ctrl_c_says_where_it_stopped_and_resume_finishes(tmp_path, capsys, stores, monkeypatch):
    args = ["train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", "--no-progress", *store_args(*stores),
            "--set", "optim.epochs=3", "--set", "optim.batch_size=32"]  # fmt: skip
    monkeypatch.setenv("KARMMA_FAULT", "train-step@7:interrupt")  # 3 steps per epoch: stops in epoch 3
    rc, _, err = cli(capsys, *args)
    assert rc == 130 and err.startswith("interrupted at step 7/9") and "step-00000006" in err
    assert "run the same command again to resume" in err.lower()
    assert "Traceback" not in err
    monkeypatch.delenv("KARMMA_FAULT")
    assert cli(capsys, *args)[0] == 0
    assert json.loads((tmp_path / "r" / "history.json").read_text())[-1]["step"] == 9


def test_disk_full_keeps_the_old_checkpoint_and_says_so(tmp_path, capsys, stores, monkeypatch):
    args = ["train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *store_args(*stores),
            "--set", "optim.epochs=2", "--set", "optim.batch_size=32", "--no-progress"]  # fmt: skip
    real, calls = karmma.io.checkpoint.save_file, []

    def full_disk(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) > 2:  # the first checkpoint (model + optimizer) fits, the next does not
            raise SafetensorError(DISK_FULL)
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(karmma.io.checkpoint, "save_file", full_disk)
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "no space left" in err and "step-00000006" in err and "previous checkpoint is intact" in err
    assert latest_checkpoint(tmp_path / "r").name == "step-00000003"
    assert not list((tmp_path / "r" / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(karmma.io.checkpoint, "save_file", real)
    assert cli(capsys, *args)[0] == 0


def test_bad_model_json_is_explained(tmp_path, capsys, teacher_run):
    import shutil

    for name, edit, words in [
        ("list", lambda m: [m], "expected a JSON object"),
        ("tasks", lambda m: {**m, "tasks": ["verb", "noun"]}, "'tasks' must map each task name"),
        ("names", lambda m: {**m, "class_names": {**m["class_names"], "verb": ["one"]}}, "has 1 names for 3 classes"),
    ]:  # fmt: skip
        model = tmp_path / name
        shutil.copytree(teacher_run / "final", model)
        meta = json.loads((model / "model.json").read_text())
        (model / "model.json").write_text(json.dumps(edit(meta)))
        rc, _, err = cli(capsys, "evaluate", model, "--out", tmp_path / "ev")
        assert rc == 2 and words in err and "Traceback" not in err, (name, err)


def test_a_model_without_data_asks_for_val(tmp_path, capsys, teacher_run):
    import shutil

    shutil.copytree(teacher_run / "final", tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta.pop("data")
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    rc, _, err = cli(capsys, "evaluate", tmp_path / "m", "--out", tmp_path / "ev")
    assert rc == 2 and "pass --val" in err


def test_runs_record_their_thread_count(teacher_run):
    import torch

    state = json.loads((latest_checkpoint(teacher_run) / "state.json").read_text())
    assert state["torch_threads"] == torch.get_num_threads()
    assert json.loads((teacher_run / "fingerprint.json").read_text())["torch_threads"] == torch.get_num_threads()


def test_progress_without_a_terminal_is_a_line_per_epoch(tmp_path, capsys, stores, caplog):
    caplog.set_level(logging.INFO, logger="karmma.progress")
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *store_args(*stores),
                     "--set", "optim.epochs=2", "--set", "optim.batch_size=16")  # fmt: skip
    assert rc == 0 and "\r" not in err
    epochs = [r.getMessage() for r in caplog.records if r.name == "karmma.progress" and " epoch " in r.getMessage()]
    assert [e.split(":")[0] for e in epochs] == ["demo-teacher epoch 1/2", "demo-teacher epoch 2/2"]
    assert all("loss=" in e and "val_action_top1=" in e for e in epochs)
    steps = [r for r in caplog.records if r.name == "karmma.progress" and "%)" in r.getMessage()]
    assert len(steps) <= 10  # 10 steps in all: at most one line per tenth
