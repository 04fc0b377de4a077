"""Checkpoints: safetensors tensors + JSON metadata, written atomically.

A model checkpoint is a folder::

    model.safetensors   weights
    model.json          {"format": "karmma-model", "specs", "tasks", "class_names", "model", ...}

A training checkpoint adds ``optimizer.safetensors`` / ``optimizer.json`` and ``state.json``
(epoch, step, metrics). Checkpoints of a run live in ``RUN/checkpoints/step-XXXXXXXX``; the file
``RUN/checkpoints/latest.json`` names the newest complete one. Each checkpoint is written into a
temporary folder, fsynced and renamed, and only then is ``latest.json`` replaced (``os.replace``):
a process killed at any moment leaves the previous checkpoint usable. Nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from karmma.config import model_config_from_json
from karmma.errors import CheckpointError, ConfigError
from karmma.faults import fault_point
from karmma.modalities import ModalitySpec
from karmma.models.addons import resolved
from karmma.models.karmma import KARMMA
from karmma.outputs import fsync_dir

log = logging.getLogger(__name__)

MODEL_FORMAT = "karmma-model"
# model.json's format version: 2 since karmma 0.2 (add-ons as nested configs under model.addons,
# no training-only keys); version 1 (0.1) is read through karmma.config_migration.
MODEL_VERSION = 2


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def model_metadata(model: KARMMA, class_names: dict[str, list[str]] | None = None, **extra: Any) -> dict:
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "specs": [s.to_dict() for s in model.specs],
        "tasks": model.tasks,
        "class_names": class_names or {},
        "model": asdict(model.cfg),
        **extra,
    }


def _save_model_files(folder: Path, model: KARMMA, meta: dict) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    fault_point("checkpoint-write")
    with open(folder / "model.json", "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def _fresh_tmp(final: Path) -> Path:
    """An empty temporary folder beside ``final``, to be published with :func:`_publish`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, final: Path) -> Path:
    """fsync ``tmp``'s files and rename it to ``final`` (an existing ``final`` is moved aside first)."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    fsync_dir(final.parent)
    return final


def _write_failed(target: Path, tmp: Path, e: BaseException) -> CheckpointError:
    """Remove the half-written ``tmp`` and say what happened (disk full, above all)."""
    shutil.rmtree(tmp, ignore_errors=True)
    text = str(e)
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "StorageFull" in text:
        return CheckpointError(
            f"no space left on the device while writing {target}; the previous checkpoint is intact. "
            "Free some space and run the same command again to resume"
        )
    return CheckpointError(f"cannot write {target} ({text}); the previous checkpoint is intact")


def save_model(folder: str | Path, model: KARMMA, meta: dict) -> Path:
    """Atomically write a model checkpoint folder (replacing an existing one)."""
    folder = Path(folder)
    tmp = _fresh_tmp(folder)
    try:
        _save_model_files(tmp, model, meta)
        return _publish(tmp, folder)
    except (OSError, SafetensorError) as e:
        raise _write_failed(folder, tmp, e) from e


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_checkpoint(
    run_dir: str | Path,
    model: KARMMA,
    optimizer: torch.optim.Optimizer,
    meta: dict,
    state: dict,
    keep: int = 2,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``RUN/checkpoints/step-N`` atomically, point ``latest.json`` at it, prune old ones.

    ``extra``: weights of a task's trainable parts beyond the model (``task.safetensors``)."""
    ckdir = Path(run_dir) / "checkpoints"
    name = f"step-{state['global_step']:08d}"
    final = ckdir / name
    tmp = _fresh_tmp(final)
    try:
        _save_model_files(tmp, model, meta)
        tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        if extra:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(tmp / "task.safetensors"))
        _publish(tmp, final)
    except (OSError, SafetensorError) as e:
        raise _write_failed(final, tmp, e) from e
    fault_point("checkpoint-pointer")
    write_json_atomic(ckdir / "latest.json", {"checkpoint": name, "global_step": state["global_step"]})
    steps = sorted(p for p in ckdir.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckdir.glob(".tmp-*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None if it has none."""
    ckdir = Path(run_dir) / "checkpoints"
    pointer = ckdir / "latest.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(
            f"{pointer} is corrupt ({e}); delete it to start over, or point it at a step-* folder"
        ) from e
    path = ckdir / name
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{pointer} names {path}, which is missing or incomplete")
    return path


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder from a model folder, a checkpoint folder or a run folder."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if (path / "final" / "model.safetensors").is_file():
        return path / "final"
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is not None:
        return latest
    raise CheckpointError(
        f"{path}: no model found (expected model.safetensors + model.json, a run folder with final/, "
        "or checkpoints/latest.json); train one with `karmma train`"
    )


def read_model_meta(folder: Path) -> dict:
    meta_path = folder / "model.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{meta_path} is missing; the checkpoint is incomplete") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e}); the checkpoint is corrupt") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object, got a {type(meta).__name__}; not a karmma model")
    if meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{meta_path}: not a karmma model (format={meta.get('format')!r})")
    _check_meta(meta, meta_path)
    model_version(meta, meta_path)
    return meta


