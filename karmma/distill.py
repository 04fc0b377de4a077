"""Stage 2: distil the frozen teacher into the student.

Per head: ``alpha * CE(student, y) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``. The
teacher stays in eval mode with ``requires_grad=False``. One modality-dropout mask per step feeds
both teacher and student. With ``distill.cache_teacher_logits`` the teacher's logits are computed
once for every sample and every modality subset, and looked up by the step's mask.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from karmma.config import ExperimentConfig
from karmma.data.dataset import Batch, FeatureSet, PairedFeatureSet
from karmma.distributed import resolve_device
from karmma.errors import CheckpointError
from karmma.losses import multitask_distillation
from karmma.modalities import subset_index
from karmma.models.karmma import KARMMA
from karmma.progress import progress_bar
from karmma.rundir import module_sha256
from karmma.train import FitResult, check_training_data, fit

log = logging.getLogger(__name__)


def freeze(teacher: KARMMA) -> KARMMA:
    """Eval mode and no gradients, for good: ``teacher.train()`` is turned into a no-op."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.train = lambda mode=True: teacher  # type: ignore[method-assign]
    return teacher


@torch.no_grad()
def cache_teacher_logits(
    teacher: KARMMA, data: PairedFeatureSet, batch_size: int = 256, progress: bool = False
) -> dict[str, torch.Tensor]:
    """``{task: (N, 2**M - 1, C)}``: the teacher's logits for every sample under every non-empty
    modality subset (rows a sample cannot take, for lack of data, are left as computed)."""
    m = len(data.specs)
    n = len(data)
    codes = range(1, 2**m)
    cache = {t: torch.zeros(n, len(codes), c) for t, c in teacher.tasks.items()}
    device = next(teacher.parameters()).device
    bar = progress_bar(len(codes) * ((n + batch_size - 1) // batch_size), "teacher logits", progress)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        tokens = [t.to(device) for t in data.teacher.get_batch(rows).tokens]
        for j, code in enumerate(codes):
            mask = torch.tensor([[bool(code >> i & 1) for i in range(m)]], device=device).expand(len(rows), -1)
            out = teacher(tokens, mask)
            for t in cache:
                cache[t][rows, j] = out[t].float().cpu()
            bar.update(1)
    bar.close()
    return cache


def distillation_loss_fn(
    teacher: KARMMA, alpha: float, temperature: float, cache: dict[str, torch.Tensor] | None = None
):
    def loss(student: torch.nn.Module, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        if cache is not None:
            col = subset_index(mask).cpu()
            t_logits = {k: v[batch.index, col].to(mask.device) for k, v in cache.items()}
        else:
            with torch.no_grad():
                t_logits = teacher(batch.teacher_tokens, mask)  # the same mask as the student's
        return multitask_distillation(student(batch.tokens, mask), t_logits, batch.labels, alpha, temperature)

    return loss


def distill(
    student: KARMMA,
    teacher: KARMMA,
    data: PairedFeatureSet,
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    val_data: FeatureSet | None = None,
    resume: bool = True,
    progress: bool = False,
    extra_meta: dict | None = None,
) -> FitResult:
    if teacher.tasks != student.tasks:
        raise CheckpointError(f"teacher tasks {teacher.tasks} differ from the student's {student.tasks}")
    if teacher.modality_names != student.modality_names:
        raise CheckpointError(
            f"teacher modalities {teacher.modality_names} differ from the student's {student.modality_names}"
        )
    check_training_data(data, val_data)
    teacher_hash = module_sha256(teacher)
    freeze(teacher).to(resolve_device(cfg.device))
    cache = None
    if cfg.distill.cache_teacher_logits:
        cache = cache_teacher_logits(teacher, data, progress=progress)
    loss_fn = distillation_loss_fn(teacher, cfg.distill.alpha, cfg.distill.temperature, cache)
    return fit(
        student,
        data,
        cfg,
        run_dir,
        loss_fn=loss_fn,
        val_data=val_data,
        resume=resume,
        progress=progress,
        extra_meta={"stage": "distill", **(extra_meta or {})},
        fingerprint_extra={"teacher weights": teacher_hash},
        check_data=False,
    )
