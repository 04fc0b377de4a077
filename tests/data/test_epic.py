import json

import numpy as np
import pytest

from karmma.data.readers import epic, ssv2
from karmma.errors import DataError

HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
    "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
)


def _csv(tmp_path, rows):
    p = tmp_path / "ann.csv"
    p.write_text(
        HEADER + "".join(f"{r},P0{r[-1]},P01_01,0,0,0,1,10,take x,take,{v},x,{n},['x'],[{n}]\n" for r, v, n in rows)
    )
    return p


def test_read_annotations_and_actions(tmp_path):
    segs = epic.read_annotations(_csv(tmp_path, [("P01_01_0", 0, 2), ("P01_01_1", 1, 3), ("P01_01_2", 0, 2)]))
    assert [s.verb_class for s in segs] == [0, 1, 0]
    assert epic.action_classes(segs) == {(0, 2): 0, (1, 3): 1}


def test_unknown_class_names_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"ann\.csv, line 3.*unknown noun class 300"):
        epic.read_annotations(_csv(tmp_path, [("a_0", 0, 2), ("a_1", 1, 300)]))


def test_missing_columns(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing column"):
        epic.read_annotations(p)


def test_action_scores_and_metrics(tmp_path):
    segs = epic.read_annotations(_csv(tmp_path, [("P01_01_0", 0, 2), ("P01_01_1", 1, 3)]))
    verb = np.full((2, 97), -10.0)
    noun = np.full((2, 300), -10.0)
    verb[0, 0], noun[0, 2] = 5, 5  # sample 0 fully right
    verb[1, 1], noun[1, 4], noun[1, 3] = 5, 5, 4  # sample 1: noun second
    pairs, scores = epic.action_scores(verb, noun)
    assert tuple(pairs[0, 0]) == (0, 2) and np.all(np.diff(scores, axis=1) <= 1e-12)
    m = epic.epic_metrics(verb, noun, segs, tail_verbs={1}, tail_nouns={99}, unseen_participants={"P01"})
    assert m["overall"]["verb_top1"] == 100.0
    assert m["overall"]["noun_top1"] == 50.0 and m["overall"]["noun_top5"] == 100.0
    assert m["overall"]["action_top1"] == 50.0 and m["overall"]["action_top5"] == 100.0
    assert m["tail"]["verb_top1"] == 100.0 and np.isnan(m["tail"]["noun_top1"])
    assert m["unseen"]["verb_top1"] == 100.0  # P01 is the participant of sample 1 only ('..._1')
    # instance counts per group: the tail's differ per task (one tail verb instance, no tail noun)
    assert (m["overall"]["verb_n"], m["unseen"]["noun_n"]) == (2, 1)
    assert (m["tail"]["verb_n"], m["tail"]["noun_n"], m["tail"]["action_n"]) == (1, 0, 1)
    from karmma.evaluation.epic_eval import format_epic

    table = format_epic({"student": m})
    assert "| student | overall | 2 |" in table and "| student | tail | 1/0/1 |" in table


def test_submission_json(tmp_path):
    verb, noun = np.random.default_rng(0).normal(size=(2, 97)), np.random.default_rng(1).normal(size=(2, 300))
    sub = epic.submission_json(["a", "b"], verb, noun, sls_pt=1, sls_tl=2, sls_td=3)
    assert sub["version"] == "0.2" and sub["challenge"] == "action_recognition"
    assert (sub["sls_pt"], sub["sls_tl"], sub["sls_td"]) == (1, 2, 3)
    assert set(sub["results"]["a"]) == {"verb", "noun"}  # the official format: the server scores actions
    assert len(sub["results"]["a"]["verb"]) == 97 and len(sub["results"]["a"]["noun"]) == 300
    assert sub["results"]["b"]["noun"]["7"] == pytest.approx(noun[1, 7])
    assert json.loads(epic.write_submission(tmp_path / "s.json", sub).read_text()) == sub
    import zipfile

    with zipfile.ZipFile(epic.write_submission(tmp_path / "s.zip", sub)) as z:
        assert z.namelist() == ["test.json"] and json.loads(z.read("test.json")) == sub
    with pytest.raises(DataError, match="sls_tl=7"):
        epic.submission_json(["a", "b"], verb, noun, sls_tl=7)
    assert epic.action_id(3, 12) == 3012  # as the official evaluation numbers actions


def test_shipped_epic_annotations_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "epic100"
    if not root.is_dir():
        pytest.skip("shared EPIC annotations not present")
    verbs = epic.read_classes(root / "EPIC_100_verb_classes.csv")
    nouns = epic.read_classes(root / "EPIC_100_noun_classes.csv")
    assert len(verbs) == 97 and len(nouns) == 300
    val = epic.read_annotations(root / "EPIC_100_validation.csv")
    assert len(val) == 9668
    assert epic.read_id_list(root / "EPIC_100_unseen_participant_ids_validation.csv", "participant_id")
    assert 10 in epic.read_id_list(root / "EPIC_100_tail_verbs.csv", "verb")


def test_ssv2_formats(tmp_path):
    labels = {f"Doing thing {i} to something": str(i) for i in range(174)}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    classes = ssv2.read_labels(tmp_path / "labels.json")
    assert len(classes) == 174
    ann = [{"id": "1", "label": "x", "template": "Doing thing 3 to [something]", "placeholders": ["x"]}, {"id": "2"}]
    (tmp_path / "train.json").write_text(json.dumps(ann))
    vids = ssv2.read_annotations(tmp_path / "train.json", classes)
    assert vids[0].label == 3 and vids[1].label is None
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "9", "template": "Nope [something]"}]))
    with pytest.raises(DataError, match="unknown template"):
        ssv2.read_annotations(tmp_path / "bad.json", classes)
    scores = np.eye(174)[:3]
    assert ssv2.topk_accuracy(scores, np.array([0, 1, 5])) == pytest.approx({"top1": 200 / 3, "top5": 200 / 3})
    (tmp_path / "few.json").write_text(json.dumps({"a": "0"}))
    with pytest.raises(DataError, match="174"):
        ssv2.read_labels(tmp_path / "few.json")
