"""The data path at EPIC scale, measured in one run and printed as tables with ratios:

1. writes: ``FeatureStoreWriter.write`` one sample at a time (as extraction does) vs ``write_all``;
2. the loader alone: batches of a training epoch from disk (0/1/2 workers) vs from memory;
3. a training epoch from disk vs from memory (small fusion model, EPIC-100 heads);
4. peak RSS: a float16 store held in memory vs its size, and training from a store larger than the
   in-memory limit (read lazily) — each in a fresh process;
5. the teacher-logit cache for EPIC-100 train: dense float32 vs karmma's bounded cache.

    python benchmarks/data_path.py [--samples 4000] [--large-gb 2.2] [--skip-large]

Stores are EPIC-shaped: 3 modalities x 16 tokens x 1024 features (random, i.e. incompressible).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from karmma.data.loader import batch_loader  # noqa: E402
from karmma.data.order import epoch_order  # noqa: E402
from karmma.data.store import FeatureStoreWriter, open_store  # noqa: E402
from karmma.modalities import ModalitySpec  # noqa: E402

TASKS = {"verb": 97, "noun": 300, "action": 3806}
MODALITIES = ("rgb", "flow", "audio")
EPIC_TRAIN = 67_217


def specs(tokens: int, dim: int) -> list[ModalitySpec]:
    return [ModalitySpec(m, tokens, dim) for m in MODALITIES]


def write_store(path: Path, n: int, tokens: int, dim: int, dtype: str, bulk: bool, seed: int = 0) -> float:
    """Write an EPIC-shaped store of ``n`` samples; returns samples/s (feature generation excluded)."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((64, tokens, dim), dtype=np.float32)  # cycled: generation is not timed
    labels = {t: rng.integers(0, c, n) for t, c in TASKS.items()}
    present = rng.random((n, len(MODALITIES))) < 0.9
    present[:, 0] = True
    ids = [f"s{i:06d}" for i in range(n)]
    t0 = time.perf_counter()
    with FeatureStoreWriter(path, ids, labels, TASKS, {"teacher": specs(tokens, dim)}, resume=False, dtype=dtype) as w:
        if bulk:
            feats = {m: pool[np.arange(n) % 64] for m in MODALITIES}
            t0 = time.perf_counter()
            w.write_all({"teacher": feats}, present)
        else:
            for i in range(n):
                w.write(i, {"teacher": {m: pool[(i + k) % 64] for k, m in enumerate(MODALITIES)}}, present[i])
    return n / (time.perf_counter() - t0)


def loader_rate(data, batch: int, workers: int, window: int = 16) -> float:
    order = epoch_order(len(data), torch.Generator().manual_seed(0), data.chunk_rows, window)
    rows = [order[i : i + batch] for i in range(0, len(order), batch)]
    t0 = time.perf_counter()
    n = sum(len(b) for b in batch_loader(data, rows, num_workers=workers))
    return n / (time.perf_counter() - t0)


MODELS = {  # the shipped EPIC-100 student preset, and a small fusion block (reading weighs most there)
    "epic100_student preset": [],
    "small (128 x 2, batch 64)": ["model.dim=128", "model.depth=2", "model.attn_heads=4", "model.head_hidden=128",
                                  "optim.batch_size=64"],
}  # fmt: skip


def train_rate(path: Path, in_memory: bool, workers: int, out: Path, model: str = "epic100_student preset") -> float:
    from karmma.config import load_config
    from karmma.engine.train import fit
    from karmma.models import KARMMA
    from karmma.presets import preset_path
    from karmma.tasks import ClassificationTask

    data = open_store(path, in_memory=in_memory)
    overrides = ["optim.epochs=1", f"data.num_workers={workers}", "data.feature_set=teacher", *MODELS[model]]
    cfg = load_config(preset_path("epic100_student"), overrides)
    torch.manual_seed(0)
    model = KARMMA(data.specs, data.tasks, cfg.model)
    return fit(ClassificationTask(model), data, cfg, out, resume=False).samples_per_second


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would include the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(argv: list[str]) -> None:
    """Run in a fresh process: print peak RSS (MB) after the job named by argv."""
    job, path = argv[0], Path(argv[1])
    base = peak_rss_mb()
    if job == "cache":
        lookups = cache_lookups(path, int(argv[2]))
        out = {"lookups_per_s": lookups}
    elif job == "hold":
        data = open_store(path, in_memory=True)
        size = sum(a.nbytes for a in data.features.values())
        out = {"held_mb": size / 2**20}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rate = train_rate(path, in_memory=False, workers=int(argv[2]), out=Path(tmp))
        out = {"samples_per_s": rate}
    out.update(peak_mb=peak_rss_mb(), base_mb=base)
    print(json.dumps(out))


def cache_lookups(path: Path, n: int, steps: int = 200, batch: int = 256) -> float:
    """Write an on-disk teacher-logit cache of ``n`` samples (EPIC-100 heads, 4 modalities, random
    logits), then time ``steps`` distillation lookups of random samples and subsets."""
    from karmma.tasks.teacher_logits import TeacherLogits, _open_file

    rng = np.random.default_rng(0)
    h5, _ = _open_file(path, "bench", n, 15, TASKS)
    for task, c in TASKS.items():
        for j in range(15):
            for a in range(0, n, 4096):
                h5[task][j, a : a + 4096] = rng.standard_normal((min(4096, n - a), c), dtype=np.float32)
    h5.close()
    from karmma.tasks.teacher_logits import open_teacher_logits

    cache: TeacherLogits = open_teacher_logits(path, list(TASKS))
    t0 = time.perf_counter()
    for _ in range(steps):
        cache.lookup(torch.from_numpy(rng.integers(0, n, batch)), torch.from_numpy(rng.integers(0, 15, batch)))
    return steps * batch / (time.perf_counter() - t0)


