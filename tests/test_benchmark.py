"""``karmma utd-mhad`` end to end on a tiny UTD-MHAD tree written by the test: real EfficientNet
backbones, trainable encoders, a validation subject, two seeds, the test split read at the end."""

import json

import pytest

from tests.extractors.test_extract import make_utd
from tests.hostile import cli

CLIPS = [(a, s, t) for s in (1, 2, 3, 4) for a in (1, 2, 3) for t in (1, 2)]


@pytest.mark.slow
def test_utd_mhad_benchmark_on_a_tiny_tree(tmp_path, capsys):
    root = make_utd(tmp_path / "utd", clips=CLIPS, skip={("a2_s1_t1", "depth")})
    rc, out, err = cli(capsys, "utd-mhad", "--root", root, "--out", tmp_path / "bench", "--seeds", "0,1",
                       "--epochs", "1", "--val-subject", "3", "--repeats", "1", "--no-progress", "--lanes", "2",
                       "--set", "optim.batch_size=4")  # fmt: skip
    assert rc == 0, err
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    assert summary["protocol"]["test_clips"] == 12 and summary["protocol"]["val_subject"] == 3
    assert summary["protocol"]["lanes"] == 2  # the baselines trained in a second process
    teacher = summary["summary"]["models"]["teacher"]
    assert len(teacher["subsets"]) == 15 and len(teacher["sensor_dropout"]) == 10
    assert len(teacher["subsets"]["depth+flow+inertial+skeleton"]["values"]) == 2  # one per seed
    # sensors failing inside the clip (depth motion maps recomputed from the raw clips for each draw)
    for model in ("teacher", "student", "baseline-md"):
        within = summary["summary"]["models"][model]["within_clip"]
        assert set(within) == {"per_token", "drop_whole", "as_data"}
        assert [float(r) for r in within["per_token"]] == [round(0.1 * i, 1) for i in range(10)]
        assert len(within["as_data"]["0.5"]["values"]) == 2 and "std" in within["as_data"]["0.5"]
    paired = summary["summary"]["student_minus_baseline_md"]
    assert paired["subsets"]["of"] == 15 and paired["sensor_dropout"]["of"] == 10
    cost = summary["cost"]
    full = "depth+flow+inertial+skeleton"
    # Backbone images per clip: the 8 flow segments; depth motion maps go to the model's CNN, and
    # a raw signal needs no backbone.
    assert cost["models"]["teacher"][full]["extractor_images"] == 8
    assert cost["models"]["teacher"]["depth"]["extractor_images"] == 0
    assert cost["models"]["teacher"]["inertial"]["extractor_images"] == 0
    assert cost["models"]["teacher"]["depth"]["model_flops"] > cost["models"]["teacher"]["inertial"]["model_flops"]
    from karmma.data.store import open_store

    for size in ("teacher", "student"):
        specs = {s.name: (s.num_tokens, s.dim) for s in open_store(tmp_path / "bench/features/test.h5", size).specs}
        assert specs["depth"] == (3, 3 * 32 * 32) and specs["flow"] == (8, 1280), specs
    assert cost["student_vs_teacher"]["flops"] < 0.5
    assert "student − baseline-md" in out and "GFLOPs (all)" in out
    # The presets fit their late-fusion weights on the validation subject; the report shows them.
    weights = summary["per_seed"][1]["fusion_weights"]
    assert set(weights) == {"teacher", "student", "baseline-ce", "baseline-md"}
    assert list(weights["student"]) == ["fused", "heads", "depth", "flow", "inertial", "skeleton"]
    assert "late-fusion weights fitted on the validation subject" in out
    assert (tmp_path / "bench" / "sensor_dropout.png").stat().st_size > 1000
    # The validation subject never reaches training; test clips are only evaluated.
    fit = json.loads((tmp_path / "bench" / "seed0" / "teacher" / "config.json").read_text())["data"]
    assert fit["train"].endswith("fit.h5") and fit["val"].endswith("val.h5")
    # The presets' unimodal loss is trained and logged (teacher, distilled student, the baselines).
    for model in ("teacher", "student", "baseline-ce", "baseline-md"):
        last = json.loads((tmp_path / "bench" / "seed0" / model / "history.json").read_text())[-1]
        assert last["unimodal"] > 0, (model, last)
