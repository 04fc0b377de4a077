"""The user's path on tiny trees the test writes: EPIC-100 extract -> train -> distill -> evaluate
(official metrics) -> submission -> predict on a raw clip; SSv2 extract with detections -> train
-> evaluate -> predict. Models come from the shipped presets (dropout on), through `main(argv)`."""

import json
import zipfile

import numpy as np
import pytest

from karmma.cli import main
from karmma.data.readers.ssv2_media import DETECTION_DIM, HAND_SLOTS, SLOT_DIM, detection_tokens
from karmma.data.store import open_store
from tests.media_trees import clip_frames, epic_csv, epic_tree, ssv2_tree, tone, write_clip

FAST = ["--set", "optim.epochs=2", "--set", "optim.batch_size=4", "--set", "optim.warmup_steps=0", "--no-progress"]


def _rows(prefix_videos, n_per_video, offset=0):
    rows = []
    for vid in prefix_videos:
        for k in range(n_per_video):
            a = 1 + 10 * k
            rows.append((f"{vid}_{k + offset}", vid, a, a + 19, k % 3, (k + 1) % 4))
    return rows


@pytest.mark.slow
def test_epic100_extract_train_distill_evaluate_submit_predict(tmp_path, capsys):
    root = epic_tree(tmp_path / "EPIC-KITCHENS")
    ann = tmp_path / "annotations"
    epic_csv(ann / "EPIC_100_train.csv", _rows(["P01_01", "P01_101"], 4))
    epic_csv(ann / "EPIC_100_validation.csv", _rows(["P02_01"], 4))
    epic_csv(ann / "EPIC_100_test_timestamps.csv", _rows(["P02_01"], 2, offset=10), labelled=False)
    (ann / "EPIC_100_tail_verbs.csv").write_text("verb\n2\n")
    (ann / "EPIC_100_tail_nouns.csv").write_text("noun\n3\n")
    (ann / "EPIC_100_unseen_participant_ids_validation.csv").write_text("participant_id\nP02\n")
    stores = {}
    for split, csv in (("train", "train"), ("val", "validation"), ("test", "test_timestamps")):
        stores[split] = tmp_path / f"{split}.h5"
        assert main(["extract", "epic100", "--encoder", "pool",
                     "--root", str(root), "--annotations", str(ann / f"EPIC_100_{csv}.csv"),
                     "--out", str(stores[split]), "--no-progress"]) == 0  # fmt: skip
    data = [f"--set=data.train={stores['train']}", f"--set=data.val={stores['val']}"]
    assert main(["train", "--config", "epic100_teacher", "--run-dir", str(tmp_path / "teacher"), *FAST, *data]) == 0
    assert main(["distill", "--config", "epic100_student", "--teacher", str(tmp_path / "teacher"),
                 "--run-dir", str(tmp_path / "student"), *FAST, *data]) == 0  # fmt: skip
    capsys.readouterr()
    runs = [str(tmp_path / "teacher"), str(tmp_path / "student"), "--names", "teacher,student"]
    assert main(["evaluate", *runs, "--epic", str(ann), "--out", str(tmp_path / "eval"), "--repeats", "1",
                 "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "EPIC-KITCHENS-100 metrics" in printed and "| student | unseen |" in printed
    epic = json.loads((tmp_path / "eval" / "results.json").read_text())["epic"]
    for model in ("teacher", "student"):
        assert set(epic[model]) == {"overall", "tail", "unseen"}
        assert epic[model]["unseen"]["verb_top1"] == epic[model]["overall"]["verb_top1"]  # all val is P02
        assert 0 <= epic[model]["overall"]["action_top5"] <= 100
    # an annotation folder without the tail / unseen lists: those groups are named as omitted
    (tmp_path / "bare").mkdir()
    assert main(["evaluate", runs[1], "--epic", str(tmp_path / "bare"), "--out", str(tmp_path / "eval_bare"),
                 "--repeats", "1", "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "omitted: tail (no EPIC_100_tail_verbs.csv / EPIC_100_tail_nouns.csv)" in printed
    assert "omitted: unseen (no EPIC_100_unseen_participant_ids" in printed and "| student | tail |" not in printed
    # the unlabelled test split cannot be evaluated, only submitted
    assert main(["evaluate", str(tmp_path / "student"), "--val", str(stores["test"]), "--out", str(tmp_path / "e2"),
                 "--no-progress"]) == 2  # fmt: skip
    assert "karmma submit" in capsys.readouterr().err
    sub_path = tmp_path / "submission.zip"
    assert main(["submit", str(tmp_path / "student"), "--store", str(stores["test"]), "--out", str(sub_path),
                 "--sls-pt", "1", "--sls-tl", "3", "--sls-td", "3"]) == 0  # fmt: skip
    with zipfile.ZipFile(sub_path) as z:
        sub = json.loads(z.read("test.json"))
    assert sub["version"] == "0.2" and sub["challenge"] == "action_recognition" and sub["sls_tl"] == 3
    assert sorted(sub["results"]) == ["P02_01_10", "P02_01_11"]
    assert len(sub["results"]["P02_01_10"]["verb"]) == 97 and len(sub["results"]["P02_01_10"]["noun"]) == 300
    assert sum(sub["results"]["P02_01_11"]["noun"].values()) == pytest.approx(1.0, abs=1e-4)

    # predict on raw clips: video + audio, video without an audio track, a folder of frames
    with_audio = write_clip(tmp_path / "clip.mp4", clip_frames(60, kind=1), 30, tone(2.0, 660.0))
    silent = write_clip(tmp_path / "silent.mp4", clip_frames(60, kind=2), 30)
    capsys.readouterr()
    out_json = tmp_path / "pred.json"
    assert main(["predict", str(tmp_path / "student"), "--clip", str(with_audio), "--json", str(out_json)]) == 0
    assert "modalities used: rgb, flow, audio" in capsys.readouterr().out
    pred = json.loads(out_json.read_text())
    assert set(pred["topk"]) == {"verb", "noun"} and len(pred["topk"]["verb"]) == 5
    assert main(["predict", str(tmp_path / "student"), "--clip", str(silent)]) == 0
    assert "modalities used: rgb, flow   (absent: audio)" in capsys.readouterr().out
    frames = root / "P01" / "rgb_frames"  # P01_101 is a tar: use P01_01's folder of frames
    assert main(["predict", str(tmp_path / "student"), "--clip", str(frames / "P01_01"), "--modalities", "rgb"]) == 0
    assert "modalities used: rgb   (absent: flow, audio)" in capsys.readouterr().out
    # the exported ONNX file carries the extractor too
    assert main(["export", str(tmp_path / "student"), "--out", str(tmp_path / "s.onnx")]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "s.onnx"), "--clip", str(silent)]) == 0
    assert "absent: audio" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "s.onnx"), "--clip", str(silent), "--input", "x.npz"]) == 2


