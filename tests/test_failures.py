"""Failures inside a clip, detected where the raw arrays are made (karmma.data.media.failures):
each detector on synthetic arrays at its thresholds, then real clips written with PyAV (a black
stretch, a short audio track, a jump in the audio timestamps), a tiny UTD-MHAD tree (a zeroed depth
stretch, NaN skeleton and inertial rows), and the per-token coverage `karmma info` prints."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import scipy.io

from karmma.data.media.audio_stream import frames_valid, log_mel_framing
from karmma.data.media.failures import (
    BLACK_LEVEL,
    FROZEN_DIFF,
    TO_END,
    audio_coverage,
    black_frames,
    frame_failures,
    frozen_frames,
    hold_last,
    pad_audio,
    pooled_valid,
    signal_gaps,
    step_valid,
)
from karmma.errors import DataError
from tests.hostile import cli, synthetic_store
from tests.media_trees import clip_frames, tone, write_clip

# --------------------------------------------------------------------------- detectors


def test_black_frames_at_the_threshold_for_uint8_float_and_depth():
    below, above = math.floor(BLACK_LEVEL * 255), math.ceil(BLACK_LEVEL * 255)  # 3 and 4 grey levels
    frames = np.stack([np.full((6, 8, 3), v, np.uint8) for v in (0, below, above, 128)])
    assert black_frames(frames).tolist() == [True, True, False, False]
    as_float = np.stack([np.full((6, 8, 3), v, np.float32) for v in (BLACK_LEVEL - 1e-3, BLACK_LEVEL + 1e-3)])
    assert black_frames(as_float).tolist() == [True, False]
    depth = np.zeros((3, 24, 32), np.uint16)  # mm: a failed depth frame is all zeros
    depth[1, 10:14, 10:14] = 1500  # a person 1.5 m away on 2% of the pixels: a working frame
    depth[2, 0, 0] = 1  # one stray mm: a mean of 1/768 mm, (nearly) all zero
    assert black_frames(depth).tolist() == [True, False, True]
    assert black_frames(depth, threshold=1e-3).tolist() == [True, False, False]


def test_frozen_frames_flag_the_repeats_of_a_run_of_three_or_more():
    rng = np.random.default_rng(0)
    a, b, c, d = (rng.integers(0, 255, (6, 8, 3), dtype=np.uint8) for _ in range(4))
    frames = np.stack([a, b, b, c, c, c, d])  # a pair (b b) is a still moment, c c c a frozen sensor
    assert frozen_frames(frames).tolist() == [False, False, False, False, True, True, False]
    assert frozen_frames(frames, min_run=2).tolist() == [False, False, True, False, True, True, False]
    with pytest.raises(ValueError, match="min_run"):
        frozen_frames(frames, min_run=1)
    # within the threshold: one grey level on every 5th pixel (0.2 / 255 < FROZEN_DIFF); above: every 2nd
    near, off = c.copy().reshape(-1), c.copy().reshape(-1)
    near[::5] = np.where(near[::5] < 255, near[::5] + 1, 254)
    off[::2] = np.where(off[::2] < 255, off[::2] + 1, 254)
    assert np.abs(near.astype(float) - c.reshape(-1)).mean() / 255 < FROZEN_DIFF
    assert np.abs(off.astype(float) - c.reshape(-1)).mean() / 255 > FROZEN_DIFF
    assert frozen_frames(np.stack([a, c, near.reshape(c.shape), c])).tolist() == [False, False, True, True]
    assert not frozen_frames(np.stack([a, c, off.reshape(c.shape), c])).any()


def test_frame_failures_blank_black_and_undecodable_and_read_twice_is_not_frozen():
    rng = np.random.default_rng(1)
    frames = rng.integers(20, 255, (6, 4, 4, 3), dtype=np.uint8)
    frames[2] = 0
    valid, blank = frame_failures(frames, undecodable=np.array([0, 0, 0, 0, 1, 0], bool))
    assert valid.tolist() == [True, True, False, True, False, True] and blank.tolist() == (~valid).tolist()
    assert step_valid(valid).tolist() == [True, False, False, False, False]
    picks = np.array([5, 5, 5, 6, 7])  # a short segment's samples read frame 5 three times: not frozen
    same = np.stack([frames[0], frames[0], frames[0], frames[1], frames[3]])
    assert frame_failures(same, sources=picks)[0].all()
    assert not frame_failures(same)[0].all()  # the same frames as a video's own: a frozen run


def test_signal_gaps_hold_the_last_good_row_and_zeros_before_the_first():
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    x[0, 1], x[3, 0], x[4] = np.nan, np.inf, np.nan
    filled, valid = signal_gaps(x)
    assert valid.tolist() == [False, True, True, False, False, True]
    np.testing.assert_array_equal(filled, [[0, 0], [2, 3], [4, 5], [4, 5], [4, 5], [10, 11]])
    clean = np.ones((4, 3))
    assert signal_gaps(clean)[0] is clean and signal_gaps(clean)[1].all()  # nothing to fill: the array itself
    assert hold_last(clean, np.ones(4, bool)) is clean


def test_signal_gaps_resample_a_stalled_signal_onto_the_median_grid():
    ts = np.array([0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.1])  # stalled between 3 and 8 (> 2 median steps)
    x = np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    filled, valid = signal_gaps(x, ts)
    assert len(filled) == 11 and valid.tolist() == [True] * 4 + [False] * 4 + [True] * 3
    np.testing.assert_array_equal(filled[:, 0], [0, 1, 2, 3, 3, 3, 3, 3, 4, 5, 6])
    jitter = np.array([0.0, 1.0, 2.9, 4.0, 5.0])  # a 1.9-step gap: not a stall, the rows as they are
    same, ok = signal_gaps(x[:5], jitter)
    assert ok.all() and np.array_equal(same, x[:5])
    with pytest.raises(ValueError, match="increasing"):
        signal_gaps(x[:3], np.array([0.0, 2.0, 1.0]))


def test_audio_coverage_pads_only_a_track_ending_beyond_the_tolerance():
    rate = 1000
    assert audio_coverage(1000, 950, rate) == 0 and audio_coverage(1000, 899, rate) == 101
    x = np.ones(900, np.float32)
    same, spans = pad_audio(x, 990, rate)
    assert same is x and spans == []
    padded, spans = pad_audio(x, 1500, rate)
    assert len(padded) == 1500 and spans == [(900, TO_END)] and not padded[900:].any() and padded[:900].all()
    # a frame is invalid when its centre lies in the padding: log-mel frame i is centred on sample 120 i
    mel = log_mel_framing(24_000, 128, 0.010, 0.005, 2048)
    valid = frames_valid(mel, 20, [(600, 1200)])
    assert np.flatnonzero(~valid).tolist() == [5, 6, 7, 8, 9]
    assert pooled_valid(np.array([1, 1, 0, 1, 0, 0, 0], bool), 2).tolist() == [True, True, False, False]


# --------------------------------------------------------------------------- real clips


def _with_black_stretch(path, short_audio: bool):
    frames = clip_frames(24)
    frames[8:14] = 0  # half a second of a dead camera at 12 fps
    return write_clip(path, frames, 12, tone(1.0 if short_audio else 2.0, 440.0))


def test_a_black_stretch_and_a_short_track_are_marked_exactly(tmp_path):
    from karmma.data.clips import epic_clip, spectrogram_framing, video_clip
    from karmma.data.media.decode import read_audio

    clip = _with_black_stretch(tmp_path / "dead.mp4", short_audio=True)
    raw = video_clip(clip, ("rgb", "flow", "audio"))
    assert np.flatnonzero(~raw.valid["rgb"]).tolist() == list(range(8, 14))
    assert np.flatnonzero(~raw.valid["flow"]).tolist() == list(range(7, 14))  # steps into, inside and out of it
    assert not raw["rgb"][8:14].any() and not raw["flow"][7:14].any() and raw["rgb"][7].any()
    assert raw.duration == pytest.approx(2.0)
    got = len(read_audio(clip))  # ~1 s of samples: the rest of the 2-second clip is padding
    assert got < 1.1 * 24_000 and len(raw["audio"]) == spectrogram_framing(24_000).count(48_000)
    bad = np.flatnonzero(~raw.valid["audio"])  # spectrogram frame i is centred on sample 256 i
    assert bad.tolist() == list(range(math.ceil(got / 256), len(raw["audio"])))
    epic = epic_clip(clip, ("rgb", "flow", "audio"))  # 24 frames, 16 sampled for rgb; log-mel audio
    pick = np.linspace(0, 23, 16).round().astype(int)
    assert epic.valid["rgb"].tolist() == [not 8 <= i < 14 for i in pick]
    assert np.flatnonzero(~epic.valid["audio"]).tolist() == list(range(math.ceil(got / 120), len(epic["audio"])))


def test_the_video_folder_reader_marks_the_same_failures(tmp_path):
    from karmma.data.readers.base import get_reader

    _with_black_stretch(tmp_path / "dead.mp4", short_audio=True)
    (tmp_path / "labels.csv").write_text("id,label,video\nc1,x,dead.mp4\n")
    reader = get_reader("video")
    (ref,) = reader.samples(tmp_path, "all")
    raw = reader.load(ref, ("rgb", "flow", "audio"), "raise")
    assert np.flatnonzero(~raw.valid["rgb"]).tolist() == list(range(8, 14))
    assert raw.valid["audio"][:90].all() and not raw.valid["audio"][-90:].any()
    assert raw.duration == pytest.approx(2.0)


def test_a_clip_without_failures_is_valid_and_unchanged(tmp_path):
    from karmma.data.clips import AUDIO_RATE, spectrogram, video_clip
    from karmma.data.media.decode import read_audio, read_video
    from karmma.data.media.flow import flow_from_rgb

    clip = write_clip(tmp_path / "fine.mp4", clip_frames(24), 12, tone(2.0, 440.0))
    raw = video_clip(clip, ("rgb", "flow", "audio"))
    frames = read_video(clip, (64, 64))
    assert raw.valid == {} and raw.duration == pytest.approx(2.0)
    np.testing.assert_array_equal(raw["rgb"], frames.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(raw["flow"], flow_from_rgb(frames))
    np.testing.assert_array_equal(raw["audio"], spectrogram(read_audio(clip), AUDIO_RATE))


def test_a_jump_in_the_audio_timestamps_is_zero_filled_and_marked(tmp_path):
    import av

    from karmma.data.media.decode import read_audio, read_audio_covered

    path, x, rate = tmp_path / "gap.mp4", tone(2.0, 440.0), 24_000
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=12)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=rate)
        a.layout = "mono"
        for f in clip_frames(30):
            for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        pts = 0
        for i in range(0, len(x), 1024):
            pts += rate // 2 if i == 24 * 1024 else 0  # the sensor stalls for half a second after 1.024 s
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, i : i + 1024]), format="fltp",
                                               layout="mono")  # fmt: skip
            frame.sample_rate, frame.pts = rate, pts
            pts += frame.samples
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    filled, spans = read_audio_covered(path, rate)
    assert len(spans) == 1 and spans[0][1] - spans[0][0] == rate // 2 and abs(spans[0][0] - 24 * 1024) <= 1024
    assert not filled[spans[0][0] : spans[0][1]].any() and len(filled) == len(read_audio(path)) + rate // 2


def test_epic_frame_files_mark_black_frames_and_a_frame_read_twice_is_not_frozen(tmp_path):
    from karmma.data.readers.base import get_reader
    from tests.media_trees import epic_csv, frame_files

    frame_files(tmp_path, "P01_01", 20, 2, as_tar=False)  # frame file f is grey level f
    ann = epic_csv(tmp_path / "a.csv", [("P01_01_0", "P01_01", 1, 20, 0, 0), ("P01_01_1", "P01_01", 5, 5, 0, 0)])
    reader = get_reader("epic100", annotations=ann)
    long, short = reader.samples(tmp_path, "all")
    raw = reader.load(long, ("rgb",), "raise")  # frames 1, 2 (grey 1, 2 < 3.8) are black; 4 is not
    assert np.flatnonzero(~raw.valid["rgb"]).tolist() == [0, 1] and not raw["rgb"][:2].any() and raw["rgb"][2].all()
    assert raw.duration == pytest.approx(20 / 60)
    raw = reader.load(short, ("rgb",), "raise")  # a one-frame segment: frame 5 sixteen times
    assert raw.valid == {} and np.allclose(raw["rgb"], 5 / 255)


# --------------------------------------------------------------------------- UTD-MHAD


def _utd(root, depth, skeleton, inertial, name="a1_s1_t1"):
    files = (("Depth", "d_depth", depth), ("Skeleton", "d_skel", skeleton), ("Inertial", "d_iner", inertial))
    for sub, key, x in files:
        (root / sub).mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / sub / f"{name}_{sub.lower()}.mat", {key: x})
    return root


def _utd_load(root):
    from karmma.data.readers.base import get_reader

    reader = get_reader("utd_mhad")
    (ref,) = reader.samples(root, "all")
    return reader.load(ref, ("depth", "flow", "inertial", "skeleton"), "raise")


def test_utd_mhad_marks_a_zeroed_depth_stretch_and_nan_rows(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.integers(1, 4000, (16, 20, 12)).astype(np.uint16)
    depth[:, :, 4:7] = 0  # the depth camera lost three frames
    skeleton = rng.normal(size=(20, 3, 12))
    skeleton[5, 1, 2] = np.nan  # a lost joint at frame 2, the hip (everything relative to it) at 9
    skeleton[3, :, 9] = np.nan
    inertial = rng.normal(size=(20, 6))
    inertial[0, 2] = np.nan  # no earlier row: zeros
    inertial[7] = np.nan
    raw = _utd_load(_utd(tmp_path, depth, skeleton, inertial))
    assert np.flatnonzero(~raw.valid["depth"]).tolist() == [4, 5, 6] and not raw["depth"][4:7].any()
    assert np.flatnonzero(~raw.valid["flow"]).tolist() == [3, 4, 5, 6] and not raw["flow"][3:7].any()
    assert np.flatnonzero(~raw.valid["skeleton"]).tolist() == [2, 9]
    np.testing.assert_array_equal(raw["skeleton"][2], raw["skeleton"][1])
    np.testing.assert_array_equal(raw["skeleton"][9], raw["skeleton"][8])
    assert np.flatnonzero(~raw.valid["inertial"]).tolist() == [0, 7] and not raw["inertial"][0].any()
    np.testing.assert_array_equal(raw["inertial"][7], raw["inertial"][6])
    assert all(np.isfinite(x).all() for x in raw.values()) and raw.duration == pytest.approx(12 / 30)


def test_utd_mhad_without_failures_is_valid_and_unchanged(tmp_path):
    from karmma.data.readers.utd_mhad import DEPTH_SCALE, GYRO_SCALE, HIP_CENTER

    rng = np.random.default_rng(1)
    depth, skeleton, inertial = rng.integers(1, 4000, (16, 20, 12)).astype(np.uint16), rng.normal(size=(20, 3, 12)), \
        rng.normal(size=(20, 6))  # fmt: skip
    raw = _utd_load(_utd(tmp_path, depth, skeleton, inertial))
    assert raw.valid == {}
    np.testing.assert_array_equal(raw["depth"], depth.transpose(2, 0, 1).astype(np.float32) / DEPTH_SCALE)
    np.testing.assert_array_equal(raw["inertial"], np.concatenate([inertial[:, :3], inertial[:, 3:] / GYRO_SCALE],
                                                                  1).astype(np.float32))  # fmt: skip
    pos = (skeleton - skeleton[HIP_CENTER : HIP_CENTER + 1]).transpose(2, 0, 1).reshape(12, -1).astype(np.float32)
    np.testing.assert_array_equal(raw["skeleton"], pos)
    inertial[:] = np.nan  # nothing left of the signal: a corrupt file, as before
    with pytest.raises(DataError, match="NaN/Inf values in every row"):
        _utd_load(_utd(tmp_path, depth, skeleton, inertial))


# --------------------------------------------------------------------------- karmma info


def test_info_reports_token_coverage_per_feature_set_and_modality(tmp_path, capsys):
    store = synthetic_store(tmp_path / "s.h5", "val")
    with h5py.File(store, "a") as h5:
        if "tokens_present" in h5:
            del h5["tokens_present"]
        present = h5["present"][:]
    rc, out, _ = cli(capsys, "info", store)  # a store from before per-token flags: full coverage
    cov = json.loads(out)["token_coverage"]
    assert rc == 0 and cov["teacher"]["rgb"] == {"samples_present": int(present[:, 0].sum()), "tokens_present": 1.0}
    with h5py.File(store, "a") as h5:
        meta = json.loads(h5.attrs["meta"])
        specs = meta["feature_sets"]["teacher"]
        tokens = []
        for i, s in enumerate(specs):
            t = np.repeat(present[:, i : i + 1], s["num_tokens"], axis=1)
            if s["name"] == "flow":
                t[:, 0] = False  # the first flow token of every sample lost
            tokens.append(t)
        h5["tokens_present/teacher"] = np.concatenate(tokens, axis=1)  # (N, Σ tokens), modality after modality
    rc, out, _ = cli(capsys, "info", store)
    cov = json.loads(out)["token_coverage"]
    flow = next(s for s in specs if s["name"] == "flow")
    assert cov["teacher"]["flow"]["tokens_present"] == pytest.approx(1 - 1 / flow["num_tokens"])
    assert cov["teacher"]["rgb"]["tokens_present"] == 1.0 and cov["student"]["audio"]["tokens_present"] == 1.0
    with h5py.File(store, "a") as h5:
        h5["tokens_present/student"] = np.zeros((3, 1), bool)  # not this store's shape: said, not a crash
    rc, out, _ = cli(capsys, "info", store)
    cov = json.loads(out)["token_coverage"]
    assert rc == 0 and cov["teacher"]["rgb"]["tokens_present"] == 1.0 and "unreadable" in cov["student"]
