"""The robot-side runtime, measured in one run and printed as tables (docs/benchmarks.md):

1. per model (student, teacher) and modality subset, ``karmma stream`` on an export folder (no
   PyTorch) in a fresh process over a 25 fps 640x360 H.264 clip with 16 kHz AAC audio, replayed as
   fast as possible: cold start to the first prediction, per-hop latency (median and p95) per stage,
   real-time factor (seconds of media per second of wall clock), peak RSS;
2. the same in real time (``--realtime``) for the student's every-modality subset: hops skipped;
3. a long replay (default 10 minutes) of the student: RSS over time and hops dropped;
4. the torch-free export against PyTorch, hop by hop: max probability difference, top-1 agreement;
5. the stream's tokens against ``predict --clip``'s for the same 2 s (segment-local vs clip-wide
   normalisation): cosine similarity per modality.

    python benchmarks/stream.py [--work DIR] [--seconds 60] [--soak-minutes 10]

Models: EPIC-format media, ``karmma extract epic100 --encoder efficientnet`` (teacher Lite2 at
224 px, student Lite0 at 128 px), the EPIC presets trained one quick epoch (latency does not
depend on training; distillation does not change the student's architecture).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from karmma.modalities import all_subsets, subset_name  # noqa: E402

HOP = 0.5


def write_media(path: Path, seconds: float, size=(360, 640), fps: int = 25, rate: int = 16_000) -> Path:
    """A moving pattern with noise (H.264, veryfast) and a tone with noise (AAC, mono, ``rate`` Hz)."""
    import av

    if path.exists():
        return path
    rng = np.random.default_rng(0)
    h, w = size
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(tmp), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt, v.options = w, h, "yuv420p", {"preset": "veryfast"}
        a = c.add_stream("aac", rate=rate)
        a.layout = "mono"
        noise = rng.integers(0, 40, (16, h, w, 1), dtype=np.uint8)
        for k in range(int(seconds * fps)):
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = (xx + 4 * k) % 256
            img[..., 1] = (yy + 2 * k) % 256
            img[..., 2] = 128
            img = img + noise[k % 16]
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        t = np.arange(int(seconds * rate)) / rate
        x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        for i in range(0, len(x), 1024):
            f = av.AudioFrame.from_ndarray(x[None, i : i + 1024], format="flt", layout="mono")
            f.sample_rate, f.pts = rate, i
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    tmp.rename(path)
    return path


def build_models(work: Path) -> dict[str, tuple[Path, Path]]:
    """{model: (run folder, export folder)}, trained once per work folder."""
    from karmma.cli import main
    from tests.hostile import QUICK, store_args
    from tests.media_trees import epic_csv, epic_tree

    out = {m: (work / f"run_{m}", work / f"deploy_{m}") for m in ("student", "teacher")}
    if all((d / "pipeline.json").is_file() for _, d in out.values()):
        return out
    epic_tree(work / "tree", frames_too=False)
    rows = [(f"P01_01_{k}", "P01_01", 1 + 10 * k, 20 + 10 * k, k % 2, k % 3) for k in range(4)]
    ann = epic_csv(work / "EPIC_100_train.csv", rows)
    store = work / "train.h5"
    argv = ["extract", "epic100", "--root", str(work / "tree"), "--annotations", str(ann), "--encoder", "efficientnet"]
    assert main([*argv, "--out", str(store), "--no-progress"]) == 0
    for model, (run, folder) in out.items():
        cfg = f"epic100_{model}"
        assert main(["train", "--config", cfg, "--run-dir", str(run), *QUICK, *store_args(store, store, model)]) == 0
        assert main(["export", str(run), "--pipeline", "--out", str(folder)]) == 0
    return out


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stream_run(folder: Path, clip: Path, subset: str | None, realtime: bool = False, every: float = 1.0) -> dict:
    """``karmma stream`` in a fresh process: cold start, hops, wall times, RSS samples."""
    argv = [sys.executable, "-m", "karmma", "stream", str(folder), "--video", str(clip), "--hop", str(HOP)]
    argv += ["--modalities", subset] if subset else []
    argv += ["--realtime"] if realtime else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss.append((time.perf_counter() - t0, rss_mib(proc.pid)))
            done.wait(every)

    threading.Thread(target=sample, daemon=True).start()
    hops, times = [], []
    assert proc.stdout is not None
    for line in proc.stdout:
        times.append(time.perf_counter() - t0)
        hops.append(json.loads(line))
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait()
    done.set()
    if proc.returncode != 0:
        raise RuntimeError(err[-2000:])
    return {"hops": hops, "times": times, "rss": [r for r in rss if r[1] == r[1]]}


def summarise(run: dict) -> dict:
    from karmma.runtime.stream import stream_summary

    hops, times = run["hops"], run["times"]
    media = len(hops) * HOP
    return {"cold_start_s": times[0], "hops": len(hops), "dropped": hops[-1]["dropped_hops"],
            "rtf": (media - HOP) / max(times[-1] - times[0], 1e-9), "stages": stream_summary(hops),
            "rss_peak_mib": max(r for _, r in run["rss"])}  # fmt: skip


def predict_cold(models: dict, clip2s: Path, repeats: int = 3) -> dict:
    """``karmma predict MODEL --clip`` from process start to exit (median of ``repeats``): the run
    folder (PyTorch) and the export folder (onnxruntime)."""
    out = {}
    for model, (run, folder) in models.items():
        for name, path in (("PyTorch run folder", run), ("export folder", folder)):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "karmma", "predict", str(path), "--clip", str(clip2s)],
                               check=True, capture_output=True)  # fmt: skip
                times.append(time.perf_counter() - t0)
            out[f"{model} / {name}"] = float(np.median(times))
    return out


def agreement(run: Path, folder: Path, clip: Path, seconds: float) -> dict:
    """The export (onnxruntime) against the checkpoint (PyTorch), hop by hop, on ``seconds`` of ``clip``."""
    from karmma.runtime import AudioSource, VideoSource, load

    def hops(path: Path) -> list[dict]:
        sources = [VideoSource(str(clip), faults=[(seconds, 0, "end")]),
                   AudioSource(str(clip), faults=[(seconds, 0, "end")])]  # fmt: skip
        return list(load(path).stream(sources, hop=HOP, topk=10_000))

    a, b = hops(folder), hops(run)
    diff, same = 0.0, 0
    for x, y in zip(a, b):
        for task in x["topk"]:
            px = {c: p for c, _, p in x["topk"][task]}
            diff = max(diff, max(abs(p - px[c]) for c, _, p in y["topk"][task]))
        same += all(x["topk"][t][0][0] == y["topk"][t][0][0] for t in x["topk"])
    return {"hops": len(a), "max_prob_diff": diff, "top1_agree": same / max(1, len(a))}


def token_similarity(folder: Path, clip2s: Path) -> dict:
    """Cosine similarity of the stream's tokens (window [0, 2) s) and ``predict --clip``'s on a 2 s clip."""
    from karmma.runtime import AudioSource, VideoSource, load
    from karmma.runtime.clip import clip_sample

    pred = load(folder)
    ref = clip_sample(pred, clip2s, tuple(pred.modality_names))
    seen = {}
    original = pred.predict

    def capture(sample, **kw):
        seen.update({m: np.asarray(x) for m, x in sample.items()})
        return original(sample, **kw)

    pred.predict = capture  # type: ignore[method-assign]
    stream = pred.stream([VideoSource(str(clip2s)), AudioSource(str(clip2s))], hop=2.0, window=2.0, max_hops=1)
    list(stream)
    out = {}
    for m in ref:
        a, b = ref[m].astype(np.float64), seen[m].astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        out[m] = float(cos.mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/karmma_stream_bench")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the latency clip")
    ap.add_argument("--soak-minutes", type=float, default=10.0, help="length of the long replay (0: skip)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = build_models(work)
    clip = write_media(work / f"clip_{int(args.seconds)}s.mp4", args.seconds)
    clip2 = write_media(work / "clip_2s.mp4", 2.0)
    results: dict = {"latency": {}, "seconds": args.seconds}
    print(f"clip: {args.seconds:.0f} s, 25 fps 640x360 H.264, 16 kHz AAC; hop {HOP} s, window 2 s; "
          f"{os.cpu_count()} CPU cores; export folders (onnxruntime, no PyTorch)\n")  # fmt: skip
    print(
        "| model | modalities | cold start s | hop p50 ms | hop p95 ms | backbone p95 | video p95 | audio p95 | "
        "fusion p95 | real-time factor | peak RSS MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, (_, folder) in models.items():
        for subset in all_subsets(["rgb", "flow", "audio"]):
            s = summarise(stream_run(folder, clip, subset_name(subset)))
            results["latency"][f"{model}/{subset_name(subset)}"] = s
            st = s["stages"]
            p95 = lambda k, st=st: f"{st[k]['p95']:.0f}" if k in st else "-"  # noqa: E731
            print(f"| {model} | {subset_name(subset)} | {s['cold_start_s']:.2f} | {st['total']['median']:.0f} | "
                  f"{p95('total')} | {p95('backbone')} | {p95('video')} | {p95('audio')} | {p95('fusion')} | "
                  f"{s['rtf']:.1f} | {s['rss_peak_mib']:.0f} |", flush=True)  # fmt: skip
    lat = results["latency"]
    print("\n| modalities | teacher/student hop p95 |\n|---|---:|")
    for subset in all_subsets(["rgb", "flow", "audio"]):
        k = subset_name(subset)
        ratio = lat[f"teacher/{k}"]["stages"]["total"]["p95"] / lat[f"student/{k}"]["stages"]["total"]["p95"]
        print(f"| {k} | {ratio:.2f}x |")
    rt = summarise(stream_run(models["student"][1], clip, "rgb+flow+audio", realtime=True))
    results["realtime"] = rt
    print(f"\nreal time (--realtime), student rgb+flow+audio: {rt['hops']} hops, {rt['dropped']} skipped, "
          f"hop p95 {rt['stages']['total']['p95']:.0f} ms")  # fmt: skip
    if args.soak_minutes > 0:
        long = write_media(work / f"clip_{int(args.soak_minutes)}min.mp4", 60 * args.soak_minutes)
        run = stream_run(models["student"][1], long, None, every=5.0)
        s = summarise(run)
        rss = run["rss"]
        base = next((r for t, r in rss if t >= 20.0), rss[0][1])  # after 20 s of wall clock: warmed up
        results["soak"] = {**s, "rss": rss, "rss_growth_mib": rss[-1][1] - base}
        print(f"\nsoak: {args.soak_minutes:g} min replayed as fast as possible (student, rgb+flow+audio): "
              f"{s['hops']} hops (expected {int(60 * args.soak_minutes / HOP)}), {s['dropped']} dropped, "
              f"real-time factor {s['rtf']:.1f}; RSS {base:.0f} MiB after 20 s of wall clock, "
              f"{rss[-1][1]:.0f} MiB at the end (growth {rss[-1][1] - base:+.0f} MiB), "
              f"peak {s['rss_peak_mib']:.0f} MiB")  # fmt: skip
    print("\n| `karmma predict MODEL --clip` (2 s clip), process start to exit | seconds |\n|---|---:|")
    results["predict_clip_s"] = predict_cold(models, clip2)
    for k, v in results["predict_clip_s"].items():
        print(f"| {k} | {v:.2f} |")
    print("\n| model | hops | max prob diff (onnxruntime vs PyTorch) | top-1 agreement |\n|---|---:|---:|---:|")
    for model, (run_dir, folder) in models.items():
        a = agreement(run_dir, folder, clip, min(args.seconds, 20.0))
        results.setdefault("agreement", {})[model] = a
        print(f"| {model} | {a['hops']} | {a['max_prob_diff']:.1e} | {100 * a['top1_agree']:.0f}% |")
    print("\n| model | rgb | flow | audio |\n|---|---:|---:|---:|")
    for model, (_, folder) in models.items():
        sim = token_similarity(folder, clip2)
        results.setdefault("token_cosine", {})[model] = sim
        print(f"| {model} | " + " | ".join(f"{sim.get(m, float('nan')):.3f}" for m in ("rgb", "flow", "audio")) + " |")
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults: {work / 'results.json'}")


if __name__ == "__main__":
    main()
