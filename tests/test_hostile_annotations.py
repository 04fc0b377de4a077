"""Annotation files as users hand them (Excel exports, other encodings, hand edits, other
datasets' files), through the CLI's ``main(argv)``: a named error with rc 2, never a traceback;
a UTF-8 byte-order mark is accepted."""

from __future__ import annotations

import json

import pytest

from tests.hostile import cli
from tests.media_trees import EPIC_HEADER, epic_csv

ROWS = [("P01_01_0", "P01_01", 1, 20, 0, 1), ("P01_01_1", "P01_01", 21, 40, 1, 2)]


def _extract_epic(capsys, tmp_path, ann):
    root = tmp_path / "EPIC"  # no media at all: every error below comes from the annotations
    root.mkdir(exist_ok=True)
    return cli(capsys, "extract", "epic100", "--encoder", "pool",
               "--root", root, "--annotations", ann, "--out", tmp_path / "s.h5",
               "--no-progress")  # fmt: skip


def _csv_bytes(tmp_path, data: bytes):
    path = tmp_path / "ann" / "EPIC_100_train.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


GOOD = EPIC_HEADER + "P01_01_0,P01,P01_01,00:00:00.00,00:00:00.00,00:00:01.00,1,20,x y,x,0,y,1,['y'],[1]\n"


@pytest.mark.parametrize("data,words", [
    (GOOD.encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    (GOOD.replace("x y", "caf\xe9").encode("latin-1"), "is not UTF-8 text"),
    (GOOD.replace("P01_01_0,", "P01_\0,").encode(), "line 2: holds a NUL byte"),
    (EPIC_HEADER.encode() + b"P01_01_0,P01,P01_01\n", "line 2: no value for ['start_frame', 'stop_frame']"),
    (b"id,key\n0,take\n", "missing column(s) ['narration_id'"),
    (GOOD.replace(",1,20,", ",-5,20,").encode(), "start_frame -5 is negative"),
    (GOOD.replace(",1,20,", ",30,20,").encode(), "stop_frame 20 < start_frame 30"),
    ((GOOD + GOOD.split("\n", 1)[1]).encode(), "1 narration_id(s) appear more than once, e.g. ['P01_01_0']"),
    (EPIC_HEADER.encode(), "has a header but no segment"),
    (GOOD.replace("[1]\n", "[1],extra,cells\n").encode(), "line 2: 17 values for 15 columns"),
])  # fmt: skip
def test_bad_epic_annotation_files_are_named_errors(tmp_path, capsys, data, words):
    rc, _, err = _extract_epic(capsys, tmp_path, _csv_bytes(tmp_path, data))
    assert rc == 2 and words in err and "EPIC_100_train.csv" in err and "Traceback" not in err, err
    assert not (tmp_path / "s.h5").exists()


def test_a_utf8_bom_as_excel_saves_is_accepted(tmp_path, capsys):
    ann = _csv_bytes(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())
    from karmma.data.readers.epic import read_annotations

    assert [s.narration_id for s in read_annotations(ann)] == ["P01_01_0"]
    rc, out, err = _extract_epic(capsys, tmp_path, ann)  # gets past the CSV: the one segment has no media
    assert "missing column" not in err and "no readable modality" in err + out


def test_a_class_list_shorter_than_the_task_is_refused(tmp_path, capsys):
    ann = epic_csv(tmp_path / "ann" / "EPIC_100_train.csv", ROWS)
    (ann.parent / "EPIC_100_verb_classes.csv").write_text("id,key,instances,category\n0,take,['take'],x\n")
    rc, _, err = _extract_epic(capsys, tmp_path, ann)
    assert rc == 2 and "EPIC_100_verb_classes.csv: lists 1 classes, the task has 97" in err


def test_a_video_folder_labels_file_is_checked(tmp_path, capsys):
    root = tmp_path / "clips"
    root.mkdir()
    args = ["extract", "video", "--encoder", "pool", "--root", root, "--out", tmp_path / "v.h5", "--no-progress"]
    (root / "labels.csv").write_text("id,label,video\na,wave,a.mp4\na,clap,b.mp4\n")
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "id(s) appear more than once, e.g. ['a']" in err
    (root / "labels.csv").write_text("id,label,video\na,wave,../../etc/passwd\n")
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "points outside the folder" in err and "line 2" in err
    (root / "labels.csv").write_bytes("id,label\nb,caf\xe9\n".encode("latin-1"))
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "is not UTF-8 text" in err and "Traceback" not in err


def _ssv2(tmp_path, labels, items):
    (tmp_path / "videos").mkdir(exist_ok=True)
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "train.json").write_text(json.dumps(items))
    return ["extract", "ssv2", "--encoder", "pool",
            "--root", tmp_path / "videos", "--annotations", tmp_path / "train.json",
            "--labels", tmp_path / "labels.json", "--out", tmp_path / "s.h5", "--no-progress"]  # fmt: skip


LABELS = {"Pushing something": "0", "Pulling something": "1"}
ITEM = {"id": "7", "label": "x", "template": "Pushing [something]", "placeholders": ["x"]}


@pytest.mark.parametrize("labels,items,words", [
    (["Pushing something"], [ITEM], "expected a mapping of template -> class id, got a list"),
    ({"Pushing something": "zero"}, [ITEM], "maps to 'zero', not a class id"),
    ({"a": "0", "b": "0"}, [ITEM], "class id 0 is given to 'a' and 'b'"),
    (LABELS, {"7": ITEM}, "expected a list of videos, got a dict"),
    (LABELS, ["7"], "entry 0 is not a video"),
    (LABELS, [{**ITEM, "template": ["x"]}], "template \"['x']\" is not text"),
    (LABELS, [ITEM, ITEM], "video 7 appears more than once"),
    (LABELS, [], "lists no video"),
])  # fmt: skip
def test_ssv2_json_of_unexpected_shapes_are_named_errors(tmp_path, capsys, labels, items, words):
    rc, _, err = cli(capsys, *_ssv2(tmp_path, labels, items))
    assert rc == 2 and words in err and "Traceback" not in err, err


def test_ssv2_json_nested_too_deeply_is_refused(tmp_path, capsys):
    args = _ssv2(tmp_path, LABELS, [ITEM])
    (tmp_path / "labels.json").write_text("[" * 200_000 + "]" * 200_000)
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "labels.json" in err and ("nested too deeply" in err or "not valid JSON" in err)


def test_ssv2_boxes_of_unexpected_shapes_are_named(tmp_path):
    from karmma.data.readers.ssv2_media import detection_tokens
    from karmma.errors import DataError

    with pytest.raises(DataError, match="not a list of frames"):
        detection_tokens({"name": "x"}, (48, 64))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="labels are not a list of boxes"):
        detection_tokens([{"name": "1/0001.jpg", "labels": "hand"}], (48, 64))
    with pytest.raises(DataError, match="0x48"):
        detection_tokens([{"name": "1/0001.jpg"}], (48, 0))
