"""UTD-MHAD (Chen, Jafari, Kehtarnavaz, "UTD-MHAD: A multimodal dataset for human action
recognition utilizing a depth camera and a wearable inertial sensor", ICIP 2015).

861 clips of 27 actions by 8 subjects (4 trials each, 3 corrupted clips missing), files
``{Depth,Inertial,Skeleton}/a{action}_s{subject}_t{trial}_{depth,inertial,skeleton}.mat`` holding
``d_depth`` (240x320xT uint16, mm), ``d_iner`` (Tx6: 3-axis accelerometer in g, 3-axis gyroscope
in deg/s) and ``d_skel`` (20x3xT). Standard cross-subject split: odd subjects train, even test.

A clip may lack any modality file: it is then recorded absent, never invented. Failures inside a
clip are marked in ``Raw.valid`` (:mod:`karmma.data.media.failures`): a black (all-zero) or frozen
depth frame, and the flow steps touching one; an inertial or skeleton row holding NaN/Inf (the last
good row held in its place). The files carry no timestamps: a stall between rows is not seen.
``Raw.duration``: the depth (or skeleton) frames at :data:`KINECT_FPS`, else the inertial rows at
:data:`INERTIAL_HZ`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from karmma.data.readers.base import READERS, DatasetReader, Kind, Raw, SampleRef, or_absent
from karmma.errors import DataError

ACTIONS = [
    "right arm swipe to the left", "right arm swipe to the right", "right hand wave", "two hand front clap",
    "right arm throw", "cross arms in the chest", "basketball shoot", "right hand draw x",
    "right hand draw circle (clockwise)", "right hand draw circle (counter clockwise)", "draw triangle",
    "bowling (right hand)", "front boxing", "baseball swing from right", "tennis right hand forehand swing",
    "arm curl (two arms)", "tennis serve", "two hand push", "right hand knock on door",
    "right hand catch an object", "right hand pick up and throw", "jogging in place", "walking in place",
    "sit to stand", "stand to sit", "forward lunge (left foot forward)", "squat (two arms stretch out)",
]  # fmt: skip
# Kinect v1 joint order of the skeleton files (1-based in the dataset's documentation).
JOINTS = [
    "head", "shoulder_center", "spine", "hip_center", "left_shoulder", "left_elbow", "left_wrist", "left_hand",
    "right_shoulder", "right_elbow", "right_wrist", "right_hand", "left_hip", "left_knee", "left_ankle",
    "left_foot", "right_hip", "right_knee", "right_ankle", "right_foot",
]  # fmt: skip
HIP_CENTER = JOINTS.index("hip_center")
FOLDERS = {"depth": ("Depth", "d_depth"), "inertial": ("Inertial", "d_iner"), "skeleton": ("Skeleton", "d_skel")}
SUBJECT_PATTERN = r"_s(\d+)_"  # the subject in a clip id (a{action}_s{subject}_t{trial}): data.group_pattern
_NAME = re.compile(r"^a(\d+)_s(\d+)_t(\d+)_(depth|inertial|skeleton)\.mat$")


@dataclass
class Clip:
    action: int  # 0-based
    subject: int  # 1-based, as in the file names
    trial: int
    files: dict[str, Path] = field(default_factory=dict)  # raw modality -> .mat path

    @property
    def id(self) -> str:
        return f"a{self.action + 1}_s{self.subject}_t{self.trial}"


def list_clips(root: str | Path, split: str = "all") -> list[Clip]:
    """Every clip under ``root`` (any modality file counts), sorted; ``split`` is "all",
    "train" (odd subjects) or "test" (even subjects)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"UTD-MHAD folder {root} does not exist; "
            "pass --root pointing at the folder with Depth/, Inertial/, Skeleton/"
        )
    clips: dict[tuple[int, int, int], Clip] = {}
    for modality, (folder, _) in FOLDERS.items():
        d = root / folder
        if not d.is_dir():
            continue
        for f in d.iterdir():
            m = _NAME.match(f.name)
            if not m or m.group(4) != modality:
                continue
            a, s, t = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if not 1 <= a <= len(ACTIONS):
                raise DataError(f"{f}: action a{a} is not one of UTD-MHAD's 27 actions (a1..a27)")
            clips.setdefault((a, s, t), Clip(a - 1, s, t)).files[modality] = f
    if not clips:
        raise DataError(f"{root}: no UTD-MHAD .mat files found (expected e.g. Depth/a1_s1_t1_depth.mat)")
    out = sorted(clips.values(), key=lambda c: (c.subject, c.action, c.trial))
    if split == "train":
        out = [c for c in out if c.subject % 2 == 1]
    elif split == "test":
        out = [c for c in out if c.subject % 2 == 0]
    elif split != "all":
        raise DataError(f"unknown split {split!r}; use all, train or test")
    return out


