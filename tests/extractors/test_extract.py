"""Extraction on files the tests write: tiny UTD-MHAD .mat clips and a tiny video folder."""

import cv2
import numpy as np
import pytest
import scipy.io
import scipy.io.wavfile

from karmma.data.media.flow import optical_flow
from karmma.data.readers.utd_mhad import list_clips, load_modality
from karmma.data.store import open_store
from karmma.errors import CheckpointError, DataError
from karmma.extractors.encoders import CNNConfig, CNNEncoder, PoolFrames, PoolSignal, segment_bounds
from karmma.extractors.extract import run_extract


def make_utd(root, clips=((1, 1, 1), (2, 2, 1), (3, 1, 2)), skip=()):
    rng = np.random.default_rng(0)
    for sub in ("Depth", "Inertial", "Skeleton"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for a, s, t in clips:
        name = f"a{a}_s{s}_t{t}"
        if (name, "depth") not in skip:
            scipy.io.savemat(
                root / "Depth" / f"{name}_depth.mat", {"d_depth": rng.integers(0, 4000, (24, 32, 12)).astype(np.uint16)}
            )
        if (name, "inertial") not in skip:
            scipy.io.savemat(root / "Inertial" / f"{name}_inertial.mat", {"d_iner": rng.normal(size=(30, 6))})
        scipy.io.savemat(root / "Skeleton" / f"{name}_skeleton.mat", {"d_skel": rng.normal(size=(20, 3, 12))})
    return root


def test_segments_cover_and_handle_short_inputs():
    assert segment_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert all(b > a for a, b in segment_bounds(3, 8))


def test_pool_encoders_shapes():
    f = PoolFrames(4, (2, 3), 1)
    assert f(np.random.rand(9, 12, 16)).shape == (4, f.dim) and f.dim == 12
    s = PoolSignal(4, 6)
    assert s(np.random.rand(20, 6)).shape == (4, s.dim)


def test_flow_detects_motion():
    frame = np.zeros((32, 32), np.uint8)
    cv2.rectangle(frame, (8, 8), (16, 16), 255, -1)
    moved = np.roll(frame, 2, axis=1)
    flow = optical_flow(np.stack([frame, moved]), "farneback")
    assert flow.shape == (1, 32, 32, 2) and flow[0, 8:17, 8:17, 0].mean() > 0.5
    assert optical_flow(np.stack([frame, moved]), "dis").shape == (1, 32, 32, 2)


def test_utd_split_and_loading(tmp_path):
    root = make_utd(tmp_path / "utd")
    assert [c.id for c in list_clips(root, "train")] == ["a1_s1_t1", "a3_s1_t2"]
    assert [c.id for c in list_clips(root, "test")] == ["a2_s2_t1"]
    with pytest.raises(DataError, match="no UTD-MHAD"):
        list_clips(tmp_path)


def test_extract_utd_with_absent_and_corrupt(tmp_path):
    root = make_utd(tmp_path / "utd", skip={("a3_s1_t2", "inertial")})
    (root / "Depth" / "a1_s1_t1_depth.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=r"a1_s1_t1_depth\.mat.*corrupt"):
        run_extract("utd_mhad", root, tmp_path / "x.h5")
    out = run_extract("utd_mhad", root, tmp_path / "f.h5", on_error="absent", resume=False)
    fs = open_store(out, "teacher")
    assert fs.modality_names == ["depth", "flow", "inertial"]
    present = dict(zip(fs.ids, fs.present.tolist()))
    assert present["a1_s1_t1"] == [False, False, True]  # corrupt depth -> depth and flow absent
    assert present["a3_s1_t2"] == [True, True, False]  # no inertial file
    assert present["a2_s2_t1"] == [True, True, True]
    student = open_store(out, "student")
    assert all(s.dim < t.dim for s, t in zip(student.specs, fs.specs))
    assert fs.tasks == {"action": 27}


def test_extract_resumes(tmp_path):
    root = make_utd(tmp_path / "utd")
    out = run_extract("utd_mhad", root, tmp_path / "f.h5", limit=2)
    assert len(open_store(out)) == 2
    with pytest.raises(DataError, match="other samples"):
        run_extract("utd_mhad", root, tmp_path / "f.h5")  # other sample list: refuses to mix
    out = run_extract("utd_mhad", root, tmp_path / "f.h5", limit=2)  # same list: nothing to redo
    assert len(open_store(out)) == 2


def test_bad_mat_contents(tmp_path):
    p = tmp_path / "a1_s1_t1_inertial.mat"
    scipy.io.savemat(p, {"d_iner": np.zeros((10, 5))})
    with pytest.raises(DataError, match=r"expected \(T>=2, 6\)"):
        load_modality(p, "inertial")
    scipy.io.savemat(p, {"other": np.zeros((10, 6))})
    with pytest.raises(DataError, match="no variable 'd_iner'"):
        load_modality(p, "inertial")


def test_cnn_encoders_need_local_weights(tmp_path):
    root = make_utd(tmp_path / "utd")
    with pytest.raises(CheckpointError, match="depth_teacher.safetensors are missing"):
        run_extract("utd_mhad", root, tmp_path / "f.h5", encoder="cnn", weights=tmp_path / "w")
    for m, kind, ch in (("depth", "frames", 1), ("flow", "frames", 3), ("inertial", "signal", 6)):
        for size, width in (("teacher", 8), ("student", 4)):
            CNNEncoder(CNNConfig(kind, ch, width, 4 * width, 8)).save_pretrained(
                tmp_path / "w" / f"{m}_{size}.safetensors"
            )
    out = run_extract("utd_mhad", root, tmp_path / "f.h5", encoder="cnn", weights=tmp_path / "w")
    assert [s.dim for s in open_store(out).specs] == [32, 32, 32]
    (tmp_path / "w" / "depth_teacher.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a karmma encoder"):
        CNNEncoder.from_pretrained(tmp_path / "w" / "depth_teacher.safetensors")


def test_extract_video_folder(tmp_path):
    root = tmp_path / "vids"
    root.mkdir()
    writer = cv2.VideoWriter(str(root / "v1.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for t in range(12):
        frame = np.zeros((32, 32, 3), np.uint8)
        cv2.circle(frame, (4 + 2 * t, 16), 4, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    scipy.io.wavfile.write(root / "v1.wav", 16000, (np.sin(np.arange(16000) / 5) * 3000).astype(np.int16))
    (root / "broken.avi").write_bytes(b"nope")
    (root / "labels.csv").write_text(
        "id,label,video,audio\nc1,open,v1.avi,v1.wav\nc2,close,broken.avi,v1.wav\nc3,open,,v1.wav\n"
    )
    with pytest.raises(DataError, match="broken.avi"):
        run_extract("video", root, tmp_path / "v.h5")
    out = run_extract("video", root, tmp_path / "v2.h5", on_error="absent")
    fs = open_store(out)
    assert fs.present.tolist() == [[True, True, True], [False, False, True], [False, False, True]]
    assert fs.class_names["action"] == ["close", "open"]


def test_one_extractor_family_registry_serves_extract_predict_and_the_cli():
    from karmma.data.raw import Kind
    from karmma.extractors.motion_maps import DepthMotionMaps
    from karmma.registries import EXTRACTORS

    assert {"pool", "efficientnet", "cnn", "motion_maps"} <= set(EXTRACTORS.names())
    depth = {"depth": Kind("depth", 1)}
    assert isinstance(EXTRACTORS.get("motion_maps")(depth, "student")["depth"], DepthMotionMaps)
    assert isinstance(EXTRACTORS.get("efficientnet")(depth, "teacher")["depth"], DepthMotionMaps)  # the same family
    with pytest.raises(DataError, match=r"encodes depth frames only; \['imu'\] are not depth"):
        EXTRACTORS.get("motion_maps")({"imu": Kind("signal", 6)}, "teacher")
