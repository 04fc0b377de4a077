"""``karmma extract ssv2``: Something-Something v2 videos with Something-Else boxes.

* ``--root``: the folder of ``<id>.webm`` videos (12 fps; no audio track in SSv2);
* ``--annotations``: ``something-something-v2-{train,validation,test}.json``;
* ``--labels``: ``something-something-v2-labels.json`` (class = labels[template without brackets]);
* ``--boxes``: Something-Else box annotations (Materzynska et al., CVPR 2020) — one JSON file or
  a folder of them (the released ``bounding_box_smthsmth_part*.json``), each
  ``{video_id: [{"name": "<id>/0001.jpg", "labels": [{"box2d": {"x1", "y1", "x2", "y2"},
  "category": ..., "standard_category": "hand" | "0000" | "0001" ...}]}, ...]}``.

Modalities: ``rgb`` and ``flow`` (Farneback on the decoded frames) and ``detections``, the paper's
D: per sampled frame, :data:`HAND_SLOTS` hand and :data:`OBJECT_SLOTS` object slots (object ``k``
is placeholder ``000k``), each (x1, y1, x2, y2) divided by the frame's width/height, a one-hot
category (hand, object) and a valid flag; empty slots are zeros. A video without boxes (or
without a video to size them) has detections absent, with the reason in the summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from karmma.data.clips import FRAME_SIZE, NUM_FRAMES, clip_raw, ssv2_clip
from karmma.data.media.decode import decode_video, video_info
from karmma.data.readers import ssv2
from karmma.data.readers.base import READERS, DatasetReader, Kind, Raw, SampleRef, or_absent
from karmma.errors import DataError

HAND_SLOTS, OBJECT_SLOTS = 2, 2  # paper-unknown default: SSv2 clips show at most two hands and two objects
SLOT_DIM = 7  # x1, y1, x2, y2, is_hand, is_object, valid
DETECTION_DIM = (HAND_SLOTS + OBJECT_SLOTS) * SLOT_DIM


def read_boxes(path: str | Path) -> dict[str, list[dict]]:
    """Something-Else boxes from one JSON file or every ``*.json`` in a folder, by video id."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"{path}: no Something-Else box file (bounding_box_smthsmth_part*.json) found")
    out: dict[str, list[dict]] = {}
    for f in files:
        data = ssv2.load_json(f, "Something-Else box file")
        if not isinstance(data, dict):
            raise DataError(f"{f}: expected {{video_id: [frames]}} (Something-Else boxes)")
        out.update({str(k): v for k, v in data.items()})
    return out


def detection_tokens(frames: list[dict], size: tuple[int, int], n: int = NUM_FRAMES) -> np.ndarray:
    """(n, DETECTION_DIM) float32 from one video's box frames, ``size`` = (height, width)."""
    h, w = size
    if h <= 0 or w <= 0:
        raise DataError(f"the video's frames are {w}x{h}; boxes cannot be scaled to them")
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise DataError("its boxes are not a list of frames ({\"name\": ..., \"labels\": [...]}) as Something-Else "
                        "gives them")  # fmt: skip
    frames = sorted(frames, key=lambda f: str(f.get("name", "")))
    pick = np.linspace(0, len(frames) - 1, n).round().astype(int)
    out = np.zeros((n, HAND_SLOTS + OBJECT_SLOTS, SLOT_DIM), np.float32)
    for row, i in enumerate(pick):
        hands = 0
        labels = frames[i].get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(lab, dict) for lab in labels):
            raise DataError(f"frame {str(frames[i].get('name'))[:60]}: labels are not a list of boxes")
        for lab in labels:
            box, cat = lab.get("box2d") or {}, str(lab.get("standard_category", ""))
            if cat == "hand":
                if hands >= HAND_SLOTS:
                    continue
                slot, onehot, hands = hands, (1.0, 0.0), hands + 1
            elif cat.isdigit() and int(cat) < OBJECT_SLOTS:
                slot, onehot = HAND_SLOTS + int(cat), (0.0, 1.0)
            else:
                continue
            try:
                xy = [float(box["x1"]) / w, float(box["y1"]) / h, float(box["x2"]) / w, float(box["y2"]) / h]
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"frame {frames[i].get('name')}: a box without x1/y1/x2/y2 ({e})") from e
            out[row, slot] = (*np.clip(xy, 0.0, 1.0), *onehot, 1.0)
    return out.reshape(n, DETECTION_DIM)