def test_detection_tokens_normalise_and_slot_boxes():
    frames = [{"name": "9/0002.jpg", "labels": [
        {"box2d": {"x1": 32, "y1": 12, "x2": 64, "y2": 48}, "category": "cup", "standard_category": "0001"},
        {"box2d": {"x1": 0, "y1": 0, "x2": 16, "y2": 24}, "category": "hand", "standard_category": "hand"}]},
        {"name": "9/0001.jpg", "labels": []}]  # fmt: skip
    tok = detection_tokens(frames, (48, 64), n=2).reshape(2, -1, SLOT_DIM)
    assert tok.shape == (2, DETECTION_DIM // SLOT_DIM, SLOT_DIM) and not tok[0].any()  # frames sorted by name
    np.testing.assert_allclose(tok[1, 0], [0, 0, 0.25, 0.5, 1, 0, 1])  # first hand slot
    np.testing.assert_allclose(tok[1, HAND_SLOTS + 1], [0.5, 0.25, 1, 1, 0, 1, 1])  # object placeholder 0001
    assert not tok[1, HAND_SLOTS].any()  # placeholder 0000 absent in that frame


@pytest.mark.slow
def test_ssv2_extract_train_evaluate_predict(tmp_path, capsys):
    paths = ssv2_tree(tmp_path / "ssv2", n=8)
    videos = tmp_path / "ssv2" / "videos"
    out = {}
    for split in ("train", "validation"):
        out[split] = tmp_path / f"{split}.h5"
        assert main(["extract", "ssv2", "--encoder", "pool",
                     "--root", str(videos), "--annotations", str(paths[split]), "--labels",
                     str(paths["labels"]), "--boxes", str(paths["boxes"]), "--out", str(out[split]),
                     "--no-progress"]) == 0  # fmt: skip
    assert "detections absent for 1 of 2 (no boxes for this video: 1)" in capsys.readouterr().out
    train = open_store(out["train"])
    assert train.modality_names == ["rgb", "flow", "detections"] and train.present.all()
    assert train.class_names["action"][1] == "Pushing something from right to left"
    assert train.labels["action"].tolist() == [0, 1, 0, 1, 0, 1]
    data = [f"--set=data.train={out['train']}", f"--set=data.val={out['validation']}"]
    assert main(["train", "--config", "epic100_teacher", "--run-dir", str(tmp_path / "t"), *FAST, *data]) == 0
    assert main(["distill", "--config", "epic100_student", "--teacher", str(tmp_path / "t"),
                 "--run-dir", str(tmp_path / "s"), *FAST, *data]) == 0  # fmt: skip
    assert main(["evaluate", str(tmp_path / "t"), str(tmp_path / "s"), "--out", str(tmp_path / "eval"),
                 "--repeats", "1", "--no-progress"]) == 0  # fmt: skip
    assert "rgb+flow+detections" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "t"), "--clip", str(videos / "1000.webm")]) == 0
    assert "modalities used: rgb, flow   (absent: detections)" in capsys.readouterr().out
