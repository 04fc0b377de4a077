"""`karmma predict --clip` on clips a user really has: a ten-minute (or hour-long) audio track in
bounded memory, an audio-only file, a 1-frame video with sound, a clip without the asked stream,
a clip passed to --input. Models are trained through the CLI on clips the test writes, so their
extractor (reader, encoders) is recorded as `karmma extract` made it."""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.signal

from karmma.data.media.audio_stream import BLOCK_FRAMES, FramePool, frames_of, log_mel_framing
from karmma.data.media.decode import log_mel, mel_filterbank
from karmma.data.readers.video_folder import spectrogram, spectrogram_framing
from tests.hostile import cli, cli_limited, train_clip_model
from tests.media_trees import clip_frames, level, mux_audio, tone, write_clip


def write_long(path: Path, seconds: float, video_frames: int = 0, fps: Fraction = Fraction(1, 10),
               rate: int = 24_000) -> Path:  # fmt: skip
    """A PCM (s16) audio track of ``seconds`` of a 440 Hz tone and, with ``video_frames``, an H.264
    video of that many frames at ``fps`` — written in well under a second for ten minutes."""
    import av

    with av.open(str(path), "w") as c:
        v = None
        if video_frames:
            v = c.add_stream("libx264", rate=fps)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=rate)
        a.layout = "mono"
        if v is not None:
            for f in clip_frames(video_frames):
                for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in v.encode():
                c.mux(p)
        n = int(seconds * rate)
        tone_s16 = ((0.3 * 32767 * np.sin(2 * np.pi * 440.0 * np.arange(i, min(n, i + rate)) / rate)).astype(np.int16)
                    for i in range(0, n, rate))  # fmt: skip
        mux_audio(c, a, tone_s16, rate)
    return path


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    """A model of the `video` reader (rgb, flow, a 32-band spectrogram), trained on six clips."""
    return train_clip_model(tmp_path_factory.mktemp("video"), "video")


@pytest.fixture(scope="module")
def epic_model(tmp_path_factory):
    """A model of the `epic100` reader (rgb, flow, 128-band log-mel), trained on one tiny video."""
    return train_clip_model(tmp_path_factory.mktemp("epic"), "epic100")


def whole_log_mel(x, rate=24_000, bands=128, window_s=0.010, hop_s=0.005, n_fft=2048):
    """log_mel as it was: every frame's spectrum of the whole track at once."""
    win, hop = int(round(window_s * rate)), int(round(hop_s * rate))
    x = np.pad(np.asarray(x, np.float32).reshape(-1), n_fft // 2)
    n = 1 + max(0, (len(x) - n_fft) // hop)
    idx = np.arange(n)[:, None] * hop + (n_fft - win) // 2 + np.arange(win)[None]
    frames = x[idx] * np.hanning(win + 2)[1:-1].astype(np.float32)
    spec = np.abs(np.fft.rfft(frames, n=n_fft, axis=1))
    return np.log(spec @ mel_filterbank(rate, n_fft, bands).T + 1e-6).astype(np.float32)


def whole_spectrogram(x, rate, bins=32):
    _, _, z = scipy.signal.stft(x, fs=rate, nperseg=512, noverlap=256)
    spec = np.log1p(np.abs(z))
    edges = np.linspace(0, spec.shape[0], bins + 1).astype(int)
    return np.stack([spec[a : max(a + 1, b)].mean(0) for a, b in zip(edges[:-1], edges[1:])], axis=1).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.0, 0.004, 0.005, 1.0, 7.3, 60.0])
def test_log_mel_in_blocks_is_the_whole_track_computation_bit_for_bit(seconds):
    x = (np.random.default_rng(1).normal(size=int(seconds * 24_000)) * 0.3).astype(np.float32)
    ref = whole_log_mel(x)
    np.testing.assert_array_equal(log_mel(x), ref)
    framing = log_mel_framing(24_000, 128, 0.010, 0.005, 2048)
    chunks = [x[i : i + 1023] for i in range(0, len(x), 1023)]  # as the decoder hands them
    np.testing.assert_array_equal(frames_of(framing, chunks), ref)
    if seconds < 10:  # smaller blocks: the same frames, up to BLAS's order of summation in the mel product
        np.testing.assert_allclose(frames_of(framing, chunks, block=64), ref, rtol=0, atol=1e-5)


