"""The validation protocol and the distillation options (issue: distillation that pays): group
splits for stores, evaluation that names its split, checkpoint selection and early stopping on
validation, out-of-fold teacher logits, and ``karmma sweep`` — all through the CLI."""

import json

import numpy as np
import pytest

from karmma.data.splits import group_split, sample_groups
from karmma.data.store import open_store
from karmma.engine.out_of_fold import fold_of
from karmma.errors import DataError
from karmma.io.checkpoint import load_model
from tests.hostile import QUICK, cli, store_args, synthetic_store

UTD_IDS = [f"a{a}_s{s}_t{t}" for a in range(1, 4) for s in (1, 3, 5, 7) for t in (1, 2)]


def test_group_split_holds_out_whole_groups_deterministically():
    fit, val = group_split(UTD_IDS, 0.25, r"_(s\d+)_")
    groups = np.array(sample_groups(UTD_IDS, r"_(s\d+)_"))
    assert set(groups[val]).isdisjoint(groups[fit]) and len(set(groups[val])) == 1  # one subject of four
    assert sorted([*fit, *val]) == list(range(len(UTD_IDS)))
    again = group_split(UTD_IDS, 0.25, r"_(s\d+)_")
    assert np.array_equal(val, again[1])
    with pytest.raises(DataError, match=r"'a1_s1_t1'.*group_pattern.*'\^\(P"):
        group_split(UTD_IDS, 0.2, r"^(P\d+)_")
    with pytest.raises(DataError, match="at least 2 groups"):
        group_split(UTD_IDS, 0.2, r"^(a)")


def test_folds_deal_whole_groups():
    fold = fold_of(UTD_IDS, 2, r"_(s\d+)_", "x")
    groups = np.array(sample_groups(UTD_IDS, r"_(s\d+)_"))
    for g in set(groups):
        assert len(set(fold[groups == g])) == 1
    assert sorted(np.bincount(fold).tolist()) == [12, 12]
    with pytest.raises(DataError, match="5 folds need at least 5 groups"):
        fold_of(UTD_IDS, 5, r"_(s\d+)_", "x")


def test_val_fraction_splits_a_store_and_evaluate_names_the_split(tmp_path, capsys):
    train = synthetic_store(tmp_path / "train.h5", "train")
    test = synthetic_store(tmp_path / "test.h5", "val")
    rc, out, err = cli(capsys, "train", "--config", "demo_teacher", *QUICK, *store_args(train), "--run-dir",
                       tmp_path / "t", "--set", "data.val_fraction=0.25", "--set", f"data.test={test}")  # fmt: skip
    assert rc == 0, err
    assert "val_action_top1" in out  # a validation split was carved from the training store
    hist = json.loads((tmp_path / "t" / "history.json").read_text())
    assert "val_action_top1" in hist[-1]
    rc, out, err = cli(capsys, "evaluate", tmp_path / "t", "--out", tmp_path / "ev", "--no-progress", "--repeats", "1")
    assert rc == 0, err
    assert "split: val" in out
    fs = open_store(train)
    held = group_split(fs.ids, 0.25)[1]
    assert len(held) == 20  # a quarter of the 80 training samples (each its own group: no pattern)
    got = json.loads((tmp_path / "ev" / "results.json").read_text())["models"]["t"]["subsets"]["rgb"]["count"]
    assert got == fs.present[held, 0].sum()
    rc, out, err = cli(capsys, "evaluate", tmp_path / "t", "--split", "test", "--out", tmp_path / "ev2",
                       "--no-progress", "--repeats", "1")  # fmt: skip
    assert rc == 0 and "split: test" in out
    assert json.loads((tmp_path / "ev2" / "results.json").read_text())["models"]["t"]["subsets"]["rgb"]["count"] == 40


def test_select_best_keeps_the_best_validation_epoch_and_patience_stops(tmp_path, capsys):
    train, val = synthetic_store(tmp_path / "t.h5", "train"), synthetic_store(tmp_path / "v.h5", "val")
    args = ["train", "--config", "demo_teacher", *QUICK, *store_args(train, val), "--set", "optim.epochs=6",
            "--set", "optim.lr=0.02", "--set", "optim.select=best", "--set", "optim.patience=2"]  # fmt: skip
    rc, _, err = cli(capsys, *args, "--run-dir", tmp_path / "r")
    assert rc == 0, err
    hist = json.loads((tmp_path / "r" / "history.json").read_text())
    scores = [h["val_action_top1"] for h in hist]
    best = int(np.argmax(scores))
    assert len(hist) == 6 or len(hist) - 1 - best == 2  # ran out, or stopped 2 epochs after the best
    _, meta = load_model(tmp_path / "r" / "best")
    assert meta["epoch"] == best + 1 and meta["val_action_top1"] == scores[best]
    rc, out, _ = cli(capsys, "evaluate", tmp_path / "r", "--out", tmp_path / "ev", "--no-progress", "--repeats", "1")
    full = json.loads((tmp_path / "ev" / "results.json").read_text())["models"]["r"]["subsets"]["rgb+flow+audio"]
    assert full["action_top1"] == pytest.approx(scores[best])  # the final model is the best epoch's


