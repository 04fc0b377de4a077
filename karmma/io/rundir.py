"""A run folder's guards: one process at a time, and resume only the run that was started there.

* :class:`RunLock` holds an exclusive ``flock`` on ``RUN/.lock`` for the whole run; a second
  ``karmma train``/``distill`` into the same folder is refused at once, naming the holder's pid.
  The kernel drops the lock when its process dies, so a killed run never leaves a stale lock.
* :func:`fingerprint` summarises what a run's result depends on: the config (less the keys that
  only say *where* or *how often* to save) and the training data (ids, labels, presence, shapes
  and a strided sample of the feature values), plus any extras (the teacher's weights).
  :func:`check_resume` refuses to resume a run folder whose fingerprint differs, naming what
  changed and the fix, rather than mixing two runs in one model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from karmma.config_migration import migrate_experiment
from karmma.errors import CheckpointError, RunMismatchError

log = logging.getLogger(__name__)

# Config keys that may differ on resume: where and how often to save, and ``optim.epochs``
# (extending a finished run; its learning-rate schedule is then recomputed for the new length).
RESUME_FREE_KEYS = (
    "device",
    "checkpoint_every",
    "checkpoint_epochs",
    "keep_checkpoints",
    "optim.epochs",
    "compile",
    "data.num_workers",
)
FINGERPRINT_FILE = "fingerprint.json"


class RunLock:
    """``with RunLock(run_dir): ...`` — exclusive use of a run folder by this process."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(
                f"{self.path.parent}: another karmma process (pid {holder}) is using this run folder; "
                "wait for it to finish, or pass another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _hash_array(h: Any, a: Any) -> None:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())


def data_fingerprint(data: Any, samples: int = 32) -> str:
    """sha256 of a FeatureSet's (or PairedFeatureSet's) ids, labels, presence, specs and features
    of ``samples`` rows spread over the set."""
    h = hashlib.sha256()
    for fs in data.parts():
        h.update(json.dumps([s.to_dict() for s in fs.specs]).encode())
        h.update(json.dumps(fs.tasks, sort_keys=True).encode())
        h.update("\n".join(fs.ids).encode())
        _hash_array(h, fs.present)
        for extra in (getattr(fs, "token_present", None), getattr(fs, "durations", None)):
            if extra is not None:  # what older releases did not have leaves their fingerprints as they were
                _hash_array(h, extra)
        for task in sorted(fs.labels):
            _hash_array(h, fs.labels[task])
        rows = np.unique(np.linspace(0, len(fs) - 1, num=min(samples, len(fs))).astype(np.int64))
        for s in fs.specs:
            _hash_array(h, fs._read(s.name, rows) if len(rows) else np.zeros(0))
    return h.hexdigest()


def module_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's weights and buffers (e.g. the frozen teacher of a distillation run)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        _hash_array(h, t.detach().cpu().numpy())
    return h.hexdigest()


def fingerprint(config: Mapping[str, Any], data: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    fp = {"config": dict(config), "data": data_fingerprint(data), "extra": dict(extra or {})}
    return json.loads(json.dumps(fp))  # as it reads back from disk


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_defaults() -> dict[str, Any]:
    from karmma.config import ExperimentConfig

    return _flatten(json.loads(json.dumps(ExperimentConfig().to_dict())))


def check_resume(run_dir: Path, new: dict[str, Any]) -> None:
    """Refuse to resume ``run_dir`` when its recorded fingerprint differs from ``new``."""
    path = run_dir / FINGERPRINT_FILE
    if not path.is_file():
        log.warning("%s has no %s (an older run): resuming without checking config and data", run_dir, FINGERPRINT_FILE)
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e}); pass --no-resume to start over") from e
    # A run started by karmma 0.1 recorded augmentation and late fusion as model.* keys.
    a, b = _flatten(migrate_experiment(old.get("config", {}), str(path), warn=False)), _flatten(new["config"])
    a.setdefault("recipe", "paper")  # karmma < 0.3 trained every config as written
    # A key the run's karmma version did not have yet is no change when it is at its default.
    a.update({k: v for k, v in _config_defaults().items() if k not in a and b.get(k) == v})
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_FREE_KEYS)
    if a.get("optim.epochs") != b.get("optim.epochs"):
        log.warning(
            "%s: resuming with optim.epochs=%s (was %s); the learning-rate schedule follows the new length",
            run_dir,
            b.get("optim.epochs"),
            a.get("optim.epochs"),
        )
    reasons = [f"config keys {changed[:8]}" if changed else ""]
    if old.get("data") != new["data"]:
        reasons.append("the training data (samples, labels, presence or features)")
    extra_changed = sorted(
        k for k in set(old.get("extra", {})) | set(new["extra"]) if old.get("extra", {}).get(k) != new["extra"].get(k)
    )
    if extra_changed:
        reasons.append(", ".join(extra_changed))
    reasons = [r for r in reasons if r]
    if reasons:
        raise RunMismatchError(
            f"{run_dir} holds a run started with other {'; '.join(reasons)}; resuming would mix the two. "
            "Pass --no-resume to start over in this folder, or use another --run-dir"
        )


def start_fresh(run_dir: Path, fp: dict[str, Any]) -> None:
    """Begin a new run in ``run_dir``: drop earlier checkpoints, record the fingerprint."""
    from karmma.io.checkpoint import write_json_atomic

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / FINGERPRINT_FILE, {**fp, "torch_threads": torch.get_num_threads()})