def test_log_mel_of_a_track_longer_than_a_block_matches_in_float_precision():
    x = (np.random.default_rng(2).normal(size=(BLOCK_FRAMES + 500) * 120) * 0.3).astype(np.float32)
    got, ref = log_mel(x), whole_log_mel(x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("samples", [512, 513, 24_000, 7 * 24_000 + 13, 100 * 24_000 + 77])
def test_spectrogram_in_blocks_is_scipys_stft_of_the_whole_track_bit_for_bit(samples):
    x = (np.random.default_rng(3).normal(size=samples) * 0.3).astype(np.float32)
    ref = whole_spectrogram(x, 24_000)
    np.testing.assert_array_equal(spectrogram(x, 24_000), ref)
    chunks = [x[i : i + 5000] for i in range(0, samples, 5000)]
    np.testing.assert_array_equal(frames_of(spectrogram_framing(24_000), chunks, block=7), ref)


def test_frame_pool_keeps_a_short_clip_and_averages_a_long_one_within_its_bound():
    x = np.random.default_rng(4).normal(size=(1000, 3)).astype(np.float32)
    pool = FramePool(1000)
    for part in np.array_split(x, 7):
        pool.add(part)
    np.testing.assert_array_equal(pool.result(), x)  # under the bound: unchanged, bit for bit
    pool = FramePool(100, group=10)  # the group the declared duration gives
    for part in np.array_split(x, 13):
        pool.add(part)
    np.testing.assert_allclose(pool.result(), x.reshape(100, 10, 3).mean(1), rtol=1e-5, atol=1e-6)
    pool = FramePool(64, group=1)  # a container declaring far less than it holds: groups double
    for part in np.array_split(x, 9):
        pool.add(part)
    out = pool.result()
    assert pool.group == 16 and len(out) == 63 <= 64
    np.testing.assert_allclose(out[:62], x[:992].reshape(62, 16, 3).mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[62], x[992:].mean(0), rtol=1e-5, atol=1e-6)


def test_a_ten_minute_clip_predicts_in_bounded_memory(epic_model, tmp_path):
    # a log-mel of the whole track took 3.8 GB here (MemoryError under the cap); now a block at a time
    clip = write_long(tmp_path / "ten_minutes.mkv", 600, video_frames=60)
    rc, out, err = cli_limited("predict", epic_model, "--clip", clip, "--json", tmp_path / "p.json", limit_gb=3.0)
    assert rc == 0, err
    assert "modalities used: rgb, flow, audio" in out and "MemoryError" not in err
    assert json.loads((tmp_path / "p.json").read_text())["present"] == ["rgb", "flow", "audio"]


@pytest.mark.slow
def test_an_hour_long_audio_track_predicts_in_bounded_memory(epic_model, tmp_path):
    clip = write_long(tmp_path / "hour.mka", 3600)
    rc, out, err = cli_limited("predict", epic_model, "--clip", clip, limit_gb=3.0)
    assert rc == 0, err
    assert "modalities used: audio   (absent: rgb, flow)" in out and "rgb, flow: no video stream" in out


def test_a_long_clip_is_averaged_down_to_the_audio_frame_bound(video_model, tmp_path, monkeypatch, capsys, caplog):
    clip = write_long(tmp_path / "a.wav", 30)
    monkeypatch.setenv("KARMMA_MAX_AUDIO_FRAMES", "500")
    with caplog.at_level(logging.INFO, logger="karmma.data.media.audio_stream"):
        rc, out, _ = cli(capsys, "predict", video_model, "--clip", clip)
    assert rc == 0 and "modalities used: audio" in out
    assert "averaged in groups of 7" in caplog.text and "KARMMA_MAX_AUDIO_FRAMES" in caplog.text  # 3001 frames
    monkeypatch.setenv("KARMMA_MAX_AUDIO_FRAMES", "lots")
    rc, _, err = cli(capsys, "predict", video_model, "--clip", clip)
    assert rc == 2 and "KARMMA_MAX_AUDIO_FRAMES='lots' is not a valid bound" in err


@pytest.mark.parametrize("model", ["video_model", "epic_model"])
def test_an_audio_only_clip_predicts_from_its_audio(model, request, tmp_path, capsys):
    run = request.getfixturevalue(model)
    clip = write_long(tmp_path / "speech.wav", 3)
    rc, out, err = cli(capsys, "predict", run, "--clip", clip, "--json", tmp_path / "p.json")
    assert rc == 0, err
    assert "modalities used: audio   (absent: rgb, flow)" in out and "rgb, flow: no video stream" in out
    pred = json.loads((tmp_path / "p.json").read_text())
    assert pred["absent"] == ["rgb", "flow"] and pred["absent_reasons"]["rgb"] == "no video stream"


def test_a_one_frame_video_with_sound_predicts_from_the_sound(video_model, tmp_path, capsys):
    clip = write_clip(tmp_path / "still.mp4", clip_frames(1), 12, tone(2.0, 440.0))
    rc, out, err = cli(capsys, "predict", video_model, "--clip", clip)
    assert rc == 0, err
    assert "modalities used: audio   (absent: rgb, flow)" in out and "a video stream of 1 frame(s)" in out
    silent = write_clip(tmp_path / "still_silent.mp4", clip_frames(1), 12)
    rc, _, err = cli(capsys, "predict", video_model, "--clip", silent)
    assert rc == 2 and "1 frame(s)" in err and "no audio track" in err and "Traceback" not in err


def test_asking_for_a_stream_the_clip_lacks_says_what_it_has(video_model, tmp_path, capsys):
    silent = write_clip(tmp_path / "silent.mp4", clip_frames(12), 12)
    rc, out, err = cli(capsys, "predict", video_model, "--clip", silent, "--modalities", "audio")
    assert rc == 2 and out == ""
    assert "the clip has no audio track; it has rgb, flow" in err and "silent.mp4" in err
    sound = write_long(tmp_path / "sound.wav", 2)
    rc, _, err = cli(capsys, "predict", video_model, "--clip", sound, "--modalities", "rgb+flow")
    assert rc == 2 and "the clip has no video stream; it has audio" in err
    rc, out, _ = cli(capsys, "predict", video_model, "--clip", silent, "--modalities", "rgb")
    assert rc == 0 and "modalities used: rgb   (absent: flow, audio)" in out and "left out by --modalities" in out


@pytest.mark.parametrize("name", ["clip.mp4", "clip.WAV", "frames"])
def test_a_clip_given_to_input_points_to_clip(video_model, tmp_path, capsys, name):
    path = tmp_path / name
    path.mkdir() if name == "frames" else path.write_bytes(b"\0" * 64)
    rc, _, err = cli(capsys, "predict", video_model, "--input", path)
    assert rc == 2 and f"pass it with --clip {path}" in err


def test_the_video_frames_of_a_clip_are_bounded_and_spread_over_it(video_model, tmp_path, monkeypatch, capsys):
    from karmma.data.media.decode import decode_clip

    clip = write_clip(tmp_path / "many.mp4", clip_frames(300), 30)
    monkeypatch.setenv("KARMMA_MAX_CLIP_FRAMES", "20")
    frames = decode_clip(clip, (48, 64), 10_000).frames
    assert len(frames) == 20  # every 15th of the 300: the last from the clip's end
    assert abs(float(frames[-1, :5, 40:].mean()) - level(285)) < 8
    rc, out, _ = cli(capsys, "predict", video_model, "--clip", clip)
    assert rc == 0 and "modalities used: rgb, flow" in out


def test_a_short_video_in_a_long_container_keeps_its_frames(epic_model, tmp_path, capsys):
    # two seconds of video, two minutes of sound: 32 frames strided over the container's length left 1
    clip = write_long(tmp_path / "short_video.mkv", 120, video_frames=24, fps=Fraction(12))
    rc, out, err = cli(capsys, "predict", epic_model, "--clip", clip)
    assert rc == 0, err
    assert "modalities used: rgb, flow, audio   (absent: -)" in out


@pytest.mark.parametrize("model", ["video_model", "epic_model"])
def test_predict_clip_imports_no_dataset_reader_store_writer_or_experiment(model, request, tmp_path):
    """The robot-side path rebuilds its extractors from the spec saved with the model
    (``model.json: extractor.kinds`` and the clip format): ``python -X importtime -m karmma predict
    RUN --clip clip.mp4`` loads no dataset reader, store writer or experiment module."""
    import subprocess
    import sys

    run = request.getfixturevalue(model)
    clip = write_long(tmp_path / "c.mkv", 2.0, video_frames=20, fps=Fraction(10))
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "karmma", "predict", str(run), "--clip", str(clip)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    # scipy.signal computes the generic video format's spectrogram (SciPy's STFT): only that model loads it
    heavy = ("onnx", "h5py") if model == "video_model" else ("onnx", "h5py", "scipy.signal")
    bad = [m for m in loaded if m.startswith(("karmma.data.readers", "karmma.data.store_writer", "karmma.experiments"))
           or m in heavy]  # fmt: skip
    assert "karmma.deploy.predict" in loaded and bad == []
