"""Out-of-fold (cross-fitted) teacher logits: soft targets from teachers that never saw the sample.

A teacher trained on the distillation data memorises it: on its own training samples its soft
targets are nearly the labels (``karmma distill`` prints the evidence), and distillation then has
little to pass on. With ``distill.teacher_logits: out_of_fold`` the training data is cut into
``distill.folds`` folds — by whole groups when ``data.group_pattern`` names them (subjects,
participants), so that a teacher never saw the person it scores — and, for each fold, a teacher
of the same config as the given one is trained on the other folds and gives the logits of that
fold, under every modality subset. The given teacher is still the one whose features and
architecture define the target; these fold teachers only replace its logits on training samples.
Beyond the paper (which does not say how it avoids the issue); each fold teacher costs one
teacher training, and its run folder (``<run>/oof/fold<k>``) makes the step resumable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from karmma.config import ExperimentConfig, from_dict
from karmma.data.dataset import PairedFeatureSet
from karmma.data.splits import shuffled_groups
from karmma.errors import CheckpointError, DataError
from karmma.tasks import ClassificationTask, TeacherLogits, cache_teacher_logits

log = logging.getLogger(__name__)


def teacher_config(teacher_path: str | Path) -> ExperimentConfig:
    """The config a teacher run was trained with (``config.json`` of its run folder)."""
    path = Path(teacher_path)
    for folder in (path, path.parent):
        if (folder / "config.json").is_file():
            return from_dict(ExperimentConfig, json.loads((folder / "config.json").read_text()), str(folder))
    raise CheckpointError(
        f"{teacher_path}: no config.json beside the teacher; out-of-fold logits retrain the teacher with its "
        "config, so pass the teacher's run folder (karmma train --run-dir)"
    )


def fold_of(ids: list[str], folds: int, pattern: str, source: str) -> np.ndarray:
    """The fold of each sample: whole groups (in a fixed random order) dealt round-robin."""
    groups, names = shuffled_groups(ids, pattern, source)
    if len(names) < folds:
        raise DataError(
            f"{source}: {folds} folds need at least {folds} groups, found {len(names)} "
            f"(data.group_pattern {pattern!r}); lower distill.folds or change the pattern"
        )
    fold = {g: k % folds for k, g in enumerate(names)}
    return np.array([fold[g] for g in groups])


def out_of_fold_logits(
    teacher_cfg: ExperimentConfig,
    data: PairedFeatureSet,
    folds: int,
    group_pattern: str,
    run_dir: Path,
    seed: int,
    progress: bool = False,
) -> TeacherLogits:
    """The logits of every sample under every modality subset, each from a teacher trained
    without that sample's fold (in memory: meant for data sets small enough to retrain on)."""
    from karmma.engine.train import build_model, fit

    fold = fold_of(data.ids, folds, group_pattern, data.teacher.source)
    cfg = from_dict(ExperimentConfig, {**teacher_cfg.to_dict(), "seed": seed}, "teacher config")
    # A fold teacher has no validation split to fit late-fusion weights on: it fuses with equal shares.
    if "late_fusion" in cfg.model.addons:
        cfg.model.addons["late_fusion"] = {**cfg.model.addons["late_fusion"], "weights": "equal"}
    arrays: dict[str, torch.Tensor] = {}
    for k in range(folds):
        held, rest = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        train = data.teacher.rows(rest)
        model = build_model(cfg, train)
        log.info("out-of-fold teacher %d/%d: trained on %d samples, scores %d", k + 1, folds, len(rest), len(held))
        fit(ClassificationTask(model, cfg.optim.label_smoothing), train, cfg, run_dir / f"fold{k}",
            progress=progress, extra_meta={"stage": "out-of-fold teacher", "fold": k})  # fmt: skip
        part = PairedFeatureSet(data.student.rows(held), data.teacher.rows(held))
        logits = cache_teacher_logits(model.eval(), part, memory_mb=float("inf"))
        for t, v in logits.arrays.items():
            if t not in arrays:
                arrays[t] = torch.zeros(v.shape[0], len(data), v.shape[2])
            arrays[t][:, torch.from_numpy(held)] = v
    return TeacherLogits(arrays)