def test_out_of_fold_logits_come_from_teachers_that_never_saw_the_sample(tmp_path, capsys):
    train, val = synthetic_store(tmp_path / "t.h5", "train"), synthetic_store(tmp_path / "v.h5", "val")
    assert cli(capsys, "train", "--config", "demo_teacher", *QUICK, *store_args(train, val), "--run-dir",
               tmp_path / "teacher", "--set", "optim.epochs=30")[0] == 0  # fmt: skip
    base = ["distill", "--config", "demo_student", "--teacher", tmp_path / "teacher", *QUICK,
            *store_args(train, val, "student"), "--set", "optim.epochs=8"]  # fmt: skip
    rc, plain, err = cli(capsys, *base, "--run-dir", tmp_path / "s")
    assert rc == 0, err
    rc, oof, err = cli(capsys, *base, "--run-dir", tmp_path / "oof", "--set", "distill.teacher_logits=out_of_fold",
                       "--set", "distill.folds=2")  # fmt: skip
    assert rc == 0, err
    assert (tmp_path / "oof" / "oof" / "fold1" / "final").is_dir()

    def teacher_acc(text):  # the diagnostics row of all modalities: "| rgb+flow+audio | n | acc | ..."
        row = next(line for line in text.splitlines() if line.startswith("| rgb+flow+audio |"))
        return float(row.split("|")[3])

    # Held-out teachers are right less often on the distillation data than the teacher on its own samples.
    assert teacher_acc(oof) < teacher_acc(plain) - 5
    assert load_model(tmp_path / "oof")[1]["stage"] == "distill"


def test_out_of_fold_needs_the_teacher_run_config(tmp_path, capsys):
    train = synthetic_store(tmp_path / "t.h5", "train")
    assert (
        cli(capsys, "train", "--config", "demo_teacher", *QUICK, *store_args(train), "--run-dir", tmp_path / "t")[0]
        == 0
    )
    (tmp_path / "t" / "config.json").unlink()
    rc, _, err = cli(capsys, "distill", "--config", "demo_student", "--teacher", tmp_path / "t", *QUICK,
                     *store_args(train, None, "student"), "--run-dir", tmp_path / "s",
                     "--set", "distill.teacher_logits=out_of_fold")  # fmt: skip
    assert rc != 0 and "config.json" in err and "run folder" in err


def test_sweep_ranks_settings_on_validation(tmp_path, capsys):
    train, val = synthetic_store(tmp_path / "t.h5", "train"), synthetic_store(tmp_path / "v.h5", "val")
    assert cli(capsys, "train", "--config", "demo_teacher", *QUICK, *store_args(train, val), "--run-dir",
               tmp_path / "teacher")[0] == 0  # fmt: skip
    rc, out, err = cli(capsys, "sweep", "--config", "demo_student", "--teacher", tmp_path / "teacher",
                       "--grid", "distill.alpha=0.3,0.7", "--grid", "distill.temperature=2", "--seeds", "0,1",
                       *QUICK[:4], "--no-progress", *store_args(train, val, "student"),
                       "--out", tmp_path / "sw")  # fmt: skip
    assert rc == 0, err
    report = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert report["split"] == "val" and len(report["ranked"]) == 2
    scores = [r["subset_mean"] for r in report["ranked"]]
    assert scores == sorted(scores, reverse=True)
    assert f"best on val: {report['ranked'][0]['setting']}" in out
    assert (tmp_path / "sw" / "alpha=0.3_temperature=2" / "seed1" / "final").is_dir()
    assert (tmp_path / "sw" / "subsets.png").stat().st_size > 1000
    rc, _, err = cli(capsys, "sweep", "--config", "demo_student", "--grid", "distill.alpha", "--out", tmp_path / "x")
    assert rc == 2 and "KEY=V1,V2" in err
