"""`karmma extract epic100` on a tiny EPIC tree written by the test: MP4s (H.264 + AAC) from PyAV,
frame folders and tars; the frame-number convention, fps per video kind, the flow stride, audio
from the container's track, absent media counted."""

import json

import numpy as np
import pytest

from karmma.cli import main
from karmma.data.media.decode import NoStream, log_mel, mel_filterbank, read_audio, read_video
from karmma.data.readers.epic_media import EpicReader, flow_index, frame_rate, sample_frames
from karmma.data.store import open_store
from karmma.errors import DataError
from tests.media_trees import clip_frames, epic_csv, epic_tree, level, tone, write_clip


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return epic_tree(tmp_path_factory.mktemp("epic"))


def test_frame_rates_and_flow_stride():
    assert frame_rate("P01_01") == 60 and frame_rate("P01_101") == 50 and frame_rate("P37_103") == 50
    assert [flow_index("P01_01", f) for f in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]  # EPIC-55: stride 2
    assert [flow_index("P01_101", f) for f in (1, 2, 5)] == [1, 2, 5]  # extension: 1:1
    assert sample_frames(1, 1, 4).tolist() == [1, 1, 1, 1]
    assert sample_frames(0, 7, 4).tolist() == [1, 3, 5, 7]  # frame 0 -> file 1; centres of 4 equal parts
    assert sample_frames(11, 40, 3).tolist() == [16, 26, 36]  # 11-20, 21-30, 31-40


def test_pyav_decodes_video_and_audio_track(tree):
    mp4 = tree / "P01" / "videos" / "P01_01.MP4"
    frames = read_video(mp4, (48, 64))
    assert frames.shape == (120, 48, 64, 3)
    assert [round(float(frames[k, :5, 40:].mean()) / 10) for k in range(6)] == [round(level(k) / 10) for k in range(6)]
    # frame file number f lies at (f - 1) / fps: frames 11..13 of a 60 fps video are decoded frames 10..12
    span = read_video(mp4, (48, 64), start_s=10 / 60, end_s=13 / 60)
    assert len(span) == 3 and abs(float(span[0, :5, 40:].mean()) - level(10)) < 6
    audio = read_audio(mp4, start_s=0.5, end_s=1.0)
    assert len(audio) == 12_000  # 0.5 s at 24 kHz, mono
    mel = log_mel(audio)
    assert mel.shape == (101, 128)  # 5 ms hop, centred frames
    peak = mel_filterbank(24_000, 2048, 128)[:, round(440 * 2048 / 24_000)].argmax()
    assert abs(int(np.median(mel.argmax(1))) - int(peak)) <= 1  # the 440 Hz tone lands in its mel band
    silent = write_clip(tree.parent / "silent.mp4", clip_frames(10), 10)
    with pytest.raises(NoStream, match="no audio track"):
        read_audio(silent)


