"""``karmma extract epic100``: EPIC-KITCHENS-100 segments from the official download layout.

Under ``--root``, per participant ``PXX``, any of:

* ``PXX/videos/PXX_YY.MP4`` — video and the audio track (audio needs the video file);
* ``PXX/rgb_frames/PXX_YY/frame_%010d.jpg`` or the per-video ``PXX/rgb_frames/PXX_YY.tar``;
* ``PXX/flow_frames/PXX_YY/{u,v}/frame_%010d.jpg`` or ``PXX/flow_frames/PXX_YY.tar``.

Segments come from ``--annotations`` (``EPIC_100_train.csv``, ``EPIC_100_validation.csv`` or the
unlabelled ``EPIC_100_test_timestamps.csv``); class names from ``EPIC_100_{verb,noun}_classes.csv``
beside it when present. Tasks: verb (97) and noun (300); actions are scored from them as the
official evaluation does (:func:`karmma.data.readers.epic.action_scores`).

Frame numbers (one convention, everywhere): ``start_frame``/``stop_frame`` are used as the
1-based numbers of the frame files — frame ``f`` is ``frame_{f:010d}.jpg`` and lies at
``(f - 1) / fps`` seconds in the video, ``fps`` being the rate the frames were extracted at (60 for
``PXX_YY`` EPIC-55 videos, 50 for ``PXX_1YY`` extension videos, whatever the MP4's native rate).
The annotation README calls the numbers 0-based, but every released annotation starts at 1
(frame 0 would be clamped to 1) and the released frame files start at 1. EPIC-55 flow was extracted
at stride 2: rgb frame ``f`` pairs with flow frame ``(f - 1) // 2 + 1``; extension flow is 1:1.

Missing media never stops a run: that modality is absent for the segment, with the reason
counted in the extraction summary. A corrupt file follows ``--on-error`` (default here: absent).
Failures inside a segment are marked in ``Raw.valid`` (:mod:`karmma.data.media.failures`): black,
frozen (or, from the video, corrupt) rgb frames and the flow steps computed on them, audio the
track does not cover (a timestamp gap, a track ending before the segment does, padded with silence).
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import numpy as np

from karmma.data.clips import FRAME_SIZE, NUM_FRAMES, clip_raw, epic_clip
from karmma.data.media.decode import AUDIO_RATE, MEL_BANDS, decode_video, log_mel, read_audio_covered, read_image
from karmma.data.readers import epic
from karmma.data.readers.base import READERS, DatasetReader, Kind, Raw, SampleRef, or_absent
from karmma.errors import DataError
from karmma.limits import FRAME_BYTES

FLOW_BOUND = 20.0  # EPIC's flow JPEGs map [-20, 20] px (TV-L1) linearly to [0, 255]
_EXTENSION = re.compile(r"^P\d+_1\d\d$")
_VIDEO_SUFFIXES = (".MP4", ".mp4")


def frame_rate(video_id: str) -> int:
    """The rate EPIC frames were extracted at: 50 for extension videos (``PXX_1YY``), else 60."""
    return 50 if _EXTENSION.match(video_id) else 60


def flow_index(video_id: str, rgb_frame: int) -> int:
    """The flow frame number paired with 1-based rgb frame ``rgb_frame``."""
    return rgb_frame if _EXTENSION.match(video_id) else (rgb_frame - 1) // 2 + 1


def sample_frames(start: int, stop: int, n: int = NUM_FRAMES, where: str = "a segment") -> np.ndarray:
    """``n`` frame numbers spread evenly over [start, stop] (segment centres). Frame 0 is read as
    1 (the one clamp: see the module docstring); a negative or reversed range is refused."""
    if start < 0 or stop < start:
        why = f"start_frame {start} is negative" if start < 0 else f"stop_frame {stop} is before start_frame {start}"
        raise DataError(f"{where}: {why}; fix its row in the annotations")
    start, stop = max(1, start), max(1, stop)
    edges = np.linspace(start, stop + 1, n + 1)
    return np.floor((edges[:-1] + edges[1:]) / 2).astype(int).clip(start, stop)


def frame_name(i: int) -> str:
    return f"frame_{i:010d}.jpg"


class FrameSource:
    """One video's frames: a folder, or the downloaded ``.tar`` of it (read without unpacking)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.tar_path = folder, folder.with_name(folder.name + ".tar")
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}

    def exists(self) -> bool:
        """Something is where the frames go (whether it holds frames is found when they are read)."""
        try:
            return self.folder.exists() or self.tar_path.exists()
        except OSError:  # not even visible (permissions): reading names it
            return True

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def read(self, name: str, size: tuple[int, int], grey: bool = False) -> np.ndarray:
        """Frame ``name`` (e.g. ``frame_0000000001.jpg``, ``u/...`` for flow) resized to ``size``."""
        try:
            return self._read(name, size, grey)
        except OSError as e:  # the folder or the tar cannot be looked into (permissions, I/O)
            where = e.filename or self.folder
            raise DataError(f"{where}: cannot read the frames ({e.strerror or e}); check that it is readable") from e

    def _read(self, name: str, size: tuple[int, int], grey: bool) -> np.ndarray:
        if self.folder.is_dir():
            path = self.folder / name
            if not path.exists():
                raise DataError(f"{path} does not exist (the frame is outside the extracted video)")
            return read_image(path, size, grey)  # bounded by KARMMA_MAX_FRAME_BYTES, like a member
        if not self.tar_path.is_file():
            odd = self.folder if self.folder.exists() else self.tar_path
            raise DataError(f"{odd} is neither a folder of frame images nor a .tar of them; put the video's frames "
                            "there, or remove it to read the frames from the video")  # fmt: skip
        if self._tar is None:
            try:
                self._tar = tarfile.open(self.tar_path)
                self._members = {m.name.removeprefix("./"): m for m in self._tar.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"{self.tar_path}: cannot read the tar ({e}); download it again") from e
        member = self._members.get(name)
        if member is None:
            raise DataError(f"{self.tar_path} has no {name} (the frame is outside the extracted video)")
        where = f"{self.tar_path}, member {member.name}"
        FRAME_BYTES.check(member.size, where)  # before reading: a tiny tar can declare a member of gigabytes
        try:
            f = self._tar.extractfile(member)
            data = f.read() if f else b""
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"{where}: cannot read it ({e}); the tar is truncated or corrupt: download it again") from e
        return read_image(data, size, grey, name=where)


