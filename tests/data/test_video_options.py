"""The generic video folder's extraction options (frame size, frames per clip, audio features):
recorded in the store and the model, so that ``predict --clip`` decodes a clip as the store was
made; a store of karmma 0.2 (nothing recorded) is still read as it was made; a resume with other
options is refused."""

import numpy as np
import pytest

from karmma.cli.main import main
from karmma.data.clips import LEGACY_VIDEO, preprocessing, video_clip, video_preprocessing
from karmma.data.store import open_store, store_info
from karmma.runtime import load
from karmma.runtime.clip import clip_sample
from tests.media_trees import clip_frames, tone, write_clip


def _folder(root, n=4):
    rows = []
    for i in range(n):  # 1.5 s at 12 fps, a tone of its class
        write_clip(root / f"c{i}.mp4", clip_frames(18, kind=i % 2), 12, tone(1.5, 300.0 * (1 + i % 2)))
        rows.append(f"c{i},{'ab'[i % 2]},c{i}.mp4\n")
    (root / "labels.csv").write_text("id,label,video\n" + "".join(rows))
    return root


def test_the_options_are_recorded_and_predict_decodes_a_clip_as_the_store_was_made(tmp_path, capsys):
    root, store = _folder(tmp_path / "clips"), tmp_path / "v.h5"
    argv = ["extract", "video", "--root", str(root), "--out", str(store), "--encoder", "pool", "--no-progress"]
    assert main([*argv, "--frame-size", "48", "--frames", "8"]) == 0
    extra = store_info(store)["extra"]
    assert extra["preprocessing"] == video_preprocessing(48, 8, "log_mel")
    assert extra["preprocessing"]["audio"]["bands"] == 64 and extra["kinds"]["audio"] == ["signal", 64]
    assert "log-mel" in extra["contract"]["audio"]
    run = tmp_path / "run"
    sets = ["--set", "data.kind=store", "--set", f"data.train={store}", "--set", f"data.val={store}",
            "--set", "data.feature_set=student", "--set", "optim.epochs=1"]  # fmt: skip
    assert main(["train", "--config", "demo_student", "--run-dir", str(run), *sets, "--no-progress"]) == 0
    predictor = load(run)
    assert predictor.extractor["preprocessing"] == extra["preprocessing"]
    fs = open_store(store, "student")
    for i in (0, 3):
        sample = clip_sample(predictor, root / f"c{i}.mp4", ("rgb", "flow", "audio"))
        for m in ("rgb", "flow", "audio"):
            np.testing.assert_allclose(sample[m], np.asarray(fs.features[m][i]), atol=1e-4, err_msg=m)
    # a resume with other options would mix two extractions in one store: refused
    assert main([*argv, "--frame-size", "48", "--frames", "16"]) == 2
    assert "exists with extraction options" in capsys.readouterr().err
    assert main([*argv, "--frame-size", "48", "--frames", "8"]) == 0  # the same options resume


def test_a_store_of_karmma_0_2_is_read_as_it_was_made(tmp_path):
    root = _folder(tmp_path / "clips", n=1)
    assert preprocessing("video") == LEGACY_VIDEO and preprocessing("video", None)["audio"]["bands"] == 32
    raw = video_clip(root / "c0.mp4", ("rgb", "audio"))  # what a model that records no preprocessing gets
    assert raw["rgb"].shape[1:3] == (64, 64) and raw["rgb"].shape[0] == 18 and raw["audio"].shape[1] == 32
    raw = video_clip(root / "c0.mp4", ("rgb", "audio"), video_preprocessing())
    assert raw["rgb"].shape[1:3] == (112, 112) and raw["rgb"].shape[0] <= 32 and raw["audio"].shape[1] == 64


@pytest.mark.parametrize(("flag", "value"), [("--frame-size", "4"), ("--frames", "1"), ("--frames", "-3")])
def test_bad_options_are_refused_before_any_work(tmp_path, capsys, flag, value):
    root = _folder(tmp_path / "clips", n=1)
    rc = main(["extract", "video", "--root", str(root), "--out", str(tmp_path / "v.h5"), flag, value])
    assert rc == 2 and "frame size in [16, 1024]" in capsys.readouterr().err
    assert not (tmp_path / "v.h5").exists()


def test_options_of_another_reader_are_named(tmp_path, capsys):
    rc = main(["extract", "utd_mhad", "--root", str(tmp_path), "--out", str(tmp_path / "u.h5"), "--frames", "8"])
    assert rc == 2 and "does not take" in capsys.readouterr().err