def model_version(meta: dict, where: object) -> int:
    """The format version of a model description (1 when not written: karmma 0.1's first files)."""
    version = meta.get("version", 1)
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{where}: 'version' must be a whole number >= 1, got {version!r}")
    if version > MODEL_VERSION:
        raise CheckpointError(
            f"{where}: written by a newer karmma (model format {version}; this one reads up to {MODEL_VERSION}); "
            "upgrade karmma (pip install -U karmma)"
        )
    return version


def _check_meta(meta: dict, where: Path) -> None:
    """The shapes of model.json's entries, each error naming the entry."""
    tasks, specs, names = meta.get("tasks"), meta.get("specs"), meta.get("class_names", {})
    if not isinstance(tasks, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v >= 1 for k, v in tasks.items()
    ):
        raise CheckpointError(
            f"{where}: 'tasks' must map each task name to its class count, e.g. "
            f'{{"verb": 97, "noun": 300}}; got {tasks!r}'
        )
    if not isinstance(specs, list) or not all(isinstance(d, dict) for d in specs):
        raise CheckpointError(f"{where}: 'specs' must be a list of {{name, num_tokens, dim}} objects; got {specs!r}")
    if not isinstance(names, dict):
        raise CheckpointError(f"{where}: 'class_names' must map task -> list of names; got a {type(names).__name__}")
    for task, lst in names.items():
        if task in tasks and (not isinstance(lst, list) or len(lst) != tasks[task]):
            count = len(lst) if isinstance(lst, list) else "not a list of"
            raise CheckpointError(
                f"{where}: 'class_names' of task {task!r} has {count} names for "
                f"{tasks[task]} classes; give one name per class (or none)"
            )


def load_model(path: str | Path, expect: dict | None = None) -> tuple[KARMMA, dict]:
    """Load a model (weights via safetensors only) and its metadata.

    ``expect`` may hold ``specs``/``tasks``/``model`` entries the checkpoint must match; a
    mismatch (a checkpoint of another architecture) raises :class:`CheckpointError`.
    """
    folder = resolve_model_dir(path)
    meta = read_model_meta(folder)
    try:
        specs = [ModalitySpec(**d) for d in meta["specs"]]
        cfg = model_config_from_json(meta["model"], f"{folder}/model.json:model", model_version(meta, folder))
        model = KARMMA(specs, meta["tasks"], cfg)
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{folder}/model.json: incomplete or invalid model description ({e})") from e
    if expect:
        check_compatible(meta, expect, str(folder))
    try:
        state = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder}/model.safetensors is unreadable ({e}); the checkpoint is corrupt") from e
    _load_state(model, state, str(folder))
    return model, meta


def _load_state(model: KARMMA, state: dict[str, torch.Tensor], where: str) -> None:
    state = model.upgrade_state(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:3]]}"
                if wrong
                else "",
            )
            if part
        )
        raise CheckpointError(f"{where}: weights do not fit the architecture in model.json ({detail})")
    model.load_state_dict(state)


def check_compatible(meta: dict, expect: dict, where: str) -> None:
    for key in ("specs", "tasks", "model"):
        if key in expect and json.dumps(meta.get(key), sort_keys=True) != json.dumps(expect[key], sort_keys=True):
            raise CheckpointError(
                f"{where}: checkpoint of another architecture: its {key} is {meta.get(key)}, this run "
                f"needs {expect[key]}; resume with the config it was trained with, or use a new run folder"
            )


def load_task_extra(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a task's extra trainable parts in a training checkpoint ({} if none)."""
    path = folder / "task.safetensors"
    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); delete the checkpoint to resume from an older one") from e


def load_training_checkpoint(folder: Path, model: KARMMA, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer from a training checkpoint; returns its ``state.json``."""
    meta = read_model_meta(folder)
    try:  # an older model.json (e.g. "heads") compares by what it means
        cfg = model_config_from_json(dict(meta.get("model", {})), str(folder), model_version(meta, folder))
        meta = {**meta, "model": asdict(resolved(cfg))}
    except ConfigError:
        pass
    own = {"specs": [s.to_dict() for s in model.specs], "tasks": model.tasks, "model": asdict(model.cfg)}
    check_compatible(meta, own, str(folder))
    try:
        _load_state(model, load_file(str(folder / "model.safetensors")), str(folder))
        _load_optimizer(optimizer, folder)
        return json.loads((folder / "state.json").read_text())
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"{folder}: unreadable training checkpoint ({e}); delete it to resume from an older one"
        ) from e
