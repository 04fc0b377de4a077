"""EPIC-KITCHENS-100 (Damen et al., IJCV 2022; annotations CC BY-NC 4.0): the official annotation
CSVs, verb/noun/action classes, the official metrics and the challenge submission JSON.

Action scores follow the official evaluation: the product of verb and noun softmax
probabilities over the top-``n`` verbs and nouns (n = 100), so action top-k is computed over
(verb, noun) pairs. Subsets: ``tail`` (instances whose verb — for verbs —, noun — for nouns —,
or either — for actions — is in the tail class lists) and ``unseen`` participants.
"""

from __future__ import annotations

import ast
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from karmma.data.csv_files import read_rows
from karmma.errors import DataError
from karmma.metrics import topk_hits

NUM_VERBS = 97
NUM_NOUNS = 300
TASKS = {"verb": NUM_VERBS, "noun": NUM_NOUNS}  # the tasks of an EPIC store; actions are scored from both


@dataclass
class Segment:
    narration_id: str
    participant_id: str
    video_id: str
    start_frame: int
    stop_frame: int
    verb_class: int | None
    noun_class: int | None
    narration: str = ""
    start_s: float | None = None  # start_timestamp / stop_timestamp in seconds, when the CSV has them
    stop_s: float | None = None


def _rows(path: str | Path, required: list[str], id_column: str | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; get it from https://github.com/epic-kitchens/epic-kitchens-100-annotations"
        )
    return read_rows(path, required, "EPIC-KITCHENS-100 annotation CSV", id_column)


def read_classes(path: str | Path, expect: int | None = None) -> list[str]:
    """``EPIC_100_{verb,noun}_classes.csv`` -> class keys indexed by id (``expect``: how many the
    task has; a list of another length is refused)."""
    rows = _rows(path, ["id", "key"], id_column="id")
    keys = {}
    for i, r in enumerate(rows, start=2):
        try:
            keys[int(r["id"])] = r["key"]
        except ValueError as e:
            raise DataError(f"{path}, line {i}: id {r['id']!r} is not an integer") from e
    if sorted(keys) != list(range(len(keys))):
        raise DataError(f"{path}: class ids are not 0..{len(keys) - 1}")
    if expect is not None and len(keys) != expect:
        raise DataError(f"{path}: lists {len(keys)} classes, the task has {expect}; use the file of the "
                        "EPIC-KITCHENS-100 release (or remove it: the ids then name the classes)")  # fmt: skip
    return [keys[i] for i in range(len(keys))]


def read_class_instances(path: str | Path) -> dict[str, int]:
    """Every instance word of ``EPIC_100_*_classes.csv`` mapped to its class id."""
    out = {}
    for i, r in enumerate(_rows(path, ["id", "key", "instances"]), start=2):
        try:
            words = ast.literal_eval(r["instances"])
            cid = int(r["id"])
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise DataError(f"{path}, line {i}: instances {r['instances'][:60]!r} is not a list of words") from e
        if not isinstance(words, (list, tuple)):
            raise DataError(f"{path}, line {i}: instances {r['instances'][:60]!r} is not a list of words")
        for word in words:
            out[str(word)] = cid
    return out


def read_annotations(path: str | Path, num_verbs: int = NUM_VERBS, num_nouns: int = NUM_NOUNS) -> list[Segment]:
    """Train/validation CSV (with labels) or test timestamps CSV (without). Every narration id is
    distinct; frame numbers are 0 or more, ``stop_frame`` not before ``start_frame``."""
    rows = _rows(path, ["narration_id", "participant_id", "video_id", "start_frame", "stop_frame"], "narration_id")
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            verb = int(r["verb_class"]) if r.get("verb_class") not in (None, "") else None
            noun = int(r["noun_class"]) if r.get("noun_class") not in (None, "") else None
            seg = Segment(r["narration_id"], r["participant_id"], r["video_id"], int(r["start_frame"]),
                          int(r["stop_frame"]), verb, noun, r.get("narration", "") or "")  # fmt: skip
            seg.start_s, seg.stop_s = _stamp(r.get("start_timestamp")), _stamp(r.get("stop_timestamp"))
        except ValueError as e:
            raise DataError(f"{path}, line {i} ({r.get('narration_id')}): {e}") from e
        if verb is not None and not 0 <= verb < num_verbs:
            raise DataError(f"{path}, line {i} ({seg.narration_id}): unknown verb class {verb} (0..{num_verbs - 1})")
        if noun is not None and not 0 <= noun < num_nouns:
            raise DataError(f"{path}, line {i} ({seg.narration_id}): unknown noun class {noun} (0..{num_nouns - 1})")
        if seg.start_frame < 0:
            raise DataError(f"{path}, line {i} ({seg.narration_id}): start_frame {seg.start_frame} is negative")
        if seg.stop_frame < seg.start_frame:
            raise DataError(f"{path}, line {i} ({seg.narration_id}): stop_frame {seg.stop_frame} < start_frame "
                            f"{seg.start_frame}")  # fmt: skip
        out.append(seg)
    if not out:
        raise DataError(f"{path}: has a header but no segment")
    return out


