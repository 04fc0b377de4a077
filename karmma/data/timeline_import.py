"""Per-video, time-indexed feature arrays (the community's most used EPIC-100 features) -> each
annotated segment's tokens, by its start/stop timestamps (``karmma import-features --format ...``).

Row ``i`` of a video's ``(T, D)`` array (``(T, A, D)``: ``A`` augmented views, the first is read)
is the feature of the window ``[i * stride, i * stride + window)`` seconds. A segment
``[start, stop)`` (the annotation's ``start_timestamp`` / ``stop_timestamp``: seconds, so EPIC's
frame numbers at 60 or 50 fps never meet the features' 30 fps) takes the rows whose window centre
lies inside it, or the row nearest its middle when none does; :func:`~karmma.data.feature_import.as_tokens`
then samples them evenly to the token count (``--tokens``, default 8). Named layouts:

=============== ============================== ================== ==================================
``--format``    files                          stride / window    published as
=============== ============================== ================== ==================================
``actionformer`` ``<video_id>.npz``, ``feats``  16 / 32 frames     ActionFormer / OpenTAD EPIC-100
                (T, 2304)                      at 30 fps          SlowFast features
``tim``         ``<video_id>.npy`` (T, A, D)   0.2 s / 1 s        TIM (Chalk et al., CVPR 2024)
``ego4d``       ``<video_id>.npy`` (T, D)      16 / 32 frames     Ego4D-style SlowFast / Omnivore
                                               at 30 fps          (converted from ``.pt``)
``timeline``    ``.npy`` or ``.npz``           ``--stride``,      anything else
                                               ``--window`` at
                                               ``--fps``
=============== ============================== ================== ==================================

A folder of files is one modality (``--modality``, default ``rgb``); a folder of folders holds
one modality per sub-folder (e.g. ``visual/`` and ``audio/``). A ``.pt`` file is refused (a
pickle), with the one line that converts it. Two kinds of mistakes are told apart: **a split
problem** (none of the annotated videos has a file: the features of another split) and **a
layout problem** (a video's features end long before its segments or its duration in
``EPIC_100_video_info.csv``: another stride or fps than the layout says).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from karmma.data.safe_files import npy_info, npz_info, read_npy, read_npz
from karmma.errors import DataError

TIMELINE_FORMATS = ("actionformer", "tim", "ego4d", "timeline")
DEFAULT_TOKENS = 8
SLACK_S = 2.0  # how far past a video's features a segment may start before the layout is doubted


@dataclass(frozen=True)
class Layout:
    name: str
    stride_s: float
    window_s: float
    member: str | None = None  # the .npz member holding the array (None: the only one / .npy)


def layout(fmt: str, stride: float | None = None, window: float | None = None, fps: float | None = None) -> Layout:
    """The named layout, or ``timeline``'s from ``--stride`` and ``--window`` (frames at ``--fps``;
    seconds without ``--fps``)."""
    named = {"actionformer": Layout("actionformer", 16 / 30, 32 / 30, "feats"),
             "tim": Layout("tim", 0.2, 1.0), "ego4d": Layout("ego4d", 16 / 30, 32 / 30)}  # fmt: skip
    if fmt in named:
        if stride or window or fps:
            raise DataError(f"--format {fmt} has its published stride and window; use --format timeline "
                            "with --stride --window --fps for features extracted otherwise")  # fmt: skip
        return named[fmt]
    if fmt != "timeline" or not stride or not window:
        raise DataError("--format timeline needs --stride and --window (frames at --fps, or seconds without it)")
    unit = 1.0 / fps if fps else 1.0
    return Layout("timeline", stride * unit, window * unit)


def seconds(stamp: str) -> float:
    """``HH:MM:SS.ff`` (EPIC's timestamps), or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*", stamp or "")
    if not m:
        if re.fullmatch(r"\s*\d+(\.\d+)?\s*", stamp or ""):
            return float(stamp)
        raise ValueError(f"{stamp!r} is not a HH:MM:SS.ff timestamp")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def rows_for(start: float, stop: float, count: int, lay: Layout) -> tuple[int, int]:
    """[lo, hi) rows whose window centre lies in [start, stop), else the row nearest the middle."""
    centres = np.arange(count) * lay.stride_s + lay.window_s / 2
    inside = np.flatnonzero((centres >= start) & (centres < stop))
    if len(inside):
        return int(inside[0]), int(inside[-1]) + 1
    i = int(np.clip(np.argmin(np.abs(centres - (start + stop) / 2)), 0, count - 1))
    return i, i + 1


class Timeline:
    """The ``_Source`` interface of :mod:`karmma.data.feature_import` over per-video arrays:
    ``names[modality][narration_id]`` for every segment whose video has a file."""

    def __init__(self, path: Path, segments: list, lay: Layout, modality: str = "rgb",
                 durations: dict[str, float] | None = None) -> None:  # fmt: skip
        self.path, self.layout = path, lay
        self.names: dict[str, dict[str, tuple]] = {}
        self._cache: tuple[Path, np.ndarray] | None = None
        if not path.is_dir():
            raise DataError(f"{path}: --format {lay.name} reads a folder of per-video files (<video_id>.npy/.npz)")
        folders = {modality: path} if _files(path) else {d.name: d for d in sorted(path.iterdir()) if d.is_dir()}
        videos = {m: _files(d) for m, d in folders.items()}
        if not any(videos.values()):
            raise DataError(f"{path}: no per-video .npy or .npz files (here or in sub-folders, one per modality)")
        wanted = sorted({s.video_id for s in segments})
        if not any(v in files for files in videos.values() for v in wanted):
            found = sorted({v for files in videos.values() for v in files})
            raise DataError(
                f"{path}: none of the {len(wanted)} videos of the annotations (e.g. {', '.join(wanted[:3])}) has a "
                f"feature file here (found {len(found)}, e.g. {', '.join(found[:3])}): are these the features of "
                "that split? (a split problem, not a layout one)"
            )
        for m, files in videos.items():
            self.names[m] = {}
            by_video: dict[str, list] = {}
            for s in segments:
                if s.video_id in files:
                    by_video.setdefault(s.video_id, []).append(s)
            for vid, segs in by_video.items():
                count, dim = self._header(files[vid])
                _check_layout(files[vid], count, lay, max(_times(s)[0] for s in segs), (durations or {}).get(vid))
                for s in segs:
                    lo, hi = rows_for(*_times(s), count, lay)
                    self.names[m][s.narration_id] = (files[vid], lo, hi, dim)

    def _header(self, p: Path) -> tuple[int, int]:
        if p.suffix == ".npz":
            members = npz_info(p)
            name = self.layout.member if self.layout.member in members else next(iter(members), None)
            if name is None or (self.layout.member and self.layout.member not in members and len(members) > 1):
                raise DataError(f"{p}: no {self.layout.member!r} array (members: {sorted(members)[:5]})")
            shape = members[name][0]
        else:
            shape = npy_info(p)[0]
        if len(shape) not in (2, 3) or not all(shape):
            raise DataError(f"{p}: shape {shape}; a video's features are (T, D) or (T, views, D)")
        return shape[0], shape[-1]

    def shape(self, m: str, nid: str) -> tuple[int, ...]:
        _, lo, hi, dim = self.names[m][nid]
        return (hi - lo, dim)

    def read(self, m: str, nid: str) -> np.ndarray:
        p, lo, hi, _ = self.names[m][nid]
        if self._cache is None or self._cache[0] != p:  # one video in memory: segments come video by video
            if p.suffix == ".npz":
                members = read_npz(p)
                x = members.get(self.layout.member or "", next(iter(members.values())))
            else:
                x = read_npy(p)
            self._cache = (p, x[:, 0] if x.ndim == 3 else x)
        return self._cache[1][lo:hi]

    def close(self) -> None:
        self._cache = None

    def __enter__(self) -> Timeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_layout(p: Path, count: int, lay: Layout, reach: float, length: float | None) -> None:
    """A video's features must span its segments (and its duration, when known): else the stride is wrong."""
    span = count * lay.stride_s + lay.window_s - lay.stride_s
    off = reach > span + SLACK_S or (length is not None and abs(length - span) > max(SLACK_S, 0.05 * length))
    if off:
        against = f"the video lasts {length:.0f} s" if length is not None else f"its segments reach {reach:.0f} s"
        raise DataError(
            f"{p}: {count} rows at a stride of {lay.stride_s:.3f} s cover 0-{span:.0f} s, but {against}: these "
            f"features were not extracted with the {lay.name} layout's stride (a layout problem, not a split "
            "one) — give their stride, window and fps with --format timeline --stride S --window W --fps F"
        )


def _files(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.suffix == ".pt":
            raise DataError(
                f"{p}: a PyTorch .pt file is a pickle, which karmma never loads; convert it once where you trust "
                f"it: python -c \"import torch, numpy; numpy.save('{p.with_suffix('.npy')}', "
                f"torch.load('{p}', weights_only=True).numpy())\""
            )
        if p.is_file() and p.suffix in (".npy", ".npz"):
            out[p.stem] = p
    return out


def _times(s) -> tuple[float, float]:
    if s.start_s is None or s.stop_s is None:
        raise DataError(f"segment {s.narration_id}: the annotations have no start_timestamp/stop_timestamp, which "
                        "time-indexed features need (every EPIC-100 CSV has them)")  # fmt: skip
    return s.start_s, max(s.stop_s, s.start_s)


def video_durations(annotations: Path) -> dict[str, float]:
    """``EPIC_100_video_info.csv`` beside the annotations: each video's seconds (empty when absent)."""
    from karmma.data.csv_files import read_rows

    path = Path(annotations).parent / "EPIC_100_video_info.csv"
    if not path.is_file():
        return {}
    out = {}
    for r in read_rows(path, ["video_id", "duration"], "EPIC-KITCHENS-100 video info CSV", "video_id"):
        try:
            out[r["video_id"]] = float(r["duration"])
        except ValueError:
            continue
    return out