def test_extract_epic_tree_through_the_cli(tree, tmp_path, capsys):
    ann = epic_csv(tmp_path / "ann" / "EPIC_100_train.csv", [
        ("P01_01_0", "P01_01", 1, 40, 0, 1),  # frame folders (flow at stride 2) + video audio
        ("P01_101_0", "P01_101", 11, 50, 1, 2),  # frame tars (flow 1:1) + video audio
        ("P02_01_0", "P02_01", 5, 100, 2, 3),  # the MP4 only: rgb and flow decoded from it
        ("P03_01_0", "P03_01", 1, 10, 3, 4),  # no media at all: not written, listed
    ])  # fmt: skip
    out = tmp_path / "train.h5"
    argv = ["extract", "epic100", "--encoder", "pool", "--root", str(tree), "--annotations", str(ann), "--out",
            str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 2  # flow from TV-L1 JPEGs and from the MP4 in one store: refused unless asked
    assert "--allow-mixed-flow" in capsys.readouterr().err
    argv.append("--allow-mixed-flow")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    from karmma.data.store_provenance import sources_of

    assert sources_of(out)["flow"] == {"farneback_video": 1, "not recorded": 1, "tvl1_jpeg": 2}
    assert "1 sample(s) had no readable modality and were not written (e.g. P03_01_0)" in printed
    summary = json.loads((tmp_path / "train.h5.summary.json").read_text())
    assert summary["not_written"] == ["P03_01_0"]
    assert summary["absent"]["audio"] == {
        "no video file (audio is read from its track)": {"count": 1, "examples": ["P03_01_0"]}
    }
    data = open_store(out)
    assert data.ids == ["P01_01_0", "P01_101_0", "P02_01_0"]
    assert data.present.all() and data.labels["verb"].tolist() == [0, 1, 2]
    assert [s.name for s in data.specs] == ["rgb", "flow", "audio"] and data.specs[2].dim > 0
    assert data.labelled
    # resumable: a second run has nothing left to do and keeps the store
    assert main(argv) == 0 and open_store(out).ids == data.ids


def test_frames_convention_folder_and_tar(tree):
    reader = EpicReader(annotations=epic_csv(tree / "a.csv", [("P01_01_0", "P01_01", 5, 5, 0, 0),
                                                              ("P01_101_0", "P01_101", 7, 7, 0, 0)]))  # fmt: skip
    refs = reader.samples(tree, "all")
    for ref, rgb_file, flow_file in ((refs[0], 5, 3), (refs[1], 7, 7)):  # folder (stride 2) and tar (1:1)
        raw = reader.load(ref, ("rgb", "flow"), "raise")
        assert raw["rgb"].shape == (16, 64, 64, 3)
        assert abs(raw["rgb"].mean() * 255 - rgb_file) < 1.5  # annotation frame f reads frame_{f:010d}.jpg
        assert abs(raw["flow"][..., 0].mean() - (flow_file * 40 / 255 - 20 + 128 * 40 / 255)) < 0.3
        assert abs(raw["flow"][..., 1].mean() - (128 * 40 / 255 - 20)) < 0.2


def test_annotation_needed_and_split_refused(tree, tmp_path):
    with pytest.raises(DataError, match="--annotations"):
        EpicReader()
    assert main(["extract", "epic100", "--encoder", "pool", "--root", str(tree), "--out", str(tmp_path / "x.h5")]) == 2
    assert (
        main(
            ["extract", "utd_mhad", "--encoder", "pool", "--root", str(tree), "--annotations", "a.csv", "--out", "x.h5"]
        )
        == 2
    )


def test_unlabelled_test_split_is_for_prediction_only(tree, tmp_path):
    ann = epic_csv(tmp_path / "EPIC_100_test_timestamps.csv", [("P02_01_7", "P02_01", 1, 60, 0, 0)], labelled=False)
    out = tmp_path / "test.h5"
    assert main(["extract", "epic100", "--encoder", "pool",
                 "--root", str(tree), "--annotations", str(ann), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    data = open_store(out)
    assert not data.labelled and data.labels["verb"].tolist() == [-1]
    from karmma.data.dataset import require_samples

    with pytest.raises(DataError, match="has no labels.*karmma submit"):
        require_samples(data, "training")


def test_video_folder_reads_audio_from_the_video_track(tmp_path):
    write_clip(tmp_path / "a.mp4", clip_frames(12), 12, tone(1.0, 440.0))
    write_clip(tmp_path / "b.mp4", clip_frames(12, kind=1), 12)  # no audio track: audio absent, not an error
    (tmp_path / "labels.csv").write_text("id,label,video\na,x,a.mp4\nb,y,b.mp4\n")
    out = tmp_path / "v.h5"
    assert (
        main(["extract", "video", "--encoder", "pool", "--root", str(tmp_path), "--out", str(out), "--no-progress"])
        == 0
    )
    assert open_store(out).present.tolist() == [[True, True, True], [True, True, False]]
    summary = json.loads((tmp_path / "v.h5.summary.json").read_text())
    assert summary["absent"]["audio"]["no audio track"]["examples"] == ["b"]


def test_corrupt_video_is_absent_with_its_reason_or_stops_with_its_name(tmp_path, capsys):
    bad = tmp_path / "P05" / "videos" / "P05_01.MP4"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    write_clip(tmp_path / "P05" / "videos" / "P05_02.MP4", clip_frames(60), 60, tone(1.0, 440.0))
    ann = epic_csv(tmp_path / "a.csv", [("P05_01_0", "P05_01", 1, 30, 0, 0), ("P05_02_0", "P05_02", 1, 30, 1, 1)])
    argv = ["extract", "epic100", "--encoder", "pool", "--root", str(tmp_path), "--annotations", str(ann),
            "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "s.h5")]) == 0
    summary = json.loads((tmp_path / "s.h5.summary.json").read_text())
    assert summary["not_written"] == ["P05_01_0"]
    reasons = {m: next(iter(r)) for m, r in summary["absent"].items()}
    assert reasons["audio"].startswith("unreadable") and "P05_01.MP4" in reasons["audio"]
    assert reasons["rgb"].startswith("no rgb frames; unreadable") and reasons["flow"].startswith("no flow frames")
    assert open_store(tmp_path / "s.h5").ids == ["P05_02_0"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "r.h5"), "--on-error", "raise"]) == 2
    assert "P05_01.MP4" in capsys.readouterr().err
