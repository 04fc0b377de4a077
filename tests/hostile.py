"""Helpers for the hostile-user tests: stores written by the library, runs trained from the
shipped presets through the CLI, and a one-call CLI runner returning (rc, stdout, stderr)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from karmma.cli import main
from karmma.config import SyntheticConfig
from karmma.data.dataset import FeatureSet
from karmma.data.store import write_store
from karmma.data.synthetic import generate
from karmma.modalities import ModalitySpec

SMALL = SyntheticConfig(num_train=80, num_val=40, num_verbs=3, num_nouns=4, absent_rate=0.2, seed=1)
# Shipped preset, one quick epoch; the preset's dropout (0.1) and modality dropout stay on.
QUICK = ["--set", "optim.epochs=1", "--set", "optim.batch_size=32", "--no-progress"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def synthetic_store(path: Path, split: str = "train", **changes) -> Path:
    """A teacher+student store written by :func:`karmma.data.store.write_store`."""
    sets = generate(dataclasses.replace(SMALL, **changes))[split]
    return write_store(path, sets)


def renamed(fs: FeatureSet, names: dict[str, str] | None = None, dims: dict[str, int] | None = None) -> FeatureSet:
    """``fs`` with modalities renamed (e.g. depth in the rgb slot) or features cut to other dims."""
    names, dims = names or {}, dims or {}
    specs, feats = [], {}
    for s in fs.specs:
        new = ModalitySpec(names.get(s.name, s.name), s.num_tokens, dims.get(s.name, s.dim))
        x = np.asarray(fs.features[s.name])
        feats[new.name] = np.ascontiguousarray(np.resize(x, (len(x), s.num_tokens, new.dim)))
        specs.append(new)
    return dataclasses.replace(fs, specs=specs, features=feats)


def store_args(train: Path, val: Path | None = None, feature_set: str = "teacher") -> list[str]:
    args = ["--set", "data.kind=store", "--set", f"data.train={train}", "--set", f"data.feature_set={feature_set}"]
    return args + (["--set", f"data.val={val}"] if val else [])


def corrupt_chunk(path: Path, dataset: str, chunk: int = 0, nbytes: int = 256) -> None:
    """Overwrite ``nbytes`` in the middle of one stored chunk with random bytes."""
    import h5py

    with h5py.File(path, "r") as h5:
        info = h5[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + max(0, info.size // 2 - nbytes // 2))
        f.write(np.random.default_rng(0).bytes(min(nbytes, info.size)))


def cli_limited(*args: str, limit_gb: float = 3.0, timeout: float = 600, env: dict | None = None,
                cwd: str | Path | None = None) -> tuple[int, str, str]:  # fmt: skip
    """``python -m karmma ARGS`` in a child process whose address space is capped at ``limit_gb``
    (RLIMIT_AS): a file that makes karmma allocate past it fails the test with a MemoryError
    instead of taking the machine. Importing karmma (torch, h5py, PyAV) needs about 2 GB of it."""
    import os
    import resource
    import subprocess
    import sys

    limit = int(limit_gb * (1 << 30))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    child_env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", **(env or {})}
    root = Path(__file__).resolve().parents[1]
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), child_env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-m", "karmma", *map(str, args)], preexec_fn=cap, capture_output=True,
                       text=True, timeout=timeout, env=child_env, cwd=cwd)  # fmt: skip
    return r.returncode, r.stdout, r.stderr


@contextlib.contextmanager
def small_disk(where: Path, size: str = "256k", read_only: bool = False):
    """A real filesystem of ``size`` (tmpfs) mounted at ``where``, read-only if asked: a full or
    read-only ``--out`` as a user meets it. Skips the test where mounting is not permitted."""
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({r.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def train_demo_student(run: Path) -> Path:
    """The demo's student architecture trained from its shipped preset (dropout 0.1 on), one quick
    epoch on a small synthetic set, through the CLI."""
    assert main(["train", "--config", "demo_student", "--run-dir", str(run), *QUICK,
                 "--set", "data.synthetic.num_train=96", "--set", "data.synthetic.num_val=32"]) == 0  # fmt: skip
    return run


def train_clip_model(root: Path, reader: str, encoder: str = "pool") -> Path:
    """A model whose extractor is recorded, for ``predict --clip``: ``video`` (rgb, flow, 64-band
    log-mel: the video folder's default options; six clips with sound) or ``epic100`` (rgb, flow,
    128-band log-mel; a tiny EPIC tree and ``test.h5``, an unlabelled store of two segments for
    ``karmma submit``), extracted and trained (student preset, one epoch) through the CLI, with the
    extractor family ``encoder``.
    Returns the run folder."""
    from tests.media_trees import clip_frames, epic_csv, epic_tree, tone, write_clip

    if reader == "video":
        rows = []
        for i in range(6):
            write_clip(root / f"c{i}.mp4", clip_frames(12, kind=i % 2), 12, tone(1.0, 440.0 * (1 + i % 2)))
            rows.append(f"c{i},{'ab'[i % 2]},c{i}.mp4\n")
        (root / "labels.csv").write_text("id,label,video\n" + "".join(rows))
        argv, config = ["extract", "video", "--root", str(root)], "demo_student"
    else:
        epic_tree(root / "tree", frames_too=False)
        rows = [(f"P01_01_{k}", "P01_01", 1 + 10 * k, 20 + 10 * k, k % 2, k % 3) for k in range(4)]
        ann = epic_csv(root / "EPIC_100_train.csv", rows)
        rows = [("P02_01_0", "P02_01", 1, 30, 0, 0), ("P02_01_1", "P02_01", 31, 60, 0, 0)]
        test = epic_csv(root / "EPIC_100_test_timestamps.csv", rows, labelled=False)
        argv = ["extract", "epic100", "--root", str(root / "tree"), "--annotations"]
        assert main([*argv, str(test), "--out", str(root / "test.h5"), "--encoder", encoder, "--no-progress"]) == 0
        argv, config = [*argv, str(ann)], "epic100_student"
    argv += ["--encoder", encoder]
    assert main([*argv, "--out", str(root / "train.h5"), "--no-progress"]) == 0
    run = root / "run"
    store = root / "train.h5"
    assert main(["train", "--config", config, "--run-dir", str(run), *QUICK, *store_args(store, store, "student")]) == 0
    return run