def load_modality(path: str | Path, modality: str) -> np.ndarray:
    """The array of one .mat file, checked: depth (H, W, T), inertial (T, 6), skeleton (20, 3, T).
    NaN/Inf in depth is refused (a corrupt file); in an inertial or skeleton file it marks the rows
    the sensor lost (:meth:`UTDMHADReader.load` holds the last good row there), unless no row is left."""
    path = Path(path)
    key = FOLDERS[modality][1]
    try:
        data = scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError, scipy.io.matlab.MatReadError) as e:
        raise DataError(
            f"{path}: cannot read the .mat file ({e}); it is corrupt — re-download it, or run with --on-error absent"
        ) from e
    if key not in data:
        raise DataError(
            f"{path}: no variable {key!r} in the .mat file (found {sorted(k for k in data if not k.startswith('__'))})"
        )
    x = np.asarray(data[key])
    ok = {
        "depth": x.ndim == 3 and x.shape[2] >= 2,
        "inertial": x.ndim == 2 and x.shape[1] == 6 and x.shape[0] >= 2,
        "skeleton": x.ndim == 3 and x.shape[:2] == (20, 3) and x.shape[2] >= 2,
    }[modality]
    if not ok:
        want = {"depth": "(H, W, T>=2)", "inertial": "(T>=2, 6)", "skeleton": "(20, 3, T>=2)"}[modality]
        raise DataError(f"{path}: {key} has shape {x.shape}, expected {want}")
    finite = np.isfinite(x)
    if not finite.all():
        rows = finite.all(axis=(0, 1)) if modality == "skeleton" else finite.all(axis=1)  # per time step
        if modality == "depth" or not rows.any():
            where = "" if modality == "depth" else " in every row"
            raise DataError(f"{path}: {key} holds NaN/Inf values{where}; the file is corrupt")
    return x


DEPTH_SIZE = (60, 80)  # depth frames are resized to this (H, W) for the optical flow
DEPTH_SCALE = 4000.0  # mm -> roughly [0, 1]
GYRO_SCALE = 200.0  # deg/s -> roughly [-1, 1]
KINECT_FPS = 30.0  # depth and skeleton frames per second (Kinect v1; Chen et al. 2015)
INERTIAL_HZ = 50.0  # inertial rows per second (the wearable sensor's rate; Chen et al. 2015)


