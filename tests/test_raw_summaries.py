"""Whole-clip summaries (depth motion maps) under failures in time: computed over the working
frames, or with the failed frames fed as black frames, and recomputed from the raw clips of a
store written by ``karmma extract`` for the within-clip evaluation."""

import numpy as np
import pytest
import torch

from karmma.extractors.motion_maps import DepthMotionMaps
from tests.extractors.test_extract import make_utd
from tests.hostile import cli

UTD = [(a, s, t) for s in (2, 4) for a in (1, 2, 3) for t in (1, 2)]


def _frames(t=20, seed=0):
    rng = np.random.default_rng(seed)
    f = np.full((t, 24, 32), 0.6, np.float32)
    for k in range(t):  # a person-sized block that moves
        f[k, 4:18, 2 + k : 10 + k] = 0.45 + 0.01 * rng.random((14, 8))
    return f


def test_motion_maps_count_only_pairs_of_working_frames():
    enc, f = DepthMotionMaps(size=16), _frames()
    valid = np.ones(len(f), bool)
    np.testing.assert_array_equal(enc(f, valid=valid), enc(f))  # nothing failed: the maps of before, exactly
    valid[6:11] = False
    black = f.copy()
    black[~valid] = 0.0  # what the reader hands over for a failed frame
    # the failed frames' contents never count: any stand-in gives the same maps
    np.testing.assert_allclose(enc(black, valid=valid), enc(f, valid=valid), atol=1e-6)
    # fed as data, the jumps to and from the black frames dominate the maps
    assert np.abs(enc(black) - enc(f, valid=valid)).max() > 0.2


def test_under_failures_matches_one_call_per_draw():
    enc, f = DepthMotionMaps(size=16), _frames()
    rng = np.random.default_rng(1)
    failed = rng.random((5, len(f))) < 0.4
    failed[0] = False
    working, as_data = enc.under_failures(f, failed)
    assert working.shape == as_data.shape == (5, 3, enc.dim)
    np.testing.assert_allclose(working[0], enc(f), atol=1e-6)
    np.testing.assert_allclose(as_data[0], enc(f), atol=1e-6)
    for j in range(1, 5):
        black = f.copy()
        black[failed[j]] = 0.0
        np.testing.assert_allclose(working[j], enc(f, valid=~failed[j]), atol=1e-5)
        np.testing.assert_allclose(as_data[j], enc(black), atol=1e-5)


@pytest.fixture(scope="module")
def utd_store(tmp_path_factory):
    from karmma.extractors.extract import run_extract

    d = tmp_path_factory.mktemp("raw")
    root = make_utd(d / "utd", clips=UTD)
    out = d / "test.h5"
    run_extract("utd_mhad", root, out, split="test", encoder="efficientnet", modalities=("depth", "inertial"))
    return root, out


def test_the_evaluation_recomputes_depth_from_the_raw_clips(utd_store):
    from karmma.bursts import burst_views, grid_step
    from karmma.data.readers.base import get_reader
    from karmma.data.store import open_store
    from karmma.evaluation.bursts import burst_mask_fns, burst_seed
    from karmma.evaluation.raw_summaries import RawSummaries

    root, store = utd_store
    data = open_store(store)
    assert data.clip_tokens == ("depth",) or list(data.clip_tokens) == ["depth"]
    raw = RawSummaries.for_store(data, root)
    assert set(raw.encoders) == {"depth"}
    fns = burst_mask_fns(data, [0.5], seed=0, repeats=1, mean_burst=0.1, raw=raw)
    rows = np.arange(len(data))
    present = torch.from_numpy(data.present)
    as_data, per_token = fns["as_data/0.5/0"](present, rows), fns["per_token/0.5/0"](present, rows)
    # the same draw again (a second model of the seed): the recomputed draws are shared
    key = next(iter(raw._cache))
    burst_mask_fns(data, [0.5], seed=0, repeats=1, mean_burst=0.1, raw=raw)
    assert next(iter(raw._cache)) is key
    where, values = as_data.replace[0]
    assert where.any()
    # the draw of the evaluation, redone by hand for one clip whose depth failed
    g = torch.Generator().manual_seed(burst_seed(0, 0.1, 0.5, 0))
    counts = [s.num_tokens for s in data.specs]
    v = burst_views(present, counts, [True, False], torch.from_numpy(data.durations).double(), 0.5, 0.1, g)
    b = int(np.flatnonzero(where.numpy())[0])
    reader = get_reader("utd_mhad")
    ref = {r.id: r for r in reader.samples(root, "test")}[data.ids[b]]
    frames = reader.load(ref, ("depth",), "raise")["depth"]
    t = len(frames)
    centre = (np.arange(t) + 0.5) * float(data.durations[b]) / t
    step = np.minimum((centre / grid_step(0.1, 0.5)).astype(int), v["timeline"].shape[2] - 1)
    failed = v["timeline"][b, 0].numpy()[step]
    assert failed.any()
    black = frames.copy()
    black[failed] = 0.0
    enc = DepthMotionMaps()
    np.testing.assert_allclose(values[b].numpy(), enc(black), atol=1e-5)
    if 0 in per_token.replace and per_token.replace[0][0][b]:
        np.testing.assert_allclose(per_token.replace[0][1][b].numpy(), enc(frames, valid=~failed), atol=1e-5)
    assert not np.allclose(values[b].numpy(), data.features["depth"][b])


