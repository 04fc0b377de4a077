"""The robot-side runtime (`karmma stream`, `karmma export --pipeline`, :mod:`karmma.runtime`):
replayed clips with scripted stalls (a paused camera, a black camera, an audio track ending early)
give the coverage each token's time span really had, and the predictions follow only the streams
that are alive; the whole-pipeline export runs with torch blocked and matches PyTorch; a live
source (an lavfi test pattern) streams; a long replay keeps memory flat and drops no hop. The
model is trained through the CLI on EPIC-format media (efficientnet extractors)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from karmma.cli import main
from karmma.errors import DataError
from karmma.runtime import AudioSource, SignalSource, VideoSource, load
from tests.hostile import train_clip_model
from tests.media_trees import clip_frames, tone, write_clip

REPO = Path(__file__).resolve().parents[1]
BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked here ({name})")
sys.meta_path.insert(0, Block())
from karmma.cli import main
from karmma.errors import DataError
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def deploy(tmp_path_factory):
    """(run folder, export folder) of an EPIC-format student with efficientnet extractors."""
    root = tmp_path_factory.mktemp("stream")
    run = train_clip_model(root, "epic100", "efficientnet")
    assert main(["export", str(run), "--pipeline", "--out", str(root / "deploy")]) == 0
    return run, root / "deploy"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """6 s at 25 fps with a 6 s tone, and the same video with a tone ending at 3.5 s."""
    d = tmp_path_factory.mktemp("clips")
    frames = clip_frames(150, size=(72, 96), kind=1)
    return {"full": write_clip(d / "full.mp4", frames, 25, tone(6.0, 660.0)),
            "short_audio": write_clip(d / "short.mp4", frames, 25, tone(3.5, 660.0))}  # fmt: skip


def _no_torch(tmp_path: Path, *argv: str, importtime: bool = False) -> subprocess.CompletedProcess:
    script = tmp_path / "no_torch.py"
    script.write_text(BLOCK_TORCH)
    flags = ["-X", "importtime"] if importtime else []
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *flags, str(script), *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=tmp_path)  # fmt: skip


def _probs(out: dict) -> dict:
    return {task: {cid: p for cid, _, p in rows} for task, rows in out["topk"].items()}


def _close(a: dict, b: dict, tol: float = 1e-4) -> bool:
    return a.keys() == b.keys() and all(abs(a[t][c] - b[t].get(c, np.inf)) <= tol for t in a for c in a[t])


def test_the_pipeline_export_runs_without_torch_and_matches_pytorch(deploy, clips, tmp_path):
    run, folder = deploy
    assert sorted(p.name for p in folder.iterdir()) == ["backbone_lite0.onnx", "fusion.onnx", "pipeline.json"]
    r = _no_torch(tmp_path, "predict", folder, "--clip", clips["full"], "--topk", "400", "--json", tmp_path / "p.json",
                  importtime=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = [ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")]
    heavy = ("torch", "onnx", "scipy.signal", "h5py", "karmma.data.readers", "karmma.data.store_writer",
             "karmma.experiments", "karmma.engine")  # fmt: skip
    assert "onnxruntime" in loaded and [m for m in loaded if m in heavy or m.startswith(heavy[4:])] == []
    onnx_out = json.loads((tmp_path / "p.json").read_text())
    torch_out = load(run).predict_clip(clips["full"], topk=400)
    assert onnx_out["present"] == torch_out["present"] == ["rgb", "flow", "audio"]
    assert _close(_probs(onnx_out), _probs(torch_out))
    assert [r[0] for r in onnx_out["topk"]["verb"][:1]] == [r[0] for r in torch_out["topk"]["verb"][:1]]
    # the stream too: hop by hop, the torch-free run and PyTorch agree
    r = _no_torch(tmp_path, "stream", folder, "--video", clips["full"], "--topk", "400", "--out", tmp_path / "s.jsonl")
    assert r.returncode == 0, r.stderr[-3000:]
    hops = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    ref = list(load(run).stream([VideoSource(str(clips["full"])), AudioSource(str(clips["full"]))], topk=400))
    assert len(hops) == len(ref) == 12 and [h["t"] for h in hops] == [0.5 * k for k in range(1, 13)]
    assert all(_close(_probs(a), _probs(b)) and a["coverage"] == b["coverage"] for a, b in zip(hops, ref))


def test_scripted_stalls_give_the_coverage_each_token_had(deploy, clips):
    _, folder = deploy
    predictor = load(folder)
    video = VideoSource(str(clips["short_audio"]), faults=[(2.0, 4.5, "pause"), (5.0, 6.0, "black")])
    hops = {h["t"]: h for h in predictor.stream([video, AudioSource(str(clips["short_audio"]))], hop=0.5, topk=400)}
    assert sorted(hops) == [0.5 * k for k in range(1, 13)] and all(h["dropped_hops"] == 0 for h in hops.values())
    # before the first full window, the part not yet seen is absent
    assert hops[0.5]["coverage"] == {"rgb": 0.25, "flow": 0.25, "audio": 0.25}
    assert hops[2.0]["coverage"]["rgb"] == 1.0
    # the camera paused from 2 to 4.5 s: the window [1, 3) had frames for its first half only
    assert hops[3.0]["coverage"]["rgb"] == 0.5
    assert hops[4.5]["coverage"]["rgb"] == 0.0 and "rgb" in hops[4.5]["absent"] and "flow" in hops[4.5]["absent"]
    # black from 5 to 6 s (black frames, found by the detector): [4, 6) is a quarter paused and half black
    assert hops[5.0]["coverage"]["rgb"] == 0.25 and hops[6.0]["coverage"]["rgb"] == 0.25
    # the audio track ends at 3.5 s: [3, 5) is covered for a quarter of its tokens (32 of them)
    assert hops[5.0]["coverage"]["audio"] == pytest.approx(0.25, abs=1 / 32)
    assert hops[6.0]["coverage"]["audio"] == 0.0 and "audio" in hops[6.0]["absent"]
    # with the camera dead, the prediction is the audio's alone: dead tokens carry nothing
    sources = [VideoSource(str(clips["short_audio"])), AudioSource(str(clips["short_audio"]))]
    alone = {h["t"]: h for h in predictor.stream(sources, hop=0.5, modalities=["audio"], topk=400)}
    assert _close(_probs(hops[4.5]), _probs(alone[4.5]), tol=1e-6)
    assert not _close(_probs(hops[2.0]), _probs(alone[2.0]), tol=1e-6)  # ... and not while it works


def test_a_live_test_pattern_streams_in_real_time(deploy):
    _, folder = deploy
    sources = [VideoSource("testsrc=size=320x240:rate=25", "lavfi"),
               AudioSource("sine=frequency=440:sample_rate=24000", "lavfi")]  # fmt: skip
    hops = list(load(folder).stream(sources, hop=0.5, max_hops=3))
    assert [h["t"] for h in hops] == [0.5, 1.0, 1.5]
    assert [h["coverage"]["rgb"] for h in hops] == [0.25, 0.5, 0.75]
    assert all(h["present"] == ["rgb", "flow", "audio"] and h["ms"]["total"] > 0 for h in hops)


def test_stream_cli_writes_one_line_per_hop_and_refuses_bad_sources(deploy, clips, tmp_path, capsys):
    _, folder = deploy
    out = tmp_path / "hops.jsonl"
    assert main(["stream", str(folder), "--video", str(clips["full"]), "--max-hops", "3", "--out", str(out),
                 "--modalities", "rgb+audio", "--topk", "2"]) == 0  # fmt: skip
    hops = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(hops) == 3 and set(hops[0]["coverage"]) == {"rgb", "audio"} and len(hops[0]["topk"]["verb"]) == 2
    assert set(hops[0]["ms"]) >= {"video", "backbone", "audio", "fusion", "total"}
    capsys.readouterr()
    assert main(["stream", str(folder), "--video", str(tmp_path / "nope.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["stream", str(folder), "--video", str(clips["full"]), "--signal", "imu=x.csv"]) == 2
    assert "signal modalities are []" in capsys.readouterr().err
    assert main(["stream", str(folder), "--video", str(clips["full"]), "--fault", "video:melt:1-2"]) == 2
    assert "pause, black, end" in capsys.readouterr().err
    assert main(["predict", str(folder), "--clip", "rtsp://camera.local/stream"]) == 2
    assert "karmma stream MODEL --video rtsp://camera.local/stream" in capsys.readouterr().err
    assert main(["predict", str(folder), "--clip", str(clips["full"]), "--no-flow"]) == 0
    assert "flow: left out by --no-flow" in capsys.readouterr().out


def test_a_signal_stream_is_sampled_and_held_and_its_gaps_are_absent(tmp_path):
    """A CSV signal (an IMU) with a 1 s gap: the tokens of the gap are absent, the rest present."""
    from karmma.extractors.families import pool_family
    from karmma.modalities import ModalitySpec
    from karmma.runtime.predictor import Predictor

    seen = []

    def fusion(tokens, present):
        seen.append(np.asarray(present))
        return {"action": np.zeros((1, 3), np.float32)}

    ex = {"reader": "video", "encoder": "pool", "feature_set": "student", "kinds": {"imu": ["signal", 2]}}
    pred = Predictor([ModalitySpec("imu", 8, 4)], {"action": 3}, {}, fusion, ex, pool_family, "onnxruntime")
    t = np.arange(0, 4, 0.01)
    t = t[(t < 1.0) | (t >= 2.0)]
    csv = tmp_path / "imu.csv"
    csv.write_text("t,ax,ay\n" + "".join(f"{x:.3f},{np.sin(x):.4f},{np.cos(x):.4f}\n" for x in t))
    hops = {h["t"]: h for h in pred.stream([SignalSource("imu", str(csv))], hop=0.5, window=2.0)}
    assert hops[1.0]["coverage"]["imu"] == 0.5  # [-1, 0) not yet seen
    assert hops[2.0]["coverage"]["imu"] == 0.5  # [0, 1) then the gap
    assert hops[3.0]["coverage"]["imu"] == 0.5 and hops[4.0]["coverage"]["imu"] == 1.0
    bad = tmp_path / "bad.csv"
    with pytest.raises(DataError, match="line 1 has 3 channels; imu has 2"):  # nothing came of it: said so
        bad.write_text("0,1,2,3\n")
        list(pred.stream([SignalSource("imu", str(bad))], hop=0.5))
    bad.write_text("".join(f"{x / 10},1,2\n" for x in range(30)) + "3.0,1,2,3\n")
    stream = pred.stream([SignalSource("imu", str(bad))], hop=0.5)
    hops = list(stream)  # the predictions up to the bad line, and why the source stopped
    assert len(hops) == 6 and "line 31 has 3 channels" in hops[-1]["source_errors"]["imu"]
    assert "line 31" in stream.errors["imu"]


@pytest.mark.slow
def test_a_long_replay_keeps_memory_flat_and_drops_no_hop(deploy, tmp_path):
    """Three minutes of video and audio, replayed as fast as possible."""
    from tests.test_hostile_clip import write_long

    _, folder = deploy
    clip = write_long(tmp_path / "long.mkv", 180.0, video_frames=1800, fps=Fraction(10))
    rss = []
    hops = 0
    for h in load(folder).stream([VideoSource(str(clip)), AudioSource(str(clip))], hop=0.5):
        hops += 1
        assert h["dropped_hops"] == 0 and h["coverage"]["rgb"] > 0
        if hops % 20 == 0:
            rss.append(int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20)
    assert hops == 360
    assert max(rss[2:]) - rss[2] < 30, rss  # MiB, after the first 30 s have warmed the caches


def test_frames_pushed_by_the_application_stream_like_a_camera(deploy):
    """The ROS 2 path (docs/deploy.md): a callback pushes frames of any size with its own stamps."""
    import threading
    import time

    from karmma.runtime import PushSource

    _, folder = deploy
    camera = PushSource("video")
    frames = clip_frames(40, size=(120, 160), kind=2)

    def publish() -> None:
        for k, f in enumerate(frames):
            camera.push(1000.0 + k / 20, f)  # a ROS stamp: seconds since some epoch
            time.sleep(1 / 20)
        camera.close()

    threading.Thread(target=publish, daemon=True).start()
    hops = list(load(folder).stream([camera], hop=0.5))
    assert [h["t"] for h in hops][:3] == [0.5, 1.0, 1.5] and len(hops) >= 4
    assert hops[2]["coverage"]["rgb"] >= 0.5 and hops[2]["present"] == ["rgb", "flow"]
    assert all(h["dropped_hops"] == 0 for h in hops)


def _imu_predictor():
    from karmma.extractors.families import pool_family
    from karmma.modalities import ModalitySpec
    from karmma.runtime.predictor import Predictor

    ex = {"reader": "video", "encoder": "pool", "feature_set": "student", "kinds": {"imu": ["signal", 2]}}
    fusion = lambda tokens, present: {"action": np.zeros((1, 3), np.float32)}  # noqa: E731
    return Predictor([ModalitySpec("imu", 8, 4)], {"action": 3}, {}, fusion, ex, pool_family, "onnxruntime")


def test_signal_clocks_that_restart_leap_or_count_nanoseconds_are_bridged_not_hung(tmp_path, caplog):
    """A logger restarted mid-file, a clock set after boot, `rostopic echo -p` nanoseconds, quantised
    stamps, a dense signal whose window holds more rows than the ring's bound: each streams to the end."""
    pred = _imu_predictor()
    csv = tmp_path / "imu.csv"
    t = np.arange(0, 3, 0.01)
    csv.write_text("# imu\nt,ax,ay\n" + "".join(f"{x:.2f},1,2\n" for x in [*t, *t, *(t + 1e6)]))
    with caplog.at_level(logging.WARNING):
        hops = list(pred.stream([SignalSource("imu", str(csv))], hop=0.5))
    assert len(hops) == 18 and hops[-1]["coverage"]["imu"] == 1.0 and "went back by 2.99 s" in caplog.text
    csv.write_text("%time,ax,ay\n" + "".join(f"{1_700_000_000_000_000_000 + k * 10_000_000},1,2\n" for k in range(300)))
    hops = list(pred.stream([SignalSource("imu", str(csv), time_unit=1e-9)], hop=0.5))
    assert [h["t"] for h in hops] == [0.5 * k for k in range(1, 7)] and hops[3]["coverage"]["imu"] == 1.0
    dense = np.arange(0, 8, 1 / 4000)  # 4 kHz, a 6 s window: 24,000 rows, the ring bound set to 5,000 below
    csv.write_text("".join(f"{x:.5f},1,2\n" for x in dense))
    src = SignalSource("imu", str(csv))
    stream = pred.stream([src], hop=0.5, window=6.0)
    stream.sources[0].ring.max_items = 5000
    with caplog.at_level(logging.WARNING):
        hops = list(stream)  # it ends, hops on time, and the window keeps what the bound allows
    assert [h["t"] for h in hops] == [0.75 * k for k in range(1, 12)] and "ring's bound of 5000" in caplog.text
    assert 0 < hops[-1]["coverage"]["imu"] < 0.5


