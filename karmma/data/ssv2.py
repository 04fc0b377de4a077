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


def _load_json(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; download the Something-Something v2 label files")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def read_labels(path: str | Path, expect: int | None = NUM_CLASSES) -> list[str]:
    """Class templates indexed by class id."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of template -> class id")
    classes = {int(v): k for k, v in data.items()}
    if sorted(classes) != list(range(len(classes))):
        raise DataError(f"{path}: class ids are not 0..{len(classes) - 1}")
    if expect is not None and len(classes) != expect:
        raise DataError(f"{path}: {len(classes)} classes, Something-Something v2 has {expect}")
    return [classes[i] for i in range(len(classes))]


def read_annotations(path: str | Path, classes: list[str]) -> list[Video]:
    """Train/validation lists (with templates) or the test list (ids only)."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of videos")
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for i, item in enumerate(data):
        if "id" not in item:
            raise DataError(f"{path}: entry {i} has no id")
        template = item.get("template")
        label = None
        if template is not None:
            key = template.replace("[", "").replace("]", "")
            if key not in index:
                raise DataError(
                    f"{path}: video {item['id']}: unknown template {template!r}; is the labels file the matching one?"
                )
            label = index[key]
        out.append(Video(str(item["id"]), label, template or ""))
    return out


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    return {f"top{k}": float(100 * topk_hits(scores, labels, k).mean()) for k in ks}