def test_evaluate_with_raw_root_from_the_cli(utd_store, tmp_path, capsys):
    import json

    root, store = utd_store
    quick = ["--set", "optim.epochs=1", "--set", "optim.batch_size=4", "--set", "model.dim=16",
             "--set", "model.depth=1", "--set", "model.head_hidden=16", "--set", "model.encoders={}",
             "--set", "model.addons={}", "--set", "augment={}", "--set", "data.val=null"]  # fmt: skip
    rc, _, err = cli(capsys, "train", "--config", "utd_mhad_teacher", "--run-dir", tmp_path / "t",
                     "--set", f"data.train={store}", *quick)  # fmt: skip
    assert rc == 0, err
    runs = {}
    for name, extra in (("stored", []), ("raw", ["--raw-root", str(root)])):
        rc, out, err = cli(capsys, "evaluate", tmp_path / "t", "--val", store, "--split", "test", "--repeats", "1",
                           "--bursts", "0.1", "--out", tmp_path / name, *extra)  # fmt: skip
        assert rc == 0, err
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())["models"]
    (model,) = runs["raw"]
    a, b = runs["stored"][model]["within_clip"], runs["raw"][model]["within_clip"]
    for view in a:  # nothing fails at rate 0: the same numbers either way
        assert a[view]["0.0"]["action_top1"] == pytest.approx(b[view]["0.0"]["action_top1"])
    rc, _, err = cli(capsys, "evaluate", tmp_path / "t", "--val", store, "--split", "test", "--repeats", "1",
                     "--bursts", "0.1", "--out", tmp_path / "bad", "--raw-root", str(tmp_path / "nowhere"))  # fmt: skip
    assert rc != 0 and "nowhere" in err


def test_extraction_computes_depth_motion_maps_over_the_working_frames(tmp_path):
    import scipy.io

    from karmma.data.readers.utd_mhad import DEPTH_SCALE
    from karmma.data.store import open_store
    from karmma.extractors.extract import run_extract

    root = make_utd(tmp_path / "utd", clips=[(1, 2, 1), (2, 2, 1)])
    depth = (_frames(12).transpose(1, 2, 0) * DEPTH_SCALE).astype(np.uint16)
    depth[:, :, 3:5] = 0  # the depth camera lost two frames of twelve: the clip stays present
    scipy.io.savemat(root / "Depth" / "a1_s2_t1_depth.mat", {"d_depth": depth})
    run_extract("utd_mhad", root, tmp_path / "s.h5", split="test", encoder="efficientnet", modalities=("depth",))
    data = open_store(tmp_path / "s.h5")
    b = data.ids.index("a1_s2_t1")
    frames = depth.transpose(2, 0, 1).astype(np.float32) / DEPTH_SCALE
    valid = np.ones(12, bool)
    valid[3:5] = False
    assert data.present[b].all()
    np.testing.assert_allclose(data.features["depth"][b], DepthMotionMaps()(frames, valid=valid), atol=1e-6)
    assert np.abs(data.features["depth"][b] - DepthMotionMaps()(frames)).max() > 0.1  # the black frames unread
