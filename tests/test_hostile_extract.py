"""A hostile or unlucky user's ``karmma extract``, through the CLI (``main(argv)`` in process, or
``python -m karmma`` in a child): frame tars and images that declare gigabytes, odd frame folders,
a run killed (SIGKILL) or stopped (SIGTERM), a full or read-only ``--out``, stores with rows
marked done that were never written, and summaries that must describe the store as it is."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from karmma.data.readers.epic import Segment
from karmma.data.readers.epic_media import EpicReader, sample_frames
from karmma.data.store import open_store, write_store
from karmma.data.synthetic import generate
from karmma.errors import DataError
from karmma.extractors.extract import run_extract
from tests.hostile import QUICK, SMALL, cli, cli_limited, small_disk, store_args, synthetic_store
from tests.media_trees import epic_csv

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 64  # samples per storage chunk of the UTD stores below (tiny rows: the writer's maximum)


# --------------------------------------------------------------------------- frames (item 4)


def one_segment(root: Path) -> Path:
    """Annotations with one segment of P01_01 (frame 1 only); the test puts its frames in place."""
    return epic_csv(root / "ann" / "EPIC_100_train.csv", [("P01_01_0", "P01_01", 1, 1, 0, 0)])


def epic_args(root: Path, out: Path, *more: str) -> list[str]:
    return ["extract", "epic100", "--encoder", "pool", "--root", str(root), "--annotations", str(one_segment(root)),
            "--out", str(out), "--no-progress", *more]  # fmt: skip


def jpeg(shape=(16, 16, 3)) -> bytes:
    return cv2.imencode(".jpg", np.full(shape, 100, np.uint8))[1].tobytes()


def test_a_sparse_frame_tar_declaring_8_gib_is_refused_before_reading(tmp_path):
    # 4 KiB on disk: a member header declaring 8 GiB, then a hole. Reading it allocated 8 GiB.
    tar = tmp_path / "P01" / "rgb_frames" / "P01_01.tar"
    tar.parent.mkdir(parents=True)
    member = tarfile.TarInfo("./frame_0000000001.jpg")
    member.size = 8 << 30
    with open(tar, "wb") as f:
        f.write(member.tobuf(format=tarfile.GNU_FORMAT) + jpeg())
        f.truncate(512 + (8 << 30) + 1024)
    rc, _, err = cli_limited(*epic_args(tmp_path, tmp_path / "s.h5", "--on-error", "raise"))
    assert rc == 2, err[-2000:]
    assert "P01_01.tar" in err and "frame_0000000001.jpg" in err and "8.0 GiB" in err
    assert "KARMMA_MAX_FRAME_BYTES" in err and "Traceback" not in err
    # the default for epic100 (--on-error absent): the segment is listed, with that reason, not written
    rc, out, err = cli_limited(*epic_args(tmp_path, tmp_path / "t.h5"))
    assert rc == 0 and "not written" in out
    summary = json.loads((tmp_path / "t.h5.summary.json").read_text())
    assert summary["not_written"] == ["P01_01_0"] and "KARMMA_MAX_FRAME_BYTES" in summary["reasons"]["P01_01_0"]["rgb"]


def test_a_tiny_jpeg_declaring_30000_x_30000_pixels_is_refused_before_decoding(tmp_path):
    data = bytearray(jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)  # 631 bytes: OpenCV allocated 2.7 GB
    frames = tmp_path / "P01" / "rgb_frames" / "P01_01"
    frames.mkdir(parents=True)
    (frames / "frame_0000000001.jpg").write_bytes(bytes(data))
    rc, _, err = cli_limited(*epic_args(tmp_path, tmp_path / "s.h5", "--on-error", "raise"))
    assert rc == 2, err[-2000:]
    assert "frame_0000000001.jpg" in err and "900000000 pixels" in err and "KARMMA_MAX_FRAME_BYTES" in err


def test_a_frame_file_over_the_bound_is_refused_by_its_size(tmp_path, capsys):
    frames = tmp_path / "P01" / "rgb_frames" / "P01_01"
    frames.mkdir(parents=True)
    with open(frames / "frame_0000000001.jpg", "wb") as f:
        f.truncate(100 << 20)  # sparse: 100 MiB declared, nothing on disk
    rc, _, err = cli(capsys, *epic_args(tmp_path, tmp_path / "s.h5", "--on-error", "raise"))
    assert rc == 2 and "frame_0000000001.jpg" in err and "100.0 MiB" in err and "KARMMA_MAX_FRAME_BYTES" in err


def test_a_corrupt_jpeg_in_a_tar_names_the_tar_and_the_member(tmp_path, capsys):
    folder = tmp_path / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    (folder / "frame_0000000001.jpg").write_bytes(b"\xff\xd8\xff not a jpeg after all" * 10)
    with tarfile.open(folder.with_name("P01_01.tar"), "w") as t:
        t.add(folder / "frame_0000000001.jpg", arcname="./frame_0000000001.jpg")
    (folder / "frame_0000000001.jpg").unlink()
    folder.rmdir()
    rc, _, err = cli(capsys, *epic_args(tmp_path, tmp_path / "s.h5", "--on-error", "raise"))
    assert rc == 2 and "P01_01.tar, member ./frame_0000000001.jpg" in err and "corrupt" in err


def test_a_file_where_the_frame_folder_goes_is_named(tmp_path, capsys):
    where = tmp_path / "P01" / "rgb_frames" / "P01_01"
    where.parent.mkdir(parents=True)
    where.write_text("not a folder")
    rc, _, err = cli(capsys, *epic_args(tmp_path, tmp_path / "s.h5", "--on-error", "raise"))
    assert rc == 2 and str(where) in err and "neither a folder of frame images nor a .tar" in err


def test_a_folder_where_a_frame_image_goes_is_named(tmp_path, capsys):
    frame = tmp_path / "P01" / "rgb_frames" / "P01_01" / "frame_0000000001.jpg"
    frame.mkdir(parents=True)
    rc, _, err = cli(capsys, *epic_args(tmp_path, tmp_path / "s.h5", "--on-error", "raise"))
    assert rc == 2 and str(frame) in err and "not an image file" in err


def test_a_frame_folder_that_cannot_be_read_is_named(tmp_path):
    frames = tmp_path / "P01" / "rgb_frames" / "P01_01"
    frames.mkdir(parents=True)
    (frames / "frame_0000000001.jpg").write_bytes(jpeg())
    frames.chmod(0)
    # we are root: a child without the capabilities that bypass file permissions meets them as a user does
    argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m", "karmma",
            *epic_args(tmp_path, tmp_path / "s.h5", "--on-error", "raise")]  # fmt: skip
    try:
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
    except FileNotFoundError:
        pytest.skip("no setpriv here")
    finally:
        frames.chmod(0o755)
    if "setpriv:" in r.stderr:
        pytest.skip(f"cannot drop capabilities here ({r.stderr.strip()})")
    assert r.returncode == 2, r.stderr[-2000:]
    assert str(frames) in r.stderr and "Permission denied" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("start, stop, words", [(-5, 10, "start_frame -5 is negative"),
                                                 (50, 10, "stop_frame 10 is before start_frame 50")])  # fmt: skip
def test_negative_or_reversed_frame_ranges_are_named_where_frames_are_picked(tmp_path, capsys, start, stop, words):
    # Through the CLI the annotation parser refuses the row first; a segment made another way (the
    # library) meets the same refusal where its frames are picked, never a silent clamp.
    ann = tmp_path / "ann" / "EPIC_100_train.csv"
    epic_csv(ann, [("P01_01_0", "P01_01", start, stop, 0, 0)])
    argv = ["extract", "epic100", "--encoder", "pool", "--root", tmp_path, "--annotations", ann]
    rc, _, err = cli(capsys, *argv, "--out", tmp_path / "s.h5")
    assert rc == 2 and "P01_01_0" in err and ("negative" in err or "start_frame" in err)
    with pytest.raises(DataError, match=words):
        sample_frames(start, stop, where="segment P01_01_0")
    assert sample_frames(0, 3, 3).tolist() == [1, 2, 3]  # frame 0 reads file 1: the one documented clamp
    reader = EpicReader(annotations=ann)
    reader.root = tmp_path
    seg = Segment("P01_01_0", "P01", "P01_01", start, stop, 0, 0, "")
    raw = reader.load(type("Ref", (), {"source": seg})(), ("rgb", "audio"), "absent")
    assert not raw and words in raw.absent["rgb"] and words in raw.absent["audio"]
    with pytest.raises(DataError, match=f"P01_01_0.*{words}"):
        reader.load(type("Ref", (), {"source": seg})(), ("rgb",), "raise")


# --------------------------------------------------------------------------- kills (item 5)


def utd_tree(root: Path, n: int, skip_inertial: tuple[int, ...] = ()) -> Path:
    """``n`` tiny UTD-MHAD clips (8x8 depth, 4 frames); clips in ``skip_inertial`` lack inertial."""
    rng = np.random.default_rng(0)
    for sub in ("Depth", "Inertial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = [f"a{a}_s{s}_t{t}" for a in range(1, 28) for s in range(1, 9) for t in range(1, 5)][:n]
    for k, name in enumerate(names):
        depth = rng.integers(0, 4000, (8, 8, 4)).astype(np.uint16)
        scipy.io.savemat(root / "Depth" / f"{name}_depth.mat", {"d_depth": depth})
        if k not in skip_inertial:
            scipy.io.savemat(root / "Inertial" / f"{name}_inertial.mat", {"d_iner": rng.normal(size=(10, 6))})
    return root


def extract_child(root: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("KARMMA_FAULT", None)
    if fault:
        env["KARMMA_FAULT"] = fault
    argv = [sys.executable, "-m", "karmma", "-v", "extract", "utd_mhad", "--encoder", "pool", "--root", str(root),
            "--out", str(out), "--no-progress"]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)


def assert_same_store(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        assert x["done"][:].all() and y["done"][:].all()
        assert (x["present"][:] == y["present"][:]).all()
        for fs in ("teacher", "student"):
            assert (x[f"checksums/{fs}"][:] == y[f"checksums/{fs}"][:]).all()
            for m in x[f"features/{fs}"]:
                assert np.array_equal(x[f"features/{fs}/{m}"][:], y[f"features/{fs}/{m}"][:]), (fs, m)


def done_count(store: Path) -> int:
    with h5py.File(store, "r") as h5:
        return int(h5["done"][:].sum())


@pytest.fixture(scope="module")
def utd(tmp_path_factory):
    """200 clips and the store an uninterrupted run writes from them."""
    d = tmp_path_factory.mktemp("utd")
    root = utd_tree(d / "utd", 200)
    return root, run_extract("utd_mhad", root, d / "clean.h5")


@pytest.mark.parametrize("fault, kept", [
    ("extract-sample@30", 0),  # SIGKILL inside the first chunk: nothing is marked done, 30 redone
    ("extract-sample@100", 64),  # SIGKILL in the second chunk: the first stays done
    ("extract-sample@190", 128),  # at 95%: two chunks stay done, 62 samples redone
    ("extract-sample@150:term", 150),  # SIGTERM: a clean stop, the pending chunk written, nothing redone
])  # fmt: skip
def test_a_killed_or_stopped_extraction_keeps_its_chunks_and_resumes(tmp_path, utd, fault, kept):
    root, clean = utd
    out = tmp_path / "s.h5"
    r = extract_child(root, out, fault)
    if fault.endswith(":term"):
        assert r.returncode == 130, r.stderr[-2000:]
        assert "interrupted after 150 of the 200 samples" in r.stderr and "150 of 200 samples are done" in r.stderr
        assert "Run the same command again to resume" in r.stderr and "Traceback" not in r.stderr
    else:
        assert r.returncode == -9, r.stderr[-2000:]
    assert done_count(out) == kept
    done_at_kill = int(fault.split("@")[1].split(":")[0])
    assert done_at_kill - kept < CHUNK  # at most one chunk is redone
    r = extract_child(root, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming {out}: {kept}/200 samples done" in r.stderr
    assert_same_store(out, clean)
    assert not list(tmp_path.glob(".*reserve")) and not list(tmp_path.glob("*.partial"))


# --------------------------------------------------------------------------- disks (item 6 and weak items)


def test_a_full_disk_stops_with_rc_2_keeps_only_written_samples_and_resumes(tmp_path, utd):
    root, clean = utd
    with small_disk(tmp_path / "disk", "3m") as disk:
        out = disk / "s.h5"
        r = extract_child(root, out)
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])  # was 139: a segfault
        assert f"cannot write {out}: no space left on the device" in r.stderr
        assert "run the same command again to resume" in r.stderr and "Traceback" not in r.stderr
        kept = done_count(out)
        assert 0 < kept < 200 and kept % CHUNK == 0
        data = open_store(out)  # every row marked done is on disk: what it was written with
        from karmma.data.dataset import validate_features

        validate_features(data, "training")
        assert not list(disk.glob(".*reserve")) and not list(disk.glob("*.partial"))
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)  # space freed: resume
        r = extract_child(root, out)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"resuming {out}: {kept}/200 samples done" in r.stderr
        assert_same_store(out, clean)


def test_a_read_only_out_is_refused_before_any_work(tmp_path, capsys):
    with small_disk(tmp_path / "ro", read_only=True) as ro:
        # the root does not even exist: --out is checked first, before any clip is listed or read
        rc, _, err = cli(capsys, "extract", "utd_mhad", "--root", tmp_path / "nowhere", "--out", ro / "s.h5")
        assert rc == 2 and f"{ro} is not writable" in err and "read-only" in err
        assert list(ro.iterdir()) == []


def test_a_full_out_is_refused_before_any_work_and_leaves_nothing(tmp_path, capsys, utd):
    root, _ = utd
    with small_disk(tmp_path / "full", "64k") as full:
        with open(full / "filler", "wb") as f:  # the disk, filled to its last byte
            try:
                f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        rc, _, err = cli(capsys, "extract", "utd_mhad", "--root", tmp_path / "nowhere", "--out", full / "s.h5")
        assert rc == 2 and str(full) in err and "no space left" in err
        # room for the probe, not for the store's reserve: refused before the store is created
        (full / "filler").unlink()
        rc, _, err = cli(
            capsys, "extract", "utd_mhad", "--encoder", "pool", "--root", root, "--out", full / "s.h5", "--no-progress"
        )
        assert rc == 2 and f"cannot write {full / 's.h5'}: no space left" in err
        assert list(full.iterdir()) == []  # no store, no .partial, no reserve


# --------------------------------------------------------------------------- train/evaluate refuse lost rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained on a store whose first present rgb row is genuinely all zeros (a black clip):
    its checksum vouches for it, so training accepts it."""
    d = tmp_path_factory.mktemp("zero")
    sets = generate(SMALL)["train"]
    row = int(np.flatnonzero(sets["teacher"].present[:, 0])[0])
    for fs in sets.values():
        fs.features["rgb"][row] = 0.0
    store = write_store(d / "black.h5", sets)
    from karmma.cli import main

    assert main(["train", "--config", "demo_teacher", "--run-dir", str(d / "run"), *QUICK, *store_args(store)]) == 0
    return d / "run"


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "older-store"])
def test_train_and_evaluate_refuse_rows_marked_done_that_were_never_written(tmp_path, capsys, trained, checksums):
    store = synthetic_store(tmp_path / "lost.h5")
    with h5py.File(store, "r+") as h5:  # what the full disk left: rows marked done, features all zeros
        ids = list(h5["ids"].asstr()[:])
        flow = json.loads(h5.attrs["meta"])["modalities"].index("flow")
        rows = np.flatnonzero(h5["present"][:, flow])[:3]
        for fs in ("teacher", "student"):
            ds = h5[f"features/{fs}/flow"]
            x = ds[:]
            x[rows] = 0.0
            ds[...] = x
            if not checksums and f"checksums/{fs}" in h5:
                del h5[f"checksums/{fs}"]
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "r", *QUICK,
                     *store_args(store))  # fmt: skip
    assert rc == 2 and "lost.h5" in err and "'flow'" in err and ids[rows[0]] in err
    assert "holds no features" in err and "--no-resume" in err
    assert not (tmp_path / "r" / "final").exists()
    rc, _, err = cli(capsys, "evaluate", trained, "--val", store, "--out", tmp_path / "ev")
    assert rc == 2 and "lost.h5" in err and "'flow'" in err and ids[rows[0]] in err


