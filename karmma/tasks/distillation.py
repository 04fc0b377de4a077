"""Stage 2 (KARMMA's student): per head ``alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)``
from a frozen teacher that sees the same modality-dropout mask as the student.

With a teacher-logit cache (:func:`cache_teacher_logits`: every sample under every non-empty
modality subset, computed once) the teacher is not run during training and its features are not
read; the step's mask picks the cached column.
"""

from __future__ import annotations

import numpy as np
import torch

from karmma.data.dataset import Batch, PairedFeatureSet
from karmma.losses import kd_kl, multitask_ce
from karmma.modalities import subset_index, subset_masks
from karmma.models.karmma import KARMMA
from karmma.progress import progress_bar
from karmma.tasks.base import FrozenTeacherMixin, Task


class LogitDistillationTask(FrozenTeacherMixin, Task):
    def __init__(
        self,
        student: KARMMA,
        teacher: KARMMA,
        alpha: float,
        temperature: float,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(student)
        self.teacher = teacher
        self.alpha, self.temperature = alpha, temperature
        self.cache = cache
        self.freeze_teacher()

    @classmethod
    def from_config(cls, student: KARMMA, teacher: KARMMA, cfg, cache=None) -> LogitDistillationTask:
        return cls(student, teacher, cfg.distill.alpha, cfg.distill.temperature, cache)

    def teacher_logits(self, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cache is not None:
            col = subset_index(mask).cpu()
            return {k: v[batch.index, col].to(mask.device) for k, v in self.cache.items()}
        with torch.no_grad():
            return self.teacher(batch.teacher_tokens, mask)  # the same mask as the student's

    def forward(self, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.part("model")(batch.tokens, mask)
        ce = multitask_ce(logits, batch.labels)
        t_logits = self.teacher_logits(batch, mask)
        kd = torch.stack([kd_kl(logits[k], t_logits[k], self.temperature) for k in logits]).mean()
        loss = self.alpha * ce + (1.0 - self.alpha) * kd
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "output": logits}


@torch.no_grad()
def cache_teacher_logits(
    teacher: KARMMA, data: PairedFeatureSet, batch_size: int = 256, progress: bool = False
) -> dict[str, torch.Tensor]:
    """``{task: (N, 2**M - 1, C)}``: the teacher's logits for every sample under every non-empty
    modality subset (rows a sample cannot take, for lack of data, are left as computed)."""
    m, n = len(data.specs), len(data)
    masks = subset_masks(m)  # (2**M - 1, M), row j = subset code j + 1
    cache = {t: torch.zeros(n, len(masks), c) for t, c in teacher.tasks.items()}
    device = next(teacher.parameters()).device
    bar = progress_bar(len(masks) * ((n + batch_size - 1) // batch_size), "teacher logits", progress)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        tokens = [t.to(device) for t in data.teacher.get_batch(rows).tokens]
        for j, row in enumerate(masks):
            out = teacher(tokens, row.to(device).expand(len(rows), -1))
            for t in cache:
                cache[t][rows, j] = out[t].float().cpu()
            bar.update(1)
    bar.close()
    return cache