@READERS.register("ssv2")
class SSv2Reader(DatasetReader):
    modalities = {"rgb": Kind("frames", 3), "flow": Kind("flow", 3), "detections": Kind("signal", DETECTION_DIM)}
    default_modalities = ("rgb", "flow", "detections")
    options = ("annotations", "labels", "boxes")
    on_error = "absent"
    source_names = {"rgb": "video", "flow": "farneback_video", "detections": "something_else_boxes"}
    contract = {
        "time": "a clip is its whole .webm (12 fps)",
        "frames": f"{2 * NUM_FRAMES} frames evenly over the clip ({NUM_FRAMES} for rgb), "
                  f"{FRAME_SIZE[0]}x{FRAME_SIZE[1]}",
        "audio": "none (SSv2 has no audio)",
        "lengths": "a video without boxes has detections absent; black, frozen or undecodable frames are absent "
                   "for the tokens they cover",
        "flow": "Farneback flow between consecutive decoded frames",
    }  # fmt: skip

    def __init__(self, annotations=None, labels=None, boxes=None) -> None:
        if annotations is None or labels is None:
            raise DataError("ssv2 needs --annotations something-something-v2-train.json and --labels "
                            "something-something-v2-labels.json (and --boxes for detections)")  # fmt: skip
        self.annotations, self.labels_path = Path(annotations), Path(labels)
        self.boxes_path = Path(boxes) if boxes else None
        self.extra = {"dataset": "ssv2", "annotations": self.annotations.name}

    def samples(self, root: Path, split: str) -> list[SampleRef]:
        if split != "all":
            raise DataError("ssv2 takes its split from --annotations; leave --split at all")
        self.root = root
        self.classes = ssv2.read_labels(self.labels_path, expect=None)
        videos = ssv2.read_annotations(self.annotations, self.classes)
        self.labelled = all(v.label is not None for v in videos)
        self.extra = {**self.extra, "labelled": self.labelled}
        self.boxes = read_boxes(self.boxes_path) if self.boxes_path else {}
        return [SampleRef(v.id, {"action": -1 if v.label is None else v.label}, None, v) for v in videos]

    def tasks(self, refs: list[SampleRef]) -> tuple[dict[str, int], dict[str, list[str]]]:
        return {"action": len(self.classes)}, {"action": self.classes}

    @classmethod
    def read_clip(cls, path: Path, modalities: tuple[str, ...]) -> Raw:
        return ssv2_clip(path, modalities)

    def load(self, ref: SampleRef, modalities: tuple[str, ...], on_error: str) -> Raw:
        path = self.root / f"{ref.id}.webm"
        raw, what = Raw(), f"video {ref.id}"
        decoded = None
        if not path.is_file():
            raw.absent.update({m: "no video file" for m in modalities})
        elif "rgb" in modalities or "flow" in modalities:
            tmp = Raw()
            decoded = or_absent(lambda: decode_video(path, FRAME_SIZE, 2 * NUM_FRAMES), on_error, what, tmp, "video")
            raw.absent.update({m: tmp.absent["video"] for m in ("rgb", "flow") if "video" in tmp.absent})
        if decoded is not None:  # failed frames in valid (karmma.data.media.failures), the video's length
            video = clip_raw(decoded.frames, None, tuple(m for m in modalities if m != "detections"),
                             decoded.undecodable)  # fmt: skip
            raw.update(video)
            raw.valid.update(video.valid)
            raw.duration = decoded.duration
        if "detections" in modalities and path.is_file():
            if ref.id not in self.boxes:
                raw.absent["detections"] = "no boxes for this video" if self.boxes_path else "no --boxes given"
            else:
                det = or_absent(lambda: detection_tokens(self.boxes[ref.id], video_info(path)[1]), on_error,
                                f"the boxes of {what}", raw, "detections")  # fmt: skip
                if det is not None:
                    raw["detections"] = det
        return raw