def in_child(*argv: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" + "---:|" * (len(rows[0]) - 1))
    for r in rows[1:]:
        print("| " + " | ".join(str(c) for c in r) + " |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--large-gb", type=float, default=2.2, help="size of the store trained on lazily (RSS check)")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--cache-samples", type=int, default=20000, help="samples of the on-disk logit cache measured")
    p.add_argument("--dir", default=None, help="where to write the stores (default: a temporary folder)")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"stores: {a.samples} samples x 3 modalities x {a.tokens} x {a.dim}")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        tmp = Path(tmp)
        rows = [("dtype", "per-sample write (samples/s)", "bulk write_all (samples/s)", "ratio", "file MB")]
        for dtype in ("float32", "float16"):
            single = write_store(tmp / f"{dtype}.h5", a.samples, a.tokens, a.dim, dtype, bulk=False)
            bulk = write_store(tmp / "bulk.h5", a.samples, a.tokens, a.dim, dtype, bulk=True)
            mb = (tmp / f"{dtype}.h5").stat().st_size / 2**20
            rows.append((dtype, f"{single:.0f}", f"{bulk:.0f}", f"{single / bulk:.2f}x", f"{mb:.0f}"))
        table("Writes", rows)

        rows = [("store", "source", "workers", "samples/s", "vs memory")]
        loader_best = 0.0
        for dtype in ("float32", "float16"):
            store = tmp / f"{dtype}.h5"
            disk, mem = open_store(store, in_memory=False), open_store(store, in_memory=True)
            base = loader_rate(mem, 64, 0)
            rows.append((dtype, "memory", 0, f"{base:.0f}", "1.00x"))
            uniform = loader_rate(disk, 64, 0, window=0)
            rows.append((dtype, "disk, uniform shuffle", 0, f"{uniform:.0f}", f"{uniform / base:.2f}x"))
            for w in (0, 1, 2):
                r = loader_rate(disk, 64, w)
                loader_best = max(loader_best, r)
                rows.append((dtype, "disk, chunk-aware shuffle", w, f"{r:.0f}", f"{r / base:.2f}x"))
        table("Loader alone (batches of 64, one epoch)", rows)

        rows = [("model", "store", "source", "workers", "train samples/s", "vs memory")]
        fastest = 0.0
        for model in MODELS:
            for dtype in ("float32", "float16"):
                path = tmp / f"{dtype}.h5"
                m = train_rate(path, True, 0, tmp / "run", model)
                fastest = max(fastest, m)
                rows.append((model, dtype, "memory", 0, f"{m:.0f}", "1.00x"))
                for w in (0, 1):
                    d = train_rate(path, False, w, tmp / "run", model)
                    rows.append((model, dtype, "disk", w, f"{d:.0f}", f"{d / m:.2f}x"))
        table("Training one epoch (EPIC-100 heads)", rows)
        print(f"\nfastest loader from disk / fastest training rate: {loader_best / fastest:.1f}x")

        f16 = tmp / "float16.h5"
        held = in_child("hold", str(f16))
        rows = [("job", "data MB", "file MB", "peak RSS MB", "RSS - interpreter MB")]
        rows.append(("float16 store held in memory", f"{held['held_mb']:.0f}", f"{f16.stat().st_size / 2**20:.0f}",
                     f"{held['peak_mb']:.0f}", f"{held['peak_mb'] - held['base_mb']:.0f}"))  # fmt: skip
        if not a.skip_large:
            n = int(a.large_gb * 2**30 / (3 * a.tokens * a.dim * 4))
            small, big = tmp / "small.h5", tmp / "large.h5"
            write_store(small, n // 20, a.tokens, a.dim, "float32", bulk=False)
            rate = write_store(big, n, a.tokens, a.dim, "float32", bulk=False)
            print(f"\nwrote {n} samples ({big.stat().st_size / 2**30:.2f} GiB) per sample at {rate:.0f} samples/s")
            for path, w in ((small, 0), (big, 0), (big, 2)):
                r = in_child("train", str(path), str(w))
                rows.append((f"training 1 epoch from disk, {w} workers ({r['samples_per_s']:.0f} samples/s)",
                             "-", f"{path.stat().st_size / 2**20:.0f}", f"{r['peak_mb']:.0f}",
                             f"{r['peak_mb'] - r['base_mb']:.0f}"))  # fmt: skip
        table("Peak resident memory (fresh processes; workers' memory not included)", rows)
        cache_table(tmp, a.cache_samples)


def cache_table(tmp: Path, n: int) -> None:
    from karmma.tasks.teacher_logits import dense_bytes, resident_bytes

    rows = [("teacher logits (EPIC-100 heads)", "modalities", "dense float32 GB", "karmma resident GB")]
    for m in (3, 4):
        dense = dense_bytes(EPIC_TRAIN, m, TASKS) / 1e9
        rows.append((f"{EPIC_TRAIN:,} samples (EPIC-100 train)", m, f"{dense:.1f}",
                     f"{resident_bytes(EPIC_TRAIN, m, TASKS) / 1e9:.2f} (bound)"))  # fmt: skip
    r = in_child("cache", str(tmp / "logits.h5"), str(n))
    file_gb = (tmp / "logits.h5").stat().st_size / 1e9
    grown = (r["peak_mb"] - r["base_mb"]) / 1e3
    rows.append((f"{n:,} samples, on disk ({file_gb:.1f} GB file), measured: {r['lookups_per_s']:.0f} lookups/s", 4,
                 f"{dense_bytes(n, 4, TASKS) / 1e9:.1f}", f"{grown:.2f} (peak RSS growth)"))  # fmt: skip
    table("Teacher-logit cache", rows)


if __name__ == "__main__":
    main()