def _stamp(text: str | None) -> float | None:
    """A timestamp in seconds, or None (absent or unreadable: only time-indexed features need it,
    and their import says so)."""
    from karmma.data.timeline_import import seconds

    try:
        return seconds(text) if text else None
    except ValueError:
        return None


def segment_labels(segments: list[Segment]) -> tuple[dict[str, list[int]], bool]:
    """({"verb": [...], "noun": [...]}, labelled): the segments' classes, or -1 for every segment of
    an unlabelled file (the test timestamps)."""
    labelled = all(s.verb_class is not None and s.noun_class is not None for s in segments)
    return {t: [getattr(s, f"{t}_class") if labelled else -1 for s in segments] for t in TASKS}, labelled


def class_files_beside(annotations: Path) -> list[Path]:
    """``EPIC_100_{verb,noun}_classes.csv`` in the annotation file's folder (those that exist)."""
    return [p for t in TASKS if (p := Path(annotations).parent / f"EPIC_100_{t}_classes.csv").is_file()]


@functools.lru_cache(maxsize=1)
def class_names_beside(annotations: Path) -> dict[str, list[str]]:
    """Verb and noun class keys from ``EPIC_100_{verb,noun}_classes.csv`` in the annotation file's
    folder, or the class ids as names where a file is not there."""
    out = {}
    for task, n in TASKS.items():
        path = Path(annotations).parent / f"EPIC_100_{task}_classes.csv"
        out[task] = read_classes(path, n) if path.is_file() else [str(i) for i in range(n)]
    return out


def read_id_list(path: str | Path, column: str) -> set:
    """``EPIC_100_tail_{verbs,nouns}.csv`` (ints) or the unseen participants CSV (strings)."""
    vals = [r[column] for r in _rows(path, [column])]
    if column not in ("verb", "noun"):
        return set(vals)
    try:
        return {int(v) for v in vals}
    except ValueError as e:
        raise DataError(f"{path}: a {column} class id that is not an integer ({e})") from e


