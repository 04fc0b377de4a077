"""Presence per token (a sensor failing for part of a clip): the mask rules, the model, the store,
training with bursts, evaluation in time, ONNX export and predict."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from karmma import presence
from karmma.bursts import burst_views, failed_as_data, failure_timelines
from karmma.data.store import FeatureStoreWriter, open_store, write_store
from karmma.errors import DataError
from karmma.modalities import ModalitySpec
from karmma.models.karmma import KARMMA
from tests.conftest import random_batch, tiny_model_cfg
from tests.hostile import QUICK, cli, store_args, synthetic_store

SPECS = [ModalitySpec("rgb", 4, 6), ModalitySpec("flow", 3, 5), ModalitySpec("audio", 8, 4)]
COUNTS = [4, 3, 8]
TASKS = {"action": 5}


def _model(**kw) -> KARMMA:
    torch.manual_seed(0)
    return KARMMA(SPECS, TASKS, tiny_model_cfg(**kw)).eval()


# ----------------------------------------------------------------------------- the mask rules


def test_resample_keeps_half_covered_tokens_and_never_loses_a_modality():
    mask = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1], [0] * 8], dtype=torch.bool)
    out = presence.resample(mask, 4)
    assert out.tolist() == [[True, False, False, False], [False, False, False, True], [False] * 4]
    # 3 -> 2: output 0 spans [0, 1/2): input 0 (present) covers 2/3 of it, input 1 (absent) the rest
    assert presence.coverage(torch.tensor([[True, False, False]]), 2)[0].tolist() == pytest.approx([2 / 3, 0.0])
    # one token in 8 present, pooled to 1 token: below half, kept because it is all there is
    assert presence.resample(mask[1:2], 1).tolist() == [[True]]


def test_normalize_gives_the_whole_mask_when_no_modality_is_partial():
    whole = torch.tensor([[True, False, True]])
    flat = presence.flatten(presence.expand(whole, COUNTS))
    for m in (whole, flat):
        got, tokens = presence.normalize(m, COUNTS)
        assert torch.equal(got, whole) and tokens is None
    flat[0, 0] = False  # rgb loses its first token
    got, tokens = presence.normalize(flat, COUNTS)
    assert torch.equal(got, whole) and tokens is not None and tokens[0].tolist() == [[False, True, True, True]]
    with pytest.raises(DataError, match=r"\(B, 3\).*\(B, 15\)"):
        presence.normalize(torch.ones(1, 7, dtype=torch.bool), COUNTS)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("missing", ["token", "zero", "attn_mask"])
@pytest.mark.parametrize("encoders", [{}, {"audio": "temporal_conv"}])
def test_a_per_token_mask_of_whole_modalities_computes_exactly_the_whole_mask(missing, encoders):
    model = _model(missing=missing, encoders=encoders, encoder_tokens=3)
    tokens, _ = random_batch(SPECS, 6)
    whole = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        a = model(tokens, whole)["action"]
        b = model(tokens, presence.flatten(presence.expand(whole, COUNTS)))["action"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("missing", ["token", "zero", "attn_mask"])
@pytest.mark.parametrize("encoders", [{}, {"audio": "temporal_conv"}])
def test_absent_tokens_never_reach_the_output_and_partial_presence_is_not_whole(missing, encoders):
    model = _model(missing=missing, encoders=encoders, encoder_tokens=3)
    tokens, whole = random_batch(SPECS, 4)
    flat = presence.flatten(presence.expand(whole, COUNTS))
    flat[:, 15 - 8 : 15 - 4] = False  # audio: the first half of its 8 tokens failed
    noisy = [t.clone() for t in tokens]
    noisy[2][:, :4] = 1e3  # whatever a failed sensor sent
    with torch.no_grad():
        a = model(tokens, flat)["action"]
        b = model(noisy, flat)["action"]
        fed = model(noisy, whole)["action"]
    assert torch.allclose(a, b, atol=1e-6)
    assert (a - fed).abs().max() > 1e-5  # fed as data, the failure moves the prediction


def test_late_fusion_heads_read_only_present_tokens():
    model = _model(addons={"late_fusion": {"loss_weight": 1.0, "ensemble": 1.0}})
    tokens, whole = random_batch(SPECS, 3)
    flat = presence.flatten(presence.expand(whole, COUNTS))
    flat[:, :2] = False
    noisy = [t.clone() for t in tokens]
    noisy[0][:, :2] = -50.0
    with torch.no_grad():
        a, b = model(tokens, flat), model(noisy, flat)
    assert torch.allclose(a["action"], b["action"], atol=1e-6)
    assert a.token_masks is not None and a.token_masks[0][:, :2].sum() == 0


# ----------------------------------------------------------------------------- the store


def test_the_store_keeps_per_token_presence_and_durations_and_old_stores_read_whole(tmp_path):
    n = 5
    ids, labels = [f"s{i}" for i in range(n)], {"action": [i % 5 for i in range(n)]}
    with FeatureStoreWriter(tmp_path / "a.h5", ids, labels, TASKS, {"teacher": SPECS}, resume=False) as w:
        for i in range(n):
            feats = {s.name: np.full(s.shape, i + 1.0, np.float32) for s in SPECS}
            tokens = {"teacher": {"audio": np.arange(8) >= 3}} if i == 2 else None
            w.write(i, {"teacher": feats}, [True, i != 1, True], tokens=tokens, duration=2.5 if i else None)
    fs = open_store(tmp_path / "a.h5")
    assert fs.token_present is not None and fs.token_present.shape == (n, 15)
    assert fs.token_present[2, 7:].tolist() == [False] * 3 + [True] * 5 and fs.token_present[1, 4:7].sum() == 0
    assert np.isnan(fs.durations[0]) and fs.durations[1] == 2.5
    # the per-token presence survives write_store (e.g. the validation split of the UTD benchmark)
    again = open_store(write_store(tmp_path / "b.h5", {"teacher": fs.subset([1, 2])}))
    assert again.token_present[1, 7:10].sum() == 0 and again.durations.tolist() == [2.5, 2.5]
    # a store written before 0.2 has no such datasets: all or nothing, durations unknown
    with h5py.File(tmp_path / "a.h5", "r+") as h5:
        del h5["tokens_present"], h5["durations"]
    old = open_store(tmp_path / "a.h5")
    assert old.token_present is None and old.durations is None
    # resuming it adds them (whole presence)
    with FeatureStoreWriter(tmp_path / "a.h5", ids, labels, TASKS, {"teacher": SPECS}, resume=True):
        pass
    with h5py.File(tmp_path / "a.h5") as h5:
        assert h5["tokens_present/teacher"][1].tolist() == [True] * 4 + [False] * 3 + [True] * 8


def test_a_present_modality_without_a_present_token_is_refused_by_name(tmp_path):
    with FeatureStoreWriter(tmp_path / "a.h5", ["x"], {"action": [0]}, TASKS, {"teacher": SPECS}, resume=False) as w:
        feats = {s.name: np.ones(s.shape, np.float32) for s in SPECS}
        with pytest.raises(DataError, match=r"'x'.*'flow'.*no present token"):
            w.write(0, {"teacher": feats}, [True] * 3, tokens={"teacher": {"flow": np.zeros(3, bool)}})


# ----------------------------------------------------------------------------- bursts


def test_bursts_fail_the_asked_share_of_time_reproducibly_and_keep_a_token():
    g = torch.Generator().manual_seed(0)
    failed, inside = failure_timelines(4000, 3, torch.full((4000,), 3.0), 0.4, 0.5, g)
    assert failed.float().mean().item() == pytest.approx(0.4, abs=0.02)
    present = torch.ones(300, 3, dtype=torch.bool)
    present[::3, 1] = False
    secs = torch.full((300,), 2.0)
    a = burst_views(present, COUNTS, [False, True, False], secs, 0.9, 0.5, torch.Generator().manual_seed(5))
    b = burst_views(present, COUNTS, [False, True, False], secs, 0.9, 0.5, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["per_token"].any(1).all() and a["drop_whole"].any(1).all()
    assert not (a["drop_whole"] & ~present).any()
    flow = a["per_token"][:, 4:7]
    assert (flow.all(1) | ~flow.any(1)).all()  # whole-clip tokens (motion maps) fail together
    none = burst_views(present, COUNTS, [False] * 3, secs, 0.0, 0.5, g)
    assert torch.equal(none["drop_whole"], present) and not none["failed"].any()


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_bursts_keep_the_rate_and_the_mean_length_on_the_grid(rate):
    from karmma.bursts import grid_step

    failed, _ = failure_timelines(2000, 2, torch.full((2000,), 10.0), rate, 0.5, torch.Generator().manual_seed(1))
    f = failed.double()
    bursts = (f[..., 1:] > f[..., :-1]).sum() + f[..., 0].sum()
    assert f.mean().item() == pytest.approx(rate, abs=0.01)
    assert (f.sum() / bursts).item() * grid_step(0.5, rate) == pytest.approx(0.5, rel=0.1)


def test_each_clip_can_have_its_own_rate():
    rates = torch.tensor([0.0, 0.3, 0.8, 1.0]).repeat_interleave(500)
    failed, _ = failure_timelines(len(rates), 2, torch.full((len(rates),), 6.0), rates, 0.5,
                                  torch.Generator().manual_seed(2))  # fmt: skip
    share = failed.double().mean((1, 2)).view(4, 500).mean(1)
    assert share.tolist() == pytest.approx([0.0, 0.3, 0.8, 1.0], abs=0.02)


def test_training_bursts_reach_the_asked_share_of_clips_at_their_own_rates():
    from types import SimpleNamespace

    from karmma.bursts import train_bursts
    from karmma.config import ModalityDropoutConfig

    specs = [SimpleNamespace(name=n, num_tokens=k) for n, k in zip("abc", COUNTS)]
    part = SimpleNamespace(specs=specs, clip_tokens=(), token_present=None, durations=None)
    data = SimpleNamespace(parts=lambda: [part])
    mask = torch.ones(4000, 3, dtype=torch.bool)
    cfg = ModalityDropoutConfig(kind="burst", burst_rate=0.0, burst_rate_max=0.8, burst_share=0.5, clip_seconds=4.0)
    out = train_bursts(data, np.arange(4000), mask, cfg, torch.Generator().manual_seed(0))
    lost = 1.0 - out.float().mean(1)
    # half the clips untouched, and a few of the others (a rate near 0 may fail no token)
    assert 0.47 <= (lost == 0).float().mean().item() < 0.6
    assert lost.mean().item() == pytest.approx(0.5 * 0.4, abs=0.03)  # the others: rates uniform in [0, 0.8]
    assert lost.max().item() > 0.7


def test_as_data_holds_the_last_working_token():
    x = torch.arange(8.0).reshape(1, 8, 1)
    failed = torch.tensor([[False, True, True, False, False, False, False, True]])
    held = failed_as_data([x], failed, [8], ["hold"])[0]
    assert held.flatten().tolist() == [0, 0, 0, 3, 4, 5, 6, 6]
    assert failed_as_data([x], failed, [8], ["zero"])[0].flatten().tolist() == [0, 0, 0, 3, 4, 5, 6, 0]


# ----------------------------------------------------------------------------- what users run


@pytest.mark.slow
def test_train_with_bursts_distil_and_evaluate_in_time_from_the_cli(tmp_path, capsys):
    train, val = synthetic_store(tmp_path / "train.h5"), synthetic_store(tmp_path / "val.h5", "val")
    burst = [
        "--set",
        "modality_dropout.kind=burst",
        "--set",
        "modality_dropout.burst_rate=0.1",
        "--set",
        "modality_dropout.burst_rate_max=0.6",
    ]  # each clip its own rate
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "t", *QUICK, *burst,
                     *store_args(train, val))  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "distill", "--config", "demo_student", "--teacher", tmp_path / "t", "--run-dir",
                     tmp_path / "s", *QUICK, *burst, "--set", "distill.cache_teacher_logits=true",
                     *store_args(train, val, "student"))  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "evaluate", tmp_path / "t", tmp_path / "s", "--names", "teacher,student",
                       "--out", tmp_path / "eval", "--repeats", "1", "--bursts", "0.25,0.5")  # fmt: skip
    assert rc == 0, err
    assert "sensors failing inside the clip" in out and "student per_token" in out
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    for name in ("teacher", "student"):
        r = res["models"][name]
        assert set(r["within_clip"]) == {"per_token", "drop_whole", "as_data"}
        assert set(r["within_clip_by_length"]) == {"0.25", "0.5"}
        full = r["subsets"]["rgb+flow+audio"]["action_top1"]
        for view in r["within_clip"].values():  # nothing fails at rate 0: every view is the full model
            assert view["0.0"]["action_top1"] == pytest.approx(full)
    assert (tmp_path / "eval" / "within_clip.png").stat().st_size > 0
    assert "per_token" in (tmp_path / "eval" / "within_clip.csv").read_text()


@pytest.mark.slow
def test_export_takes_a_per_token_mask_and_predict_reports_coverage(tmp_path, capsys, teacher_run):
    from karmma.deploy.export import onnx_metadata, verify_onnx
    from karmma.deploy.predict import load_predictor
    from karmma.io.checkpoint import load_model

    onnx_path = tmp_path / "t.onnx"
    rc, _, err = cli(capsys, "export", teacher_run, "--out", onnx_path)
    assert rc == 0, err
    assert onnx_metadata(onnx_path)["presence"] == "per_token"
    model, _ = load_model(teacher_run)
    report = verify_onnx(model, onnx_path)
    assert report["ok"] and "first half of each" in report["max_abs_diff"]
    specs = model.specs
    sample = {s.name: np.random.default_rng(0).standard_normal(s.shape).astype(np.float32) for s in specs}
    from karmma.data.raw import Raw

    partial = Raw(sample)
    partial.valid = {specs[0].name: np.arange(specs[0].num_tokens) < 2}
    outs = []
    for path in (onnx_path, teacher_run):
        p = load_predictor(path)
        got = p.predict(partial)
        assert got["token_coverage"] == {specs[0].name: pytest.approx(2 / specs[0].num_tokens)}
        assert "token_coverage" not in p.predict(sample)
        outs.append(got["topk"]["action"])
    assert [c for c, _, _ in outs[0]] == [c for c, _, _ in outs[1]]  # ONNX and PyTorch agree
    assert [v for _, _, v in outs[0]] == pytest.approx([v for _, _, v in outs[1]], abs=1e-4)
    # the same flags from a sample file, through the CLI
    name = specs[0].name
    np.savez(tmp_path / "x.npz", **sample, **{f"{name}.valid": partial.valid[name]})
    rc, out, err = cli(capsys, "predict", onnx_path, "--input", tmp_path / "x.npz", "--json", tmp_path / "p.json")
    assert rc == 0, err
    assert f"{name} {100 * 2 / specs[0].num_tokens:.0f}% of its tokens" in out
    got = json.loads((tmp_path / "p.json").read_text())
    assert got["token_coverage"] == {name: pytest.approx(2 / specs[0].num_tokens)}
    assert [c for c, _, _ in got["topk"]["action"]] == [c for c, _, _ in outs[0]]
    np.savez(tmp_path / "bad.npz", **sample, **{f"{name}.valid": np.ones(specs[0].num_tokens + 1, bool)})
    rc, _, err = cli(capsys, "predict", onnx_path, "--input", tmp_path / "bad.npz")
    assert rc == 2 and name in err and "tokens" in err
    np.savez(tmp_path / "stray.npz", **{"nosuch.valid": np.ones(3, bool)}, **sample)
    rc, _, err = cli(capsys, "predict", onnx_path, "--input", tmp_path / "stray.npz")
    assert rc == 2 and "nosuch.valid" in err


def test_extraction_marks_the_tokens_a_black_stretch_covers(tmp_path, capsys):
    from tests.media_trees import clip_frames, tone, write_clip

    frames = clip_frames(24)
    frames[:12] = 0  # the camera is dead for the first second of two (12 fps)
    write_clip(tmp_path / "dead.mp4", frames, 12, tone(2.0, 440.0))
    write_clip(tmp_path / "fine.mp4", clip_frames(24), 12, tone(2.0, 440.0))
    (tmp_path / "labels.csv").write_text("id,label,video\nc1,x,dead.mp4\nc2,y,fine.mp4\n")
    rc, _, err = cli(
        capsys, "extract", "video", "--encoder", "pool", "--root", tmp_path, "--out", tmp_path / "v.h5", "--no-progress"
    )
    assert rc == 0, err
    fs = open_store(tmp_path / "v.h5")
    assert fs.token_present is not None and fs.durations == pytest.approx([2.0, 2.0])
    names = [s.name for s in fs.specs]
    edges = np.cumsum([0] + [s.num_tokens for s in fs.specs])
    rgb = fs.token_present[:, edges[names.index("rgb")] : edges[names.index("rgb") + 1]]
    half = rgb.shape[1] // 2
    assert not rgb[0, :half].any() and rgb[0, half:].all() and rgb[1].all()
    rc, out, _ = cli(capsys, "info", tmp_path / "v.h5")
    assert json.loads(out)["token_coverage"]["teacher"]["rgb"]["tokens_present"] == pytest.approx(0.75)