def frame_rgb(frames: np.ndarray, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Frame files (T, H, W, 3) uint8 read at frame numbers ``picks`` -> rgb in [0, 1] and which
    are valid (None: all): a black frame is zeros and invalid, a frozen one (a repeat of the frame
    file before it, a frame read twice not counting) invalid (:mod:`karmma.data.media.failures`)."""
    from karmma.data.media.failures import frame_failures

    valid, blank = frame_failures(frames, sources=picks)
    rgb = frames.astype(np.float32) / 255.0
    rgb[blank] = 0.0
    return rgb, None if valid.all() else valid


def mel_covered(n: int, spans) -> np.ndarray | None:
    """Which of ``n`` log-mel frames the audio track covers (None: all); ``spans``: filled samples."""
    from karmma.data.media.audio_stream import frames_valid, log_mel_framing
    from karmma.data.media.decode import MEL_HOP_S, MEL_NFFT, MEL_WINDOW_S

    if not spans:
        return None
    valid = frames_valid(log_mel_framing(AUDIO_RATE, MEL_BANDS, MEL_WINDOW_S, MEL_HOP_S, MEL_NFFT), n, spans)
    return None if valid.all() else valid


def flow_image(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """EPIC flow JPEGs (uint8, 128 = still) -> (H, W, 3) float32: u, v in px and magnitude."""
    uv = np.stack([u, v], -1).astype(np.float32) * (2 * FLOW_BOUND / 255.0) - FLOW_BOUND
    return np.concatenate([uv, np.linalg.norm(uv, axis=-1, keepdims=True)], -1)


@READERS.register("epic100")
class EpicReader(DatasetReader):
    modalities = {"rgb": Kind("frames", 3), "flow": Kind("flow", 3), "audio": Kind("signal", MEL_BANDS)}
    default_modalities = ("rgb", "flow", "audio")
    options = ("annotations",)
    on_error = "absent"
    contract = {
        "time": "a segment is its start_frame..stop_frame at its video's frame rate (60 fps; 50 for the 2020 "
                "extension videos), frame numbers 1-based",
        "frames": f"{NUM_FRAMES} rgb frames evenly over the segment ({2 * NUM_FRAMES} from a video), "
                  f"{FRAME_SIZE[0]}x{FRAME_SIZE[1]}",
        "audio": f"the video's audio track, {AUDIO_RATE // 1000} kHz mono, {MEL_BANDS}-band log-mel "
                 "(10 ms window, 5 ms hop)",
        "lengths": "audio shorter than its segment: the uncovered part is absent (never stretched); black, "
                   "frozen or undecodable frames are absent for the tokens they cover",
        "flow": "the release's TV-L1 flow JPEGs (±20 px) where a video has them, else Farneback flow from the "
                "video; a store mixing the two is refused unless --allow-mixed-flow",
    }  # fmt: skip

    def sources(self, ref: SampleRef, modalities: tuple[str, ...]) -> dict[str, str]:
        """rgb from the JPEG frames or the video, flow from the TV-L1 JPEGs or Farneback on the video,
        audio from the video's track: what exists decides (nothing, when neither does)."""
        seg: epic.Segment = ref.source
        video = self._video(seg) is not None
        frames = {m: self._frames(seg.participant_id, f"{m}_frames", seg.video_id).exists() for m in ("rgb", "flow")}
        named = {"rgb": ("jpeg_frames", "video"), "flow": ("tvl1_jpeg", "farneback_video")}
        out = {m: named[m][0] if frames[m] else named[m][1] for m in named if m in modalities and (frames[m] or video)}
        if "audio" in modalities and video:
            out["audio"] = "video_track"
        return out

    def __init__(self, annotations: str | Path | None = None) -> None:
        if annotations is None:
            raise DataError("epic100 needs --annotations EPIC_100_train.csv (or _validation / _test_timestamps)")
        self.annotations = Path(annotations)
        self.extra = {"dataset": "epic100", "annotations": self.annotations.name}
        self._sources: dict[Path, FrameSource] = {}

    def _frames(self, participant: str, kind: str, video_id: str) -> FrameSource:
        """The frame source of a video, kept while its segments are read (annotations list a video's
        segments together): a tar's member index is built once per video, not once per segment."""
        folder = self.root / participant / kind / video_id
        if folder not in self._sources:
            for old in list(self._sources)[:-3]:  # the last few videos' rgb and flow stay open
                self._sources.pop(old).close()
            self._sources[folder] = FrameSource(folder)
        return self._sources[folder]

    def __getstate__(self) -> dict:  # sent to spawned extraction workers: without open tars
        return {**self.__dict__, "_sources": {}}

    def samples(self, root: Path, split: str) -> list[SampleRef]:
        if split != "all":
            raise DataError("epic100 takes its split from --annotations; leave --split at all")
        if not root.is_dir():
            raise DataError(f"{root} is not a folder; point --root at the folder holding P01/, P02/, ...")
        self.root = root
        segments = epic.read_annotations(self.annotations)
        labels, self.labelled = epic.segment_labels(segments)
        self.extra = {**self.extra, "labelled": self.labelled}
        return [
            SampleRef(s.narration_id, {t: labels[t][i] for t in labels}, s.participant_id, s)
            for i, s in enumerate(segments)
        ]

    def tasks(self, refs: list[SampleRef]) -> tuple[dict[str, int], dict[str, list[str]]]:
        return dict(epic.TASKS), epic.class_names_beside(self.annotations)

    @classmethod
    def read_clip(cls, path: Path, modalities: tuple[str, ...]) -> Raw:
        return epic_clip(path, modalities)

    def _video(self, seg: epic.Segment) -> Path | None:
        for suffix in _VIDEO_SUFFIXES:
            p = self.root / seg.participant_id / "videos" / (seg.video_id + suffix)
            if p.is_file():
                return p
        return None

    def load(self, ref: SampleRef, modalities: tuple[str, ...], on_error: str) -> Raw:
        seg: epic.Segment = ref.source
        fps = frame_rate(seg.video_id)
        rgb_src = self._frames(seg.participant_id, "rgb_frames", seg.video_id)
        flow_src = self._frames(seg.participant_id, "flow_frames", seg.video_id)
        video = self._video(seg)
        what = f"segment {seg.narration_id} ({seg.video_id}, frames {seg.start_frame}-{seg.stop_frame})"
        raw, span = Raw(), ((max(1, seg.start_frame) - 1) / fps, seg.stop_frame / fps)
        raw.duration = span[1] - span[0]
        picks = or_absent(lambda: sample_frames(seg.start_frame, seg.stop_frame, where=what), on_error, what, raw, "_")
        if picks is None:  # no frame range: nothing of the segment can be read
            why = raw.absent.pop("_")
            raw.absent.update({m: why for m in modalities})
            return raw

        decoded, why_video = None, "no video file" if video is None else ""
        from_frames_missing = tuple(m for m, src in (("rgb", rgb_src), ("flow", flow_src))
                                    if m in modalities and not src.exists())  # fmt: skip
        if video is not None and from_frames_missing:  # decode the video only for what the frames lack
            tmp = Raw()
            decoded = or_absent(lambda: decode_video(video, FRAME_SIZE, 2 * NUM_FRAMES, *span), on_error,
                                f"the video of {what}", tmp, "video")  # fmt: skip
            why_video = tmp.absent.get("video", "")
        frames_v, bad = (None, None) if decoded is None else (decoded.frames, decoded.undecodable)
        from_video = clip_raw(frames_v, None, from_frames_missing, bad)
        if "rgb" in modalities:
            if rgb_src.exists():
                frames = or_absent(lambda: np.stack([rgb_src.read(frame_name(i), FRAME_SIZE) for i in picks]),
                                   on_error, f"the rgb frames of {what}", raw, "rgb")  # fmt: skip
                if frames is not None:
                    raw["rgb"], valid = frame_rgb(frames, picks)
                    if valid is not None:
                        raw.valid["rgb"] = valid
            elif "rgb" in from_video:
                raw["rgb"] = from_video["rgb"]
                if "rgb" in from_video.valid:
                    raw.valid["rgb"] = from_video.valid["rgb"]
            else:
                raw.absent["rgb"] = f"no rgb frames; {why_video}"
        if "flow" in modalities:
            if flow_src.exists():
                idx = [flow_index(seg.video_id, i) for i in picks]
                read_flow = lambda: np.stack([  # noqa: E731
                    flow_image(flow_src.read(f"u/{frame_name(j)}", FRAME_SIZE, grey=True),
                               flow_src.read(f"v/{frame_name(j)}", FRAME_SIZE, grey=True)) for j in idx])  # fmt: skip
                flow = or_absent(read_flow, on_error, f"the flow frames of {what}", raw, "flow")
                if flow is not None:
                    raw["flow"] = flow
            elif "flow" in from_video:
                raw["flow"] = from_video["flow"]
                if "flow" in from_video.valid:
                    raw.valid["flow"] = from_video.valid["flow"]
            else:
                raw.absent["flow"] = f"no flow frames; {why_video}"
        if "audio" in modalities:
            if video is None:
                raw.absent["audio"] = "no video file (audio is read from its track)"
            else:
                audio = or_absent(lambda: read_audio_covered(video, AUDIO_RATE, *span), on_error,
                                  f"the audio of {what}", raw, "audio")  # fmt: skip
                if audio is not None:
                    raw["audio"] = log_mel(audio[0], AUDIO_RATE)
                    valid = mel_covered(len(raw["audio"]), audio[1])
                    if valid is not None:
                        raw.valid["audio"] = valid
        return raw
