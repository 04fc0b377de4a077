"""Tiny media trees the tests build themselves: clips written by PyAV (H.264 + AAC in MP4, VP8 in
WebM), EPIC-KITCHENS-100 and Something-Something v2 layouts, annotation files."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np

EPIC_HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
    "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
)
TEST_HEADER = "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,start_frame,stop_frame\n"


def level(k: int) -> int:
    """The grey level of decoded frame ``k`` (0-based) in :func:`clip_frames`: big steps survive H.264."""
    return (k * 40) % 240 + 8


def clip_frames(n: int, size=(48, 64), kind: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: frame k is grey ``level(k)`` with a square moving by ``kind``'s direction."""
    h, w = size
    out = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        out[k] = level(k)
        x = (3 * k * (1 if kind % 2 == 0 else -1)) % (w - 12)
        y = (2 * k * (1 if kind < 2 else -1)) % (h - 12)
        out[k, y : y + 12, x : x + 12] = (250, 30 + 60 * kind, 30)
    return out


def write_clip(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None, rate: int = 24_000,
               vcodec: str = "libx264", acodec: str = "aac") -> Path:  # fmt: skip
    """Write ``frames`` (T, H, W, 3) uint8 at ``fps`` and, if given, mono ``audio`` (float32)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        v = c.add_stream(vcodec, rate=fps)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        a = None
        if audio is not None:
            a = c.add_stream(acodec, rate=rate)
            a.layout = "mono"
        for f in frames:
            for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            mux_audio(c, a, (audio[i : i + 1024].astype(np.float32) for i in range(0, len(audio), 1024)), rate)
    return path


def mux_audio(container, stream, chunks, rate: int) -> None:
    """Encode mono ``chunks`` (float32 or int16 arrays, in order) into ``stream`` and mux them."""
    import av

    pts = 0
    for chunk in chunks:
        fmt = "s16" if chunk.dtype == np.int16 else "fltp"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None]), format=fmt, layout="mono")
        frame.sample_rate, frame.pts = rate, pts
        pts += len(chunk)
        for p in stream.encode(frame):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


def tone(seconds: float, hz: float, rate: int = 24_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def _tar(folder: Path) -> Path:
    tar = folder.with_name(folder.name + ".tar")
    with tarfile.open(tar, "w") as t:
        for p in sorted(folder.rglob("*.jpg")):
            t.add(p, arcname="./" + str(p.relative_to(folder)))
    for p in sorted(folder.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    folder.rmdir()
    return tar


def frame_files(root: Path, video_id: str, n: int, flow_stride: int, as_tar: bool) -> None:
    """``rgb_frames/<vid>/frame_%010d.jpg`` (file f grey ``f``) and ``flow_frames/<vid>/{u,v}``
    (flow file j: u = 128 + j, v = 128), as folders or tars."""
    pid = video_id.split("_")[0]
    rgb, flow = root / pid / "rgb_frames" / video_id, root / pid / "flow_frames" / video_id
    for f in range(1, n + 1):
        _jpeg(rgb / f"frame_{f:010d}.jpg", np.full((32, 40, 3), f, np.uint8))
    for j in range(1, n // flow_stride + 1):
        _jpeg(flow / "u" / f"frame_{j:010d}.jpg", np.full((32, 40), 128 + j, np.uint8))
        _jpeg(flow / "v" / f"frame_{j:010d}.jpg", np.full((32, 40), 128, np.uint8))
    if as_tar:
        _tar(rgb), _tar(flow)


def epic_csv(path: Path, rows: list[tuple], labelled: bool = True) -> Path:
    """rows: (narration_id, video_id, start_frame, stop_frame, verb_class, noun_class)."""
    lines = []
    for nid, vid, a, b, v, n in rows:
        pid = vid.split("_")[0]
        if labelled:
            lines.append(f"{nid},{pid},{vid},00:00:00.00,00:00:00.00,00:00:01.00,{a},{b},x y,x,{v},y,{n},['y'],[{n}]\n")
        else:
            lines.append(f"{nid},{pid},{vid},00:00:00.00,00:00:01.00,{a},{b}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((EPIC_HEADER if labelled else TEST_HEADER) + "".join(lines))
    return path


def epic_tree(root: Path, frames_too: bool = True) -> Path:
    """Two participants, three 2-second videos with AAC audio: ``P01_01`` (EPIC-55, 60 fps), ``P01_101``
    (extension, 50 fps), ``P02_01`` (60 fps). ``P01_01`` also has frame folders (flow at stride 2),
    ``P01_101`` frame tars (flow 1:1). Returns the annotations folder."""
    for vid, fps, kind, hz in (("P01_01", 60, 0, 440.0), ("P01_101", 50, 1, 880.0), ("P02_01", 60, 2, 220.0)):
        write_clip(root / vid.split("_")[0] / "videos" / f"{vid}.MP4", clip_frames(2 * fps, kind=kind), fps,
                   tone(2.0, hz))  # fmt: skip
    if frames_too:
        frame_files(root, "P01_01", 120, 2, as_tar=False)
        frame_files(root, "P01_101", 100, 1, as_tar=True)
    return root


def ssv2_tree(root: Path, n: int = 6) -> dict[str, Path]:
    """``<id>.webm`` clips (VP8, 12 fps, no audio), the label/train/validation JSON files and
    Something-Else boxes (hand + one object, in pixels of the 64x48 frames)."""
    templates = ["Pushing [something] from left to right", "Pushing [something] from right to left"]
    labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}
    items, boxes = [], {}
    for i in range(n):
        vid = str(1000 + i)
        write_clip(root / "videos" / f"{vid}.webm", clip_frames(24, kind=i % 2), 12, vcodec="libvpx")
        items.append({"id": vid, "label": "x", "template": templates[i % 2], "placeholders": ["box"]})
        frames = []
        for k in range(24):
            x = 4 + 2 * k if i % 2 == 0 else 52 - 2 * k
            frames.append({"name": f"{vid}/{k + 1:04d}.jpg", "labels": [
                {"box2d": {"x1": x, "y1": 10, "x2": x + 8, "y2": 20}, "category": "hand", "standard_category": "hand"},
                {"box2d": {"x1": x + 6, "y1": 12, "x2": x + 14, "y2": 22}, "category": "box",
                 "standard_category": "0000"}]})  # fmt: skip
        if i != n - 1:  # the last video has no boxes: its detections are absent
            boxes[vid] = frames
    name = "something-something-v2-{}.json"
    paths = {k: root / name.format(k) for k in ("labels", "train", "validation")}
    paths["boxes"] = root / "bounding_box_smthsmth.json"
    paths["labels"].write_text(json.dumps(labels))
    paths["train"].write_text(json.dumps(items[: n - 2]))
    paths["validation"].write_text(json.dumps(items[n - 2 :]))
    paths["boxes"].write_text(json.dumps(boxes))
    return paths