def test_resuming_an_older_store_redoes_its_unwritten_rows(tmp_path, utd):
    root, clean = utd
    out = tmp_path / "old.h5"
    out.write_bytes(clean.read_bytes())
    with h5py.File(out, "r+") as h5:  # as the full disk left it with the karmma of then
        for name in ("checksums/teacher", "checksums/student", "reasons"):
            if name in h5:
                del h5[name]
        h5["features/teacher/depth"][130:140] = 0.0
        h5["features/student/depth"][130:140] = 0.0
    r = extract_child(root, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "10 done sample(s) hold no features" in r.stderr and f"resuming {out}: 190/200" in r.stderr
    assert_same_store(out, clean)


# --------------------------------------------------------------------------- summaries (item 11)


def absent_counts(store: Path) -> dict:
    summary = json.loads(Path(f"{store}.summary.json").read_text())
    return {m: {why: v["count"] for why, v in r.items()} for m, r in summary["absent"].items()}


def test_the_summary_describes_the_store_as_it_is(tmp_path, capsys, monkeypatch):
    root = utd_tree(tmp_path / "utd", 12, skip_inertial=(2, 5, 9))
    out = tmp_path / "s.h5"
    argv = ["extract", "utd_mhad", "--encoder", "pool", "--root", root, "--out", out, "--no-progress"]
    want = {"inertial": {"not in the sample": 3}}
    monkeypatch.setenv("KARMMA_FAULT", "extract-sample@7:interrupt")  # Ctrl-C after 7 samples
    rc, _, err = cli(capsys, *argv)
    assert rc == 130 and "7 of 12 samples are done" in err
    assert absent_counts(out) == {"inertial": {"not in the sample": 2}}  # the store so far: clips 2 and 5
    monkeypatch.delenv("KARMMA_FAULT")
    rc, printed, _ = cli(capsys, *argv)  # resumed: reasons of the 7 kept, the 5 redone added once
    assert rc == 0 and absent_counts(out) == want and "inertial absent for 3 of 12" in printed
    for _ in range(2):  # was "absent for 6 of 12", then 9: counts added up over reruns
        rc, printed, _ = cli(capsys, *argv, "--no-resume")
        assert rc == 0 and absent_counts(out) == want and "inertial absent for 3 of 12" in printed
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert sorted(summary["reasons"]) == ["a1_s1_t3", "a1_s2_t2", "a1_s3_t2"]
    # the missing files come back: a fresh run keeps no stale reason
    utd_tree(tmp_path / "utd", 12)
    rc, printed, _ = cli(capsys, *argv, "--no-resume")
    assert rc == 0 and absent_counts(out) == {} and "absent" not in printed
    assert json.loads(Path(f"{out}.summary.json").read_text())["reasons"] == {}
