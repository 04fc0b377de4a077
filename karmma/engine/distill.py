"""Stage 2: distil the frozen teacher into the student.

The objective is a registered task (``distill.task``): ``logit_kd`` — KARMMA's per-head
``alpha * CE(student, y) + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` — or ``feature_kd``
(beyond the paper). The teacher stays frozen in eval mode and sees the same modality-dropout mask
as the student. With ``distill.cache_teacher_logits`` the teacher's logits are computed once for
every sample and every modality subset, looked up by the step's mask, and the teacher's features
are not read during training.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from karmma.config import ExperimentConfig
from karmma.data.dataset import PairedFeatureSet
from karmma.engine import distributed
from karmma.engine.diagnostics import teacher_diagnostics
from karmma.engine.distributed import resolve_device
from karmma.engine.out_of_fold import out_of_fold_logits
from karmma.engine.train import FitOptions, FitResult, check_training_data, fit
from karmma.errors import CheckpointError, ConfigError
from karmma.io.rundir import module_sha256
from karmma.models.karmma import KARMMA
from karmma.tasks import TASKS, TeacherLogits, cache_teacher_logits
from karmma.tasks.teacher_logits import FILE as TEACHER_LOGITS_FILE
from karmma.tasks.teacher_logits import fits_in_memory, open_teacher_logits

log = logging.getLogger(__name__)

__all__ = ["cache_teacher_logits", "distill"]

DIAGNOSTIC_SAMPLES = 2048  # without a logit cache, the teacher diagnostics read this many samples


def distill(
    student: KARMMA,
    teacher: KARMMA,
    data: PairedFeatureSet,
    cfg: ExperimentConfig,
    run_dir: str | Path,
    options: FitOptions | None = None,
    *,
    teacher_cfg: ExperimentConfig | None = None,
    **kwargs: Any,
) -> FitResult:
    """Distil ``teacher`` into ``student`` on ``data``; ``options`` (or its fields as keywords)
    as :func:`karmma.engine.train.fit` takes them; ``teacher_cfg`` (the teacher's training config)
    is needed for ``distill.teacher_logits: out_of_fold``."""
    opts = dataclasses.replace(options or FitOptions(), **kwargs)
    val_data, progress = opts.val_data, opts.progress
    if teacher.tasks != student.tasks:
        raise CheckpointError(f"teacher tasks {teacher.tasks} differ from the student's {student.tasks}")
    if teacher.modality_names != student.modality_names:
        raise CheckpointError(
            f"teacher modalities {teacher.modality_names} differ from the student's {student.modality_names}"
        )
    check_training_data(data, val_data)
    teacher_hash = module_sha256(teacher)
    teacher.to(resolve_device(cfg.device)).eval()
    cache = None
    # per-token masks (bursts, or data with per-token presence): the teacher runs on those steps
    partial = cfg.modality_dropout.kind == "burst" or any(p.token_present is not None for p in data.parts())
    if partial and cfg.distill.teacher_logits == "out_of_fold":
        raise ConfigError("distill.teacher_logits=out_of_fold caches whole-modality subsets only; with per-token "
                          "presence (modality_dropout.kind=burst, or a store with partial tokens) use the frozen "
                          "teacher (distill.teacher_logits=teacher)")  # fmt: skip
    if cfg.distill.teacher_logits == "out_of_fold":
        if teacher_cfg is None:
            raise CheckpointError("distill.teacher_logits=out_of_fold needs the teacher's training config")
        cache = out_of_fold_logits(teacher_cfg, data, cfg.distill.folds, cfg.data.group_pattern, Path(run_dir) / "oof",
                                   cfg.seed, progress)  # fmt: skip
        seen, seen_cache = data, cache
    elif cfg.distill.cache_teacher_logits:
        cache = _teacher_logits(teacher, data, cfg, Path(run_dir), teacher_hash, progress)
        seen, seen_cache = data, cache
    else:  # diagnostics from a strided sample, so that memory stays bounded
        rows = np.unique(np.linspace(0, len(data) - 1, min(len(data), DIAGNOSTIC_SAMPLES)).astype(np.int64))
        seen = PairedFeatureSet(data.student.subset(rows), data.teacher.subset(rows))
        seen_cache = cache_teacher_logits(teacher, seen, memory_mb=float("inf"))
    diagnostics = teacher_diagnostics(seen_cache, seen.student.labels, seen.present, seen.student.modality_names,
                                      cfg.distill.temperature)  # fmt: skip
    task = TASKS.get(cfg.distill.task).from_config(student, teacher, cfg, cache)
    result = fit(
        task,
        data.student if cache is not None and not partial else data,  # with the cache: teacher features unread
        cfg,
        run_dir,
        dataclasses.replace(
            opts,
            extra_meta={"stage": "distill", **(opts.extra_meta or {})},
            fingerprint_extra={"teacher weights": teacher_hash, "teacher logits": cfg.distill.teacher_logits},
            data_checked=True,
        ),
    )
    result.diagnostics = diagnostics
    if cache is not None:
        cache.close()
    return result


def _teacher_logits(teacher: KARMMA, data: PairedFeatureSet, cfg: ExperimentConfig, run_dir: Path, teacher_hash: str,
                    progress: bool) -> TeacherLogits:  # fmt: skip
    """The cache, in memory within ``distill.cache_memory_mb``, else on disk in the run folder
    (written by rank 0 and read by every rank)."""
    path = run_dir / TEACHER_LOGITS_FILE
    info = distributed.current()
    kwargs = {"memory_mb": cfg.distill.cache_memory_mb, "path": path, "teacher_hash": teacher_hash}
    in_memory = fits_in_memory(len(data), len(data.specs), teacher.tasks, cfg.distill.cache_memory_mb)
    if in_memory or not info.enabled:
        return cache_teacher_logits(teacher, data, progress=progress, **kwargs)  # each rank its own, in memory
    cache = cache_teacher_logits(teacher, data, progress=progress, **kwargs) if info.is_main else None
    distributed.barrier()  # rank 0 has written the file; the others read it
    cache = cache or open_teacher_logits(path, list(teacher.tasks))
    return cache
