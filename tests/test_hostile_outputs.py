"""Where the experiment and deployment commands write, and what they are told: a read-only or full
`--out` (real tmpfs mounts) is refused before the long work or fails whole, with no truncated or
temporary file left; a link to nothing is named; counts are positive; a sweep's grid cannot
override the seeds, drop values, or write outside `--out`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.hostile import QUICK, cli, small_disk, train_clip_model, train_demo_student

SMALL_DATA = ["--set", "data.synthetic.num_train=96", "--set", "data.synthetic.num_val=32"]

SLS = ["--sls-pt", "1", "--sls-tl", "3", "--sls-td", "3"]  # the supervision levels submit requires


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return train_demo_student(tmp_path_factory.mktemp("runs") / "student")


@pytest.fixture(scope="module")
def epic_run(tmp_path_factory):
    """An EPIC-100 student and, beside its run folder, ``test.h5``: two unlabelled segments."""
    return train_clip_model(tmp_path_factory.mktemp("epic"), "epic100")


def fill(folder: Path) -> None:
    """Fill the filesystem at ``folder`` to the last byte."""
    with open(folder / "ballast", "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files under ``folder`` (the ballast aside)."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")
                  or p.name.startswith(".karmma-write-test"))  # fmt: skip


def sample(path: Path) -> Path:
    np.savez(path, rgb=np.zeros((8, 32), np.float32))
    return path


# ------------------------------------------------------------------ read-only and full --out


def test_evaluate_checks_a_read_only_out_before_evaluating(student, tmp_path, capsys):
    with small_disk(tmp_path / "ro", read_only=True) as ro:
        rc, out, err = cli(capsys, "evaluate", student, "--out", ro / "eval", "--repeats", "1", "--no-progress")
    assert rc == 2 and out == ""  # nothing evaluated, no table printed
    assert f"{ro / 'eval'} is not writable" in err and "read-only" in err


def test_evaluate_on_a_full_disk_leaves_no_truncated_results(student, tmp_path, capsys):
    with small_disk(tmp_path / "full", "4k") as full:  # room for the writability probe, not results.json
        rc, _, err = cli(capsys, "evaluate", student, "--out", full, "--repeats", "1", "--no-progress")
        assert rc == 2 and f"cannot write {full / 'results.json'}: no space left" in err
        assert list(full.iterdir()) == []  # no truncated results.json, no temporary file


def test_cost_checks_a_read_only_out_before_measuring(student, tmp_path, capsys):
    with small_disk(tmp_path / "ro", read_only=True) as ro:
        rc, out, err = cli(capsys, "cost", student, "--out", ro / "cost", "--repeats", "1")
    assert rc == 2 and out == "" and f"{ro / 'cost'} is not writable" in err


def test_export_to_a_read_only_or_full_disk(student, tmp_path, capsys):
    with small_disk(tmp_path / "ro", read_only=True) as ro:
        rc, out, err = cli(capsys, "export", student, "--out", ro / "s.onnx")
    assert rc == 2 and out == "" and str(ro) in err and "read-only" in err
    with small_disk(tmp_path / "full", "64k") as full:
        rc, _, err = cli(capsys, "export", student, "--out", full / "s.onnx")
        assert rc == 2 and f"cannot write {full / 's.onnx'}: no space left" in err
        assert list(full.iterdir()) == []


def test_predict_json_on_a_read_only_or_full_disk(student, tmp_path, capsys):
    x = sample(tmp_path / "x.npz")
    with small_disk(tmp_path / "ro", read_only=True) as ro:
        rc, out, err = cli(capsys, "predict", student, "--input", x, "--json", ro / "p.json")
    assert rc == 2 and out == "" and "--json" in err and "read-only" in err
    with small_disk(tmp_path / "full", "16k") as full:
        fill(full)
        rc, out, err = cli(capsys, "predict", student, "--input", x, "--json", full / "p.json")
        assert rc == 2 and out == "" and "no space left" in err
        assert sorted(p.name for p in full.iterdir()) == ["ballast"]  # no 0-byte p.json
    rc, _, _ = cli(capsys, "predict", student, "--input", x, "--json", tmp_path / "p.json")
    assert rc == 0 and json.loads((tmp_path / "p.json").read_text())["present"] == ["rgb"]
    assert leftovers(tmp_path) == []


def test_submit_to_a_read_only_or_full_disk(epic_run, tmp_path, capsys):
    store = epic_run.parent / "test.h5"
    with small_disk(tmp_path / "ro", read_only=True) as ro:
        rc, out, err = cli(capsys, "submit", epic_run, "--store", store, "--out", ro / "submission.zip", *SLS)
    assert rc == 2 and out == "" and "--out" in err and "read-only" in err
    with small_disk(tmp_path / "full", "8k") as full:
        rc, _, err = cli(capsys, "submit", epic_run, "--store", store, "--out", full / "test.json", *SLS)
        assert rc == 2 and f"cannot write {full / 'test.json'}: no space left" in err
        assert list(full.iterdir()) == []  # no .partial file
    rc, out, _ = cli(capsys, "submit", epic_run, "--store", store, "--out", tmp_path / "submission.zip", *SLS)
    assert rc == 0 and "2 segments" in out and leftovers(tmp_path) == []


def test_submit_refuses_an_incomplete_split_and_undeclared_supervision(epic_run, tmp_path, capsys):
    import shutil

    import h5py

    store, out = epic_run.parent / "test.h5", tmp_path / "submission.zip"
    rc, _, err = cli(capsys, "submit", epic_run, "--store", store, "--out", out)
    assert rc == 2 and "--sls-pt" in err and not out.exists()  # no silent 0/0/0
    # a segment of the split the extraction could not write: named, and nothing submitted
    holed = tmp_path / "holed.h5"
    shutil.copy(store, holed)
    with h5py.File(holed, "r+") as h5:
        gone = h5["ids"].asstr()[1]
        h5["done"][1] = False
    rc, _, err = cli(capsys, "submit", epic_run, "--store", holed, "--out", out, *SLS)
    assert rc == 2 and gone in err and "--allow-incomplete" in err and not out.exists()
    # the official list names a segment the store never had
    csv = tmp_path / "EPIC_100_test_timestamps.csv"
    csv.write_text("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
                   "start_frame,stop_frame\nP02_01_0,P02,P02_01,,,,1,30\nP02_01_1,P02,P02_01,,,,31,60\n"
                   "P02_01_9,P02,P02_01,,,,61,90\n")  # fmt: skip
    rc, _, err = cli(capsys, "submit", epic_run, "--store", store, "--out", out, *SLS, "--annotations", csv)
    assert rc == 2 and "P02_01_9" in err and not out.exists()
    rc, printed, _ = cli(capsys, "submit", epic_run, "--store", holed, "--out", out, *SLS, "--allow-incomplete")
    assert rc == 0 and "1 segment(s) left out" in printed and "1 segments" in printed


def test_sweep_checks_a_read_only_out_before_training(tmp_path, capsys):
    with small_disk(tmp_path / "ro", read_only=True) as ro:
        rc, out, err = cli(capsys, "sweep", "--config", "demo_student", "--grid", "optim.lr=0.001,0.002",
                           "--out", ro / "sweep", *QUICK, *SMALL_DATA)  # fmt: skip
    assert rc == 2 and f"{ro / 'sweep'} is not writable" in err and "read-only" in err


# ------------------------------------------------------------------ links to nothing


@pytest.mark.parametrize("command", ["evaluate", "cost", "export", "predict"])
def test_a_run_folder_linking_to_nothing_is_named(command, tmp_path, capsys):
    run = tmp_path / "run"
    run.symlink_to(tmp_path / "deleted-run")
    extra = {"evaluate": ["--out", tmp_path / "e"], "cost": ["--out", tmp_path / "c"],
             "export": ["--out", tmp_path / "m.onnx"], "predict": ["--input", sample(tmp_path / "x.npz")]}  # fmt: skip
    rc, _, err = cli(capsys, command, run, *extra[command])
    assert rc == 2 and "is a symbolic link to" in err and "deleted-run" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["evaluate", "cost", "export", "predict", "sweep", "submit"])
def test_an_out_linking_to_nothing_is_named(command, student, epic_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone" / "out")
    argv = {
        "evaluate": ["evaluate", student, "--out", out, "--repeats", "1"],
        "cost": ["cost", student, "--out", out, "--repeats", "1"],
        "export": ["export", student, "--out", out],
        "predict": ["predict", student, "--input", sample(tmp_path / "x.npz"), "--json", out],
        "sweep": ["sweep", "--config", "demo_student", "--grid", "optim.lr=0.001", "--out", out, *QUICK],
        "submit": ["submit", epic_run, "--store", epic_run.parent / "test.h5", "--out", out, *SLS],
    }[command]
    rc, out_text, err = cli(capsys, *argv)
    assert rc == 2 and "is a symbolic link to" in err and str(tmp_path / "gone") in err
    assert not (tmp_path / "gone").exists() and "| model |" not in out_text


# ------------------------------------------------------------------ counts and the sweep's grid


@pytest.mark.parametrize("argv", [
    ["cost", "RUN", "--batch-size", "0"],
    ["cost", "RUN", "--repeats", "0"],
    ["cost", "RUN", "--repeats", "-2"],
    ["evaluate", "RUN", "--repeats", "0"],
    ["sweep", "--config", "demo_student", "--grid", "optim.lr=0.1", "--repeats", "0"],
])  # fmt: skip
def test_counts_must_be_positive_at_parsing(argv, student, tmp_path, capsys):
    rc, out, err = cli(capsys, *[student if a == "RUN" else a for a in argv], "--out", tmp_path / "out")
    assert rc == 2 and "must be at least 1" in err and out == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seeds,words", [("1,1", "seed 1 repeated"), ("", "give at least one seed")])
def test_sweep_seeds_are_distinct_and_not_empty(seeds, words, tmp_path, capsys):
    rc, _, err = cli(capsys, "sweep", "--config", "demo_student", "--grid", "optim.lr=0.1", "--seeds", seeds,
                     "--out", tmp_path / "s")  # fmt: skip
    assert rc == 2 and words in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize("grid,words", [
    (["seed=1,2"], "write --seeds 1,2"),
    (["optim.lr=0.1", "optim.lr=0.2"], "--grid optim.lr is given twice"),
    (["optim.lr=0.1,0.1"], "0.1 repeated"),
    (["optim.lr=0.1,,0.2"], "an empty value"),
])  # fmt: skip
def test_sweep_grids_that_would_silently_drop_or_override_values_are_refused(grid, words, tmp_path, capsys):
    flags = [x for g in grid for x in ("--grid", g)]
    rc, out, err = cli(capsys, "sweep", "--config", "demo_student", *flags, "--out", tmp_path / "s", *QUICK)
    assert rc == 2 and words in err and out == ""
    assert not (tmp_path / "s").exists()  # refused before anything trained


def test_a_sweep_value_cannot_write_outside_out(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "sweep"
    rc, _, err = cli(capsys, "sweep", "--config", "demo_student", "--grid", "name=x/../../..", "--out", out,
                     *QUICK, *SMALL_DATA)  # fmt: skip
    assert rc == 0, err
    outside = [p for p in tmp_path.rglob("*") if out not in (p, *p.parents) and p not in out.parents]
    assert outside == []  # nothing written beside or above --out
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    assert run.name.startswith("name=x-") and ".." not in run.name and (run / "seed0" / "final").is_dir()
    report = json.loads((out / "sweep.json").read_text())
    assert report["runs"] == {"name=x/../../..": str(run)} and leftovers(out) == []
    assert os.path.commonpath([out, run.resolve()]) == str(out.resolve())
