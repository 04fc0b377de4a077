"""Stage 2 (KARMMA's student): per head ``alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)``
from a frozen teacher that sees the same modality-dropout mask as the student.

With a teacher-logit cache (:mod:`karmma.tasks.teacher_logits`: every sample under every
non-empty modality subset, computed once, bounded in memory) the teacher is not run during
training and its features are not read; the step's mask picks the cached subset.
"""

from __future__ import annotations

import torch

from karmma.data.dataset import Batch
from karmma.losses import kd_kl, multitask_ce
from karmma.modalities import subset_index
from karmma.models.karmma import KARMMA
from karmma.tasks.base import FrozenTeacherMixin, Task
from karmma.tasks.teacher_logits import TeacherLogits


class LogitDistillationTask(FrozenTeacherMixin, Task):
    def __init__(
        self,
        student: KARMMA,
        teacher: KARMMA,
        alpha: float,
        temperature: float,
        cache: TeacherLogits | None = None,
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
            return {k: v.to(mask.device) for k, v in self.cache.lookup(batch.index, subset_index(mask)).items()}
        with torch.no_grad():
            return self.teacher(batch.teacher_tokens, mask)  # the same mask as the student's

    def forward(self, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, aux = self.run_model(batch, mask)
        ce = multitask_ce(logits, batch.labels)
        t_logits = self.teacher_logits(batch, mask)
        kd = torch.stack([kd_kl(logits[k], t_logits[k], self.temperature) for k in logits]).mean()
        loss = self.alpha * ce + (1.0 - self.alpha) * kd + aux.pop("loss", 0.0)
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), **aux, "output": logits}