def test_pushed_frames_are_copied_checked_and_closing_never_blocks(deploy):
    from karmma.runtime import PushSource

    _, folder = deploy
    cam = PushSource("video", max_queue=2)
    buf = np.zeros((48, 64, 3), np.uint8)
    for k in range(3):  # an SDK reusing one buffer: each frame keeps its own pixels
        buf[:] = k
        cam.push(k / 10, buf)
    cam.close()  # the queue is full: close drops the oldest instead of blocking
    assert [int(x[0, 0, 0]) for _, x in list(cam._q.queue)[:-1]] == [2]
    bad = PushSource("video")
    bad.push(0.0, np.zeros((48, 64), np.uint8))  # grey: not (H, W, 3)
    bad.close()
    with pytest.raises(DataError, match=r"push \(H, W, 3\) uint8 RGB frames"):
        list(load(folder).stream([bad], hop=0.5))


def test_hostile_arguments_and_folders_are_refused_with_the_fix(deploy, clips, tmp_path, capsys):
    run, folder = deploy
    assert main(["stream", str(folder), "--video", str(clips["full"]), "--hop", "inf"]) == 2
    assert "below an hour" in capsys.readouterr().err
    assert main(["stream", str(tmp_path / "nope"), "--video", str(clips["full"])]) == 2
    assert "does not exist: give an export folder" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "pipeline.json").write_text("{}")
    (mine / "thesis.tex").write_text("years of work")
    assert main(["export", str(run), "--pipeline", "--out", str(mine)]) == 2
    assert "not an earlier pipeline export" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"
    spec = json.loads((folder / "pipeline.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).symlink_to(f)
    (broken / "pipeline.json").unlink()
    (broken / "pipeline.json").write_text(json.dumps({k: v for k, v in spec.items() if k != "extractor"}))
    assert main(["predict", str(broken), "--clip", str(clips["full"])]) == 2
    assert "not a karmma pipeline spec" in capsys.readouterr().err
