"""Per-video, time-indexed community features (ActionFormer/OpenTAD SlowFast `.npz`, TIM `.npy`,
Ego4D-style `.npy`, a generic stride/window/fps) imported through ``main(argv)`` into each EPIC
segment's tokens by its timestamps; a split problem and a layout problem are told apart. The files
are written here with the published shapes; row ``i`` holds the value ``i`` so that the rows each
segment takes can be read back."""

from __future__ import annotations

import numpy as np
import pytest

from karmma.data.store import open_store
from tests.hostile import cli
from tests.media_trees import EPIC_HEADER

# (narration_id, video_id, start s, stop s): a 2.1 s action, a 0.1 s one (no window centre inside), a long one
SEGMENTS = [("P01_01_0", "P01_01", 1.0, 3.1), ("P01_01_1", "P01_01", 5.5, 5.6), ("P01_01_2", "P01_01", 10.0, 20.0),
            ("P01_02_0", "P01_02", 0.5, 1.5)]  # fmt: skip


def stamp(t: float) -> str:
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:05.2f}"


def annotations(folder, segments=SEGMENTS):
    rows = [f"{nid},{vid.split('_')[0]},{vid},{stamp(a)},{stamp(a)},{stamp(b)},{int(a * 60)},{int(b * 60)},"
            f"take cup,take,0,cup,{k % 3},['cup'],[{k % 3}]\n"
            for k, (nid, vid, a, b) in enumerate(segments)]  # fmt: skip
    path = folder / "EPIC_100_train.csv"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(EPIC_HEADER + "".join(rows))
    return path


def rows(count: int, dim: int, views: int = 0) -> np.ndarray:
    x = np.repeat(np.arange(count, dtype=np.float32)[:, None], dim, axis=1)
    return np.repeat(x[:, None], views, axis=1) if views else x


def imp(tmp_path, fmt, source, *extra, ann=None):
    ann = ann or annotations(tmp_path / "ann")
    return ["import-features", "--format", fmt, "--source", str(source), "--annotations", str(ann),
            "--out", str(tmp_path / "s.h5"), "--no-progress", *extra]  # fmt: skip


def taken(store, modality="rgb") -> dict[str, list[int]]:
    data = open_store(store)
    return {nid: data.features[modality][i][:, 0].astype(int).tolist() for i, nid in enumerate(data.ids)}


def test_actionformer_slowfast_features_are_cut_by_each_segments_timestamps(tmp_path, capsys):
    src = tmp_path / "feats"
    src.mkdir()
    for vid in ("P01_01", "P01_02"):  # 16-frame stride at 30 fps: 40 rows cover 21.9 s
        np.savez(src / f"{vid}.npz", feats=rows(40, 2304))
    rc, out, err = cli(capsys, *imp(tmp_path, "actionformer", src))
    assert rc == 0, err
    assert "rgb: 8 tokens x 2304" in out
    got = taken(tmp_path / "s.h5")
    # window centres (i * 16 + 16) / 30 s: rows 1-4 lie in [1.0, 3.1), sampled evenly to 8 tokens
    assert got["P01_01_0"] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert got["P01_01_1"] == [9] * 8  # no centre in [5.5, 5.6): the row nearest its middle
    assert got["P01_01_2"][0] == 18 and got["P01_01_2"][-1] == 36  # rows 18..36 (centres 10.13..19.73 s)
    assert got["P01_02_0"] == [0, 0, 0, 0, 1, 1, 1, 1]  # centres 0.53 and 1.07 s lie in [0.5, 1.5)


def test_tim_features_with_views_and_one_folder_per_modality(tmp_path, capsys):
    src = tmp_path / "tim"
    for m, dim in (("visual", 1024), ("audio", 2304)):
        (src / m).mkdir(parents=True)
        for vid in ("P01_01", "P01_02"):
            np.save(src / m / f"{vid}.npy", rows(110, dim, views=3))  # 0.2 s stride, 1 s windows: 22 s
    rc, out, err = cli(capsys, *imp(tmp_path, "tim", src, "--tokens", "4"))
    assert rc == 0, err
    assert "visual: 4 tokens x 1024" in out and "audio: 4 tokens x 2304" in out
    got = taken(tmp_path / "s.h5", "audio")
    assert got["P01_01_0"] == [3, 6, 9, 12]  # centres 0.5 + 0.2 i in [1.0, 3.1): rows 3..12


