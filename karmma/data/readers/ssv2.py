"""Something-Something v2 (Goyal et al., ICCV 2017): the label and annotation JSON files, 174
template classes, top-1/top-5. The paper's modalities there are RGB, flow and object detections.

``something-something-v2-labels.json`` maps a template with ``[something]`` placeholders removed
of brackets ("Putting something on a surface") to a class id string; annotation files are lists
of ``{"id", "label", "template", "placeholders"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from karmma.errors import DataError
from karmma.metrics import topk_hits

NUM_CLASSES = 174


@dataclass
class Video:
    id: str
    label: int | None
    template: str


def load_json(path: str | Path, what: str = "Something-Something v2 label file"):
    """A user's JSON file: bounded in size, UTF-8, any nesting error named (never a traceback)."""
    from karmma.data.csv_files import read_text

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; download the {what}")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise DataError(f"{path}: nested too deeply to be a {what}") from e


def read_labels(path: str | Path, expect: int | None = NUM_CLASSES) -> list[str]:
    """Class templates indexed by class id."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of template -> class id, got a {type(data).__name__}")
    classes: dict[int, str] = {}
    for k, v in data.items():
        try:
            cid = int(v)
        except (TypeError, ValueError):
            raise DataError(f"{path}: template {k!r} maps to {str(v)[:40]!r}, not a class id") from None
        if cid in classes:
            raise DataError(f"{path}: class id {cid} is given to {classes[cid]!r} and {k!r}")
        classes[cid] = k
    if sorted(classes) != list(range(len(classes))):
        raise DataError(f"{path}: class ids are not 0..{len(classes) - 1}")
    if expect is not None and len(classes) != expect:
        raise DataError(f"{path}: {len(classes)} classes, Something-Something v2 has {expect}")
    return [classes[i] for i in range(len(classes))]


def read_annotations(path: str | Path, classes: list[str]) -> list[Video]:
    """Train/validation lists (with templates) or the test list (ids only); ids are distinct."""
    data = load_json(path, "Something-Something v2 annotation file")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of videos, got a {type(data).__name__}")
    index = {c: i for i, c in enumerate(classes)}
    out, seen = [], set()
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("id"), (str, int)) or item.get("id") == "":
            raise DataError(f'{path}: entry {i} is not a video (an object with an "id" and a "template")')
        vid = str(item["id"])
        if vid in seen:
            raise DataError(f"{path}: video {vid} appears more than once (entry {i}); remove the duplicate")
        seen.add(vid)
        template = item.get("template")
        if template is not None and not isinstance(template, str):
            raise DataError(f"{path}: video {vid}: template {str(template)[:40]!r} is not text")
        label = None
        if template is not None:
            key = template.replace("[", "").replace("]", "")
            if key not in index:
                raise DataError(
                    f"{path}: video {vid}: unknown template {template!r}; is the labels file the matching one?"
                )
            label = index[key]
        out.append(Video(vid, label, template or ""))
    if not out:
        raise DataError(f"{path}: lists no video")
    return out


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    return {f"top{k}": float(100 * topk_hits(scores, labels, k).mean()) for k in ks}
