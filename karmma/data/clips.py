"""Raw clips (``karmma predict --clip``) as the raw modalities a dataset's extraction made: one
clip format per shipped reader (:data:`CLIP_FORMATS`: ``epic100``, ``ssv2``, ``video``), with the
frame size, frame count and audio features that reader uses, so that a deployment decodes a clip
without importing the dataset readers (their annotation parsing, store writing, ...)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from karmma.data.media.decode import AUDIO_RATE, MEL_BANDS, Clip, log_mel
from karmma.data.raw import Raw

VIDEO_MODALITIES = ("rgb", "flow")
FRAME_SIZE = (64, 64)  # (H, W) the frozen encoders see (EPIC-100, SSv2)
NUM_FRAMES = 16  # frames sampled evenly over a segment (paper-unknown default)
VIDEO_FRAME_SIZE = (64, 64)  # the generic video folder's before karmma 0.3 (stores that record no preprocessing)
AUDIO_BINS = 32  # the generic video folder's spectrogram bands before karmma 0.3
# The generic video folder's extraction options (``karmma extract video --frame-size --frames --audio``)
# and their defaults: frames of 112 px, 32 spread over the clip, 64-band log-mel audio.
VIDEO_OPTIONS = {"frame_size": 112, "frames": 32, "audio": "log_mel"}
VIDEO_AUDIO = {
    # log-mel (HTK mel, as auditory-slow-fast) at 24 kHz: 25 ms Hann windows every 10 ms, 64 bands —
    # the mel scale resolves the low frequencies where speech and most action sounds live
    "log_mel": {"features": "log_mel", "rate": AUDIO_RATE, "bands": 64, "window_s": 0.025, "hop_s": 0.010,
                "n_fft": 1024},
    # before karmma 0.3: 32 linear-frequency bands of a log spectrogram (512-sample window, hop 256)
    "spectrogram": {"features": "spectrogram", "rate": AUDIO_RATE, "bands": AUDIO_BINS, "nperseg": 512, "hop": 256},
}  # fmt: skip


def clip_modalities(
    clip: Clip, modalities: tuple[str, ...], from_frames: Callable[[np.ndarray, np.ndarray | None], Raw]
) -> Raw:
    """rgb/flow (``from_frames`` of the clip's frames and which the decoder flagged corrupt) and audio
    (its audio features, already framed, and where the track covers them); each asked modality the
    clip lacks is named in ``absent`` with the reason. ``duration``: the clip's, when declared."""
    raw = Raw()
    if clip.frames is not None:
        video = from_frames(clip.frames, clip.undecodable)
        raw.update({m: x for m, x in video.items() if m in modalities})
        raw.valid.update({m: v for m, v in video.valid.items() if m in raw})
    for m in VIDEO_MODALITIES:
        if m in modalities and m not in raw:
            raw.absent[m] = clip.absent.get("video", "not decoded")
    if "audio" in modalities:
        if clip.audio is not None:
            raw["audio"] = clip.audio
            if clip.audio_valid is not None and not clip.audio_valid.all():
                raw.valid["audio"] = clip.audio_valid
        else:
            raw.absent["audio"] = clip.absent.get("audio", "no audio track")
    raw.duration = clip.duration
    return raw


def video_raw(
    raw: Raw, frames: np.ndarray, modalities: tuple[str, ...], pick: np.ndarray | None = None,
    undecodable: np.ndarray | None = None,
) -> Raw:  # fmt: skip
    """rgb (``frames[pick]`` in [0, 1]; every frame without ``pick``) and Farneback flow between
    consecutive ``frames`` into ``raw``, with their failures (:mod:`karmma.data.media.failures`): a
    black or ``undecodable`` frame is zeros and invalid, a frozen one invalid (kept: the last good
    frame held); a flow step is invalid when either frame is, and zeros when either is zeroed.
    ``raw.valid`` names a modality only when one of its steps failed: a clip without failures comes
    out exactly as before the detectors."""
    from karmma.data.media.failures import frame_failures, step_valid
    from karmma.data.media.flow import flow_from_rgb

    valid, blank = frame_failures(frames, undecodable)
    if "rgb" in modalities:
        rows = np.arange(len(frames)) if pick is None else pick
        rgb = (frames if pick is None else frames[pick]).astype(np.float32) / 255.0
        rgb[blank[rows]] = 0.0
        raw["rgb"] = rgb
        if not valid[rows].all():
            raw.valid["rgb"] = valid[rows]
    if "flow" in modalities:
        flow = flow_from_rgb(frames)
        flow[~step_valid(~blank)] = 0.0
        raw["flow"] = flow
        if not valid.all():
            raw.valid["flow"] = step_valid(valid)
    return raw


def clip_raw(
    frames: np.ndarray | None, audio: np.ndarray | None, modalities: tuple[str, ...],
    undecodable: np.ndarray | None = None,
) -> Raw:  # fmt: skip
    """A decoded clip -> the raw modalities the encoders take: ``rgb`` (T, H, W, 3) in [0, 1],
    ``flow`` (T-1, H, W, 3) Farneback between consecutive frames, ``audio`` (frames, 128) log-mel;
    failed frames marked in ``valid`` (:func:`video_raw`)."""
    raw = Raw()
    if frames is not None and len(frames) >= 2:
        pick = np.linspace(0, len(frames) - 1, min(NUM_FRAMES, len(frames))).round().astype(int)
        video_raw(raw, frames, modalities, pick, undecodable)
    if audio is not None and "audio" in modalities:
        raw["audio"] = log_mel(audio, AUDIO_RATE)
    return raw


def audio_features(path: Path, bins: int = AUDIO_BINS) -> np.ndarray:
    """(T, bins) log-magnitude spectrogram of a WAV file, mean over channels."""
    from karmma.data.media.decode import read_wav

    x, rate = read_wav(path)
    return spectrogram(x.mean(1), rate, bins)


def spectrogram(x: np.ndarray, rate: int, bins: int = AUDIO_BINS) -> np.ndarray:
    """(T, bins) log-magnitude spectrogram of mono audio, averaged into ``bins`` bands: SciPy's STFT
    (512-sample Hann window, hop 256, zero boundary and end padding), computed block by block."""
    from karmma.data.media.audio_stream import frames_of

    return frames_of(spectrogram_framing(rate, bins), [np.asarray(x, np.float32).reshape(-1)])


def spectrogram_framing(rate: int, bins: int = AUDIO_BINS, nperseg: int = 512, hop: int = 256):
    """:func:`spectrogram` as a :class:`~karmma.data.media.audio_stream.Framing`: each block is
    ``scipy.signal.stft`` of a run of the padded signal, so every frame is SciPy's own."""
    import scipy.signal  # here, not at the top: a deployment of another clip format never imports it

    from karmma.data.media.audio_stream import Framing

    def features(run: np.ndarray) -> np.ndarray:
        _, _, z = scipy.signal.stft(run, fs=rate, nperseg=nperseg, noverlap=nperseg - hop, boundary=None, padded=True)
        spec = np.log1p(np.abs(z))
        edges = np.linspace(0, spec.shape[0], bins + 1).astype(int)
        bands = [spec[a : max(a + 1, b)].mean(0) for a, b in zip(edges[:-1], edges[1:])]
        return np.stack(bands, axis=1).astype(np.float32)

    # SciPy pads nperseg // 2 zeros at each end, then zeros up to a whole number of hops
    count = lambda n: -(-(n + nperseg // 2 * 2 - nperseg) // hop) + 1  # noqa: E731
    return Framing(hop, nperseg, 0, nperseg // 2, count, features, block=2048)  # SciPy's STFT is exact at any block


def _frames_raw(raw: Raw, frames: np.ndarray, modalities: tuple[str, ...], undecodable=None) -> Raw:
    """rgb (every frame, in [0, 1]) and Farneback flow of a decoded clip, as this reader stores them."""
    return video_raw(raw, frames, modalities, None, undecodable)


def epic_clip(path: Path, modalities: tuple[str, ...], prep: dict | None = None) -> Raw:
    """EPIC-100's raw modalities of a clip: rgb and flow from its frames, audio as 128-band log-mel."""
    from karmma.data.media.decode import decode_clip

    mel = audio_framing(preprocessing("epic100")["audio"]) if "audio" in modalities else None
    video = "rgb" in modalities or "flow" in modalities
    clip = decode_clip(path, FRAME_SIZE, 2 * NUM_FRAMES, mel, video)
    return clip_modalities(clip, modalities, lambda frames, bad: clip_raw(frames, None, modalities, bad))


def ssv2_clip(path: Path, modalities: tuple[str, ...], prep: dict | None = None) -> Raw:
    """SSv2's raw modalities of a clip: rgb and flow (no object detector runs on a raw clip)."""
    from karmma.data.media.decode import decode_clip

    clip = decode_clip(path, FRAME_SIZE, 2 * NUM_FRAMES)
    raw = clip_raw(clip.frames, None, modalities, clip.undecodable)
    raw.duration = clip.duration
    if "detections" in modalities:
        raw.absent["detections"] = "no object detector runs on a raw clip"
    return raw


def video_preprocessing(frame_size: int | None = None, frames: int | None = None, audio: str | None = None) -> dict:
    """The generic video folder's preprocessing with these extraction options (None: the default of
    :data:`VIDEO_OPTIONS`; ``frames=0``: every frame), as stored with its features."""
    from karmma.errors import DataError

    size = VIDEO_OPTIONS["frame_size"] if frame_size is None else int(frame_size)
    count = VIDEO_OPTIONS["frames"] if frames is None else int(frames)
    kind = audio or VIDEO_OPTIONS["audio"]
    if not 16 <= size <= 1024 or not (count == 0 or 2 <= count <= 10_000) or kind not in VIDEO_AUDIO:
        raise DataError(
            f"video extraction options frame_size={size}, frames={count}, audio={kind!r}: give a frame "
            f"size in [16, 1024] px, 0 (every frame) or 2-10000 frames, audio {' or '.join(VIDEO_AUDIO)}"
        )
    return {"frame_size": [size, size], "frames_per_clip": count or None, "rgb_frames_per_clip": count or None,
            "flow": "farneback", "audio": dict(VIDEO_AUDIO[kind])}  # fmt: skip


# what a video-folder store that records no preprocessing (karmma < 0.3) was extracted with
LEGACY_VIDEO = {"frame_size": list(VIDEO_FRAME_SIZE), "frames_per_clip": None, "rgb_frames_per_clip": None,
                "flow": "farneback", "audio": dict(VIDEO_AUDIO["spectrogram"])}  # fmt: skip


def audio_framing(audio: dict):
    """The :class:`~karmma.data.media.audio_stream.Framing` of a preprocessing's ``audio`` entry."""
    from karmma.data.media.audio_stream import log_mel_framing
    from karmma.errors import DataError

    if audio.get("features") == "log_mel":
        return log_mel_framing(audio["rate"], audio["bands"], audio["window_s"], audio["hop_s"], audio["n_fft"])
    if audio.get("features") == "spectrogram":
        return spectrogram_framing(audio["rate"], audio["bands"], audio.get("nperseg", 512), audio.get("hop", 256))
    raise DataError(f"unknown audio features {audio.get('features')!r}; known: log_mel, spectrogram")


def video_clip(path: Path, modalities: tuple[str, ...], prep: dict | None = None) -> Raw:
    """The generic video folder's raw modalities of a clip, as ``prep`` (its store's preprocessing;
    None: a store of karmma < 0.3) says: frames spread over the clip, flow, audio features."""
    from karmma.data.media.decode import decode_clip

    prep = prep or LEGACY_VIDEO
    framing = audio_framing(prep["audio"]) if "audio" in modalities else None
    clip = decode_clip(path, tuple(prep["frame_size"]), prep["frames_per_clip"] or 10_000, framing,
                       video="rgb" in modalities or "flow" in modalities)  # fmt: skip
    return clip_modalities(clip, modalities, lambda frames, bad: _frames_raw(Raw(), frames, modalities, bad))


# a clip format: (clip, modalities, the preprocessing its store recorded or None) -> raw modalities
CLIP_FORMATS: dict[str, Callable[[Path, tuple[str, ...], dict | None], Raw]] = {
    "epic100": epic_clip,
    "ssv2": ssv2_clip,
    "video": video_clip,
}


def preprocessing(reader: str, recorded: dict | None = None) -> dict:
    """How a clip format turns a clip into raw modalities, as recorded in a deployment's
    ``pipeline.json`` and read back by the streaming runtime (:mod:`karmma.runtime.stream`):
    frame size (H, W), frames sampled over a clip (None: every frame), audio features.
    ``recorded``: what the model's store recorded (the generic video folder's options), if any."""
    if recorded:
        return dict(recorded)
    if reader == "video":
        return dict(LEGACY_VIDEO)
    from karmma.data.media.decode import MEL_HOP_S, MEL_NFFT, MEL_WINDOW_S

    audio = {"features": "log_mel", "rate": AUDIO_RATE, "bands": MEL_BANDS, "window_s": MEL_WINDOW_S,
             "hop_s": MEL_HOP_S, "n_fft": MEL_NFFT}  # fmt: skip
    return {"frame_size": list(FRAME_SIZE), "frames_per_clip": 2 * NUM_FRAMES, "rgb_frames_per_clip": NUM_FRAMES,
            "flow": "farneback", "audio": audio if reader == "epic100" else None}  # fmt: skip
