"""Where each sample's modalities came from (provenance) is recorded in the store and shown by
`karmma info`; a store mixing flow algorithms (the release's TV-L1 JPEGs, Farneback from the video)
is refused unless asked for; train and validation stores from different sources are warned about."""

from __future__ import annotations

import json
import logging

from karmma.data.store_provenance import sources_of
from tests.hostile import QUICK, cli, store_args
from tests.media_trees import epic_csv, epic_tree

# P01_01 has flow JPEGs (EPIC-55 frame folders); P02_01 has only its video
MIXED = [("P01_01_0", "P01_01", 1, 40, 0, 1), ("P01_01_1", "P01_01", 41, 80, 1, 2), ("P02_01_0", "P02_01", 1, 40, 2, 3)]


def _extract(capsys, tmp_path, rows, name, *extra):
    ann = epic_csv(tmp_path / f"{name}.csv", rows)
    return cli(capsys, "extract", "epic100", "--encoder", "pool", "--root", tmp_path / "tree", "--annotations", ann,
               "--out", tmp_path / f"{name}.h5", "--no-progress", *extra)  # fmt: skip


def test_a_store_mixing_flow_algorithms_is_refused_unless_asked_and_then_recorded(tmp_path, capsys):
    epic_tree(tmp_path / "tree")
    rc, _, err = _extract(capsys, tmp_path, MIXED, "mixed")
    assert rc == 2 and "2 sources" in err and "tvl1_jpeg (e.g. P01_01_0)" in err
    assert "farneback_video (e.g. P02_01_0)" in err and "--allow-mixed-flow" in err
    assert not (tmp_path / "mixed.h5").exists()
    rc, _, err = _extract(capsys, tmp_path, MIXED, "mixed", "--allow-mixed-flow")
    assert rc == 0, err
    assert sources_of(tmp_path / "mixed.h5") == {
        "audio": {"video_track": 3}, "flow": {"farneback_video": 1, "tvl1_jpeg": 2},
        "rgb": {"jpeg_frames": 2, "video": 1},
    }  # fmt: skip
    rc, out, _ = cli(capsys, "info", tmp_path / "mixed.h5")
    info = json.loads(out)
    assert info["provenance"]["flow"] == {"farneback_video": 1, "tvl1_jpeg": 2}
    contract = info["extra"]["contract"]
    assert set(contract) == {"time", "frames", "audio", "lengths", "flow"} and "never stretched" in contract["lengths"]
    # leaving flow out is the other way: one source per modality, nothing to refuse
    rc, _, err = _extract(capsys, tmp_path, MIXED, "noflow", "--modalities", "rgb,audio")
    assert rc == 0, err
    assert set(sources_of(tmp_path / "noflow.h5")) == {"rgb", "audio"}


def test_train_and_validation_stores_from_different_flow_sources_are_warned_about(tmp_path, capsys, caplog):
    epic_tree(tmp_path / "tree")
    assert _extract(capsys, tmp_path, MIXED[:2], "train")[0] == 0  # TV-L1 JPEGs
    assert _extract(capsys, tmp_path, MIXED[2:], "val")[0] == 0  # Farneback from the video
    with caplog.at_level(logging.WARNING):
        rc, _, err = cli(capsys, "train", "--config", "epic100_student", "--run-dir", tmp_path / "run", *QUICK,
                         *store_args(tmp_path / "train.h5", tmp_path / "val.h5", "student"))  # fmt: skip
    assert rc == 0, err
    assert "different sources (flow: ['tvl1_jpeg'] in train.h5, ['farneback_video'] in val.h5" in caplog.text