def test_ego4d_style_and_a_generic_stride_window_and_fps(tmp_path, capsys):
    src = tmp_path / "ego"
    src.mkdir()
    for vid in ("P01_01", "P01_02"):
        np.save(src / f"{vid}.npy", rows(40, 1536))
    rc, _, err = cli(capsys, *imp(tmp_path, "ego4d", src, "--modality", "omnivore"))
    assert rc == 0, err
    assert taken(tmp_path / "s.h5", "omnivore")["P01_01_0"] == [1, 1, 2, 2, 3, 3, 4, 4]
    gen = tmp_path / "gen"
    gen.mkdir()
    for vid in ("P01_01", "P01_02"):  # OpenTAD-style: stride 8, window 16 frames at 30 fps
        np.save(gen / f"{vid}.npy", rows(80, 768))
    rc, _, err = cli(capsys, *imp(tmp_path, "timeline", gen, "--stride", "8", "--window", "16", "--fps", "30"))
    assert rc == 0, err
    assert taken(tmp_path / "s.h5")["P01_01_0"][0] == 3  # centres (8 i + 8) / 30: 1.07 s is row 3


def test_a_split_problem_and_a_layout_problem_are_told_apart(tmp_path, capsys):
    src = tmp_path / "feats"
    src.mkdir()
    np.savez(src / "P22_07.npz", feats=rows(40, 2304))  # another split's video
    rc, _, err = cli(capsys, *imp(tmp_path, "actionformer", src))
    assert rc == 2 and "split problem" in err and "P01_01" in err and "P22_07" in err
    for vid in ("P01_01", "P01_02"):  # extracted at 1 row per second: 8 rows read as 16/30 s each
        np.savez(src / f"{vid}.npz", feats=rows(8, 2304))
    rc, _, err = cli(capsys, *imp(tmp_path, "actionformer", src))
    assert rc == 2 and "layout problem" in err and "--stride" in err and "segments reach 10 s" in err
    # with EPIC_100_video_info.csv beside the annotations, the video's duration is the reference
    for vid in ("P01_01", "P01_02"):
        np.savez(src / f"{vid}.npz", feats=rows(40, 2304))
    ann = annotations(tmp_path / "ann")
    (ann.parent / "EPIC_100_video_info.csv").write_text(
        "video_id,duration,fps,resolution\nP01_01,600.0,59.94,1920x1080\nP01_02,21.9,59.94,1920x1080\n"
    )
    rc, _, err = cli(capsys, *imp(tmp_path, "actionformer", src, ann=ann))
    assert rc == 2 and "the video lasts 600 s" in err and "P01_01.npz" in err


@pytest.mark.parametrize("case", ["pt", "named with stride", "timeline without stride", "bad shape"])
def test_what_cannot_be_imported_is_refused_with_the_fix(tmp_path, capsys, case):
    src = tmp_path / "feats"
    src.mkdir()
    np.save(src / "P01_01.npy", rows(40, 64))
    if case == "pt":
        (src / "P01_02.pt").write_bytes(b"PK\x03\x04 a torch zip holding a pickle")
        argv, words = imp(tmp_path, "ego4d", src), "torch.load"
    elif case == "named with stride":
        argv, words = imp(tmp_path, "ego4d", src, "--stride", "4"), "--format timeline"
    elif case == "timeline without stride":
        argv, words = imp(tmp_path, "timeline", src), "needs --stride and --window"
    else:
        np.save(src / "P01_01.npy", np.ones((40, 2, 3, 4), np.float32))
        argv, words = imp(tmp_path, "ego4d", src), "(T, D) or (T, views, D)"
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "s.h5").exists()