@READERS.register("utd_mhad")
class UTDMHADReader(DatasetReader):
    """Depth (~RGB), optical flow on depth (~optical flow), inertial (~audio) and skeleton;
    cross-subject split (odd subjects train, even test), subjects as groups."""

    modalities = {
        "depth": Kind("depth", 1),
        "flow": Kind("flow", 3),
        "inertial": Kind("signal", 6),
        "skeleton": Kind("skeleton", 60),
    }
    default_modalities = ("depth", "flow", "inertial")
    source_names = {"depth": "kinect_depth_mat", "flow": "farneback_depth", "inertial": "inertial_mat",
                    "skeleton": "kinect_skeleton_mat"}  # fmt: skip
    contract = {
        "time": f"a clip is its whole recording: depth and skeleton frames at {KINECT_FPS:g} fps, inertial rows "
                f"at {INERTIAL_HZ:g} Hz (the files carry no timestamps)",
        "frames": "every depth frame, resized for flow; depth motion maps or pooled frames per the extractor",
        "audio": "none (inertial and skeleton are the signal modalities)",
        "lengths": "modalities of one clip are not aligned sample by sample; a black or frozen depth frame, and "
                   "the flow steps touching one, are absent for the tokens they cover",
        "flow": "Farneback flow on consecutive depth frames",
    }  # fmt: skip

    def samples(self, root: Path, split: str) -> list[SampleRef]:
        self.extra = {"dataset": "utd_mhad", "split": split}
        clips = list_clips(root, split)
        self.extra["subjects"] = sorted({c.subject for c in clips})
        return [SampleRef(c.id, {"action": c.action}, f"s{c.subject}", c) for c in clips]

    def tasks(self, refs: list[SampleRef]) -> tuple[dict[str, int], dict[str, list[str]]]:
        return {"action": len(ACTIONS)}, {"action": ACTIONS}

    def load(self, ref: SampleRef, modalities: tuple[str, ...], on_error: str) -> Raw:
        """Decoded, scaled raw inputs of one clip, with its failed steps in ``valid``."""
        from karmma.data.media.failures import frame_failures, signal_gaps, step_valid
        from karmma.data.media.flow import flow_with_magnitude, to_uint8

        clip: Clip = ref.source
        out = Raw()
        lengths: dict[str, float] = {}  # seconds, by the modality that gave it

        def load(name: str) -> np.ndarray | None:
            if name not in clip.files:
                return None
            return or_absent(lambda: load_modality(clip.files[name], name), on_error, f"{name} of {clip.id}")

        if "depth" in modalities or "flow" in modalities:
            depth = load("depth")
            if depth is not None:
                lengths["depth"] = depth.shape[2] / KINECT_FPS
                # black: all (or nearly all) zero in mm; frozen: a repeat of the frame before (failures)
                valid, blank = frame_failures(depth.transpose(2, 0, 1))
            if depth is not None and "depth" in modalities:
                # full resolution: the depth motion maps' side and top views need it
                out["depth"] = np.ascontiguousarray(depth.transpose(2, 0, 1), dtype=np.float32) / DEPTH_SCALE
                out["depth"][blank] = 0.0
                if not valid.all():
                    out.valid["depth"] = valid
            if depth is not None and "flow" in modalities:
                h, w = DEPTH_SIZE
                frames = np.stack([cv2.resize(depth[:, :, t].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
                                   for t in range(depth.shape[2])])  # fmt: skip
                out["flow"] = flow_with_magnitude(to_uint8(frames), scale=2.0)
                out["flow"][~step_valid(~blank)] = 0.0  # a step to or from a blank frame: no motion
                if not valid.all():
                    out.valid["flow"] = step_valid(valid)
        if "inertial" in modalities:
            x = load("inertial")
            if x is not None:
                lengths["inertial"] = len(x) / INERTIAL_HZ
                x, valid = signal_gaps(x)  # a NaN/Inf row: the last good row held
                out["inertial"] = np.concatenate([x[:, :3], x[:, 3:] / GYRO_SCALE], axis=1).astype(np.float32)
                if not valid.all():
                    out.valid["inertial"] = valid
        if "skeleton" in modalities:
            s = load("skeleton")
            if s is not None:
                lengths["skeleton"] = s.shape[2] / KINECT_FPS
                pos = (s - s[HIP_CENTER : HIP_CENTER + 1]).transpose(2, 0, 1).reshape(s.shape[2], -1)
                pos, valid = signal_gaps(pos)  # a frame with a NaN joint (or hip): the last good frame held
                out["skeleton"] = pos.astype(np.float32)
                if not valid.all():
                    out.valid["skeleton"] = valid
        out.duration = next((lengths[m] for m in ("depth", "skeleton", "inertial") if m in lengths), None)
        return out