def action_classes(segments: list[Segment]) -> dict[tuple[int, int], int]:
    """The (verb, noun) pairs of the training segments, numbered in sorted order."""
    pairs = sorted(
        {(s.verb_class, s.noun_class) for s in segments if s.verb_class is not None and s.noun_class is not None}
    )
    return {p: i for i, p in enumerate(pairs)}


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def action_scores(verb_scores: np.ndarray, noun_scores: np.ndarray, top_n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the ``top_n**2`` best (verb, noun) pairs by p(verb) * p(noun): returns
    ``pairs`` (B, K, 2) and ``scores`` (B, K), best first."""
    pv, pn = softmax(verb_scores), softmax(noun_scores)
    nv, nn_ = min(top_n, pv.shape[1]), min(top_n, pn.shape[1])
    tv = np.argsort(-pv, 1)[:, :nv]
    tn = np.argsort(-pn, 1)[:, :nn_]
    prod = np.take_along_axis(pv, tv, 1)[:, :, None] * np.take_along_axis(pn, tn, 1)[:, None, :]
    flat = prod.reshape(len(pv), -1)
    order = np.argsort(-flat, 1)
    pairs = np.stack([np.take_along_axis(tv, order // nn_, 1), np.take_along_axis(tn, order % nn_, 1)], -1)
    return pairs, np.take_along_axis(flat, order, 1)


def epic_metrics(
    verb_scores: np.ndarray,
    noun_scores: np.ndarray,
    segments: list[Segment],
    tail_verbs: set[int] | None = None,
    tail_nouns: set[int] | None = None,
    unseen_participants: set[str] | None = None,
    ks: tuple[int, ...] = (1, 5),
) -> dict[str, dict[str, float]]:
    """``{"overall"|"tail"|"unseen": {"verb_top1", ..., "action_top5"}}`` in percent, and each
    group's instance counts ``verb_n``, ``noun_n``, ``action_n`` (they differ only for ``tail``: a
    verb's tail instances are those of a tail verb, a noun's those of a tail noun, an action's either)."""
    if len(segments) != len(verb_scores) or len(segments) != len(noun_scores):
        raise DataError(f"{len(segments)} segments but {len(verb_scores)} verb / {len(noun_scores)} noun score rows")
    v = np.array([s.verb_class for s in segments])
    n = np.array([s.noun_class for s in segments])
    pairs, _ = action_scores(verb_scores, noun_scores)
    correct = {}
    for k in ks:
        correct[f"verb_top{k}"] = topk_hits(verb_scores, v, k)
        correct[f"noun_top{k}"] = topk_hits(noun_scores, n, k)
        correct[f"action_top{k}"] = (action_id(pairs[:, :k, 0], pairs[:, :k, 1]) == action_id(v, n)[:, None]).any(1)
    groups = {"overall": np.ones(len(v), bool)}
    if unseen_participants is not None:
        groups["unseen"] = np.array([s.participant_id in unseen_participants for s in segments])
    out: dict[str, dict[str, float]] = {}
    for g, rows in groups.items():
        out[g] = {key: float(100 * c[rows].mean()) if rows.any() else float("nan") for key, c in correct.items()}
        out[g].update({f"{t}_n": int(rows.sum()) for t in ("verb", "noun", "action")})
    if tail_verbs is not None and tail_nouns is not None:
        tv = np.isin(v, list(tail_verbs))
        tn = np.isin(n, list(tail_nouns))
        out["tail"] = {}
        for key, c in correct.items():
            rows = tv if key.startswith("verb") else tn if key.startswith("noun") else (tv | tn)
            out["tail"][key] = float(100 * c[rows].mean()) if rows.any() else float("nan")
        out["tail"].update(verb_n=int(tv.sum()), noun_n=int(tn.sum()), action_n=int((tv | tn).sum()))
    return out


def submission_json(
    narration_ids: list[str],
    verb_scores: np.ndarray,
    noun_scores: np.ndarray,
    sls_pt: int = 0,
    sls_tl: int = 0,
    sls_td: int = 0,
) -> dict:
    """The action-recognition challenge submission (format version 0.2, as the official
    ``make_action_recognition_submission`` writes it): per narration id, every verb and noun score;
    the server scores actions from them. ``sls_*``: the supervision levels (0-5) you declare."""
    if not (len(narration_ids) == len(verb_scores) == len(noun_scores)):
        raise DataError(f"{len(narration_ids)} narration ids, {len(verb_scores)} verb / {len(noun_scores)} noun rows")
    for name, level in (("sls_pt", sls_pt), ("sls_tl", sls_tl), ("sls_td", sls_td)):
        if not 0 <= level <= 5:
            raise DataError(f"{name}={level}: supervision levels are 0..5 (see the challenge's guidelines)")
    results = {}
    for i, nid in enumerate(narration_ids):
        results[str(nid)] = {
            "verb": {str(j): float(x) for j, x in enumerate(verb_scores[i])},
            "noun": {str(j): float(x) for j, x in enumerate(noun_scores[i])},
        }
    return {
        "version": "0.2",
        "challenge": "action_recognition",
        "sls_pt": sls_pt,
        "sls_tl": sls_tl,
        "sls_td": sls_td,
        "results": results,
    }


def write_submission(path: str | Path, submission: dict) -> Path:
    """``.zip``: the archive the challenge server takes (``test.json`` inside); else plain JSON.
    Written whole or not at all (:func:`karmma.outputs.write_bytes_atomic`)."""
    import io
    import zipfile

    from karmma.outputs import write_bytes_atomic

    path = Path(path)
    data = json.dumps(submission).encode("utf-8")
    if path.suffix == ".zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("test.json", data)
        data = buf.getvalue()
    return write_bytes_atomic(path, data)


def action_id(verb, noun):
    """The official evaluation's action id: verb * 1000 + noun."""
    return np.asarray(verb) * 1000 + np.asarray(noun)
