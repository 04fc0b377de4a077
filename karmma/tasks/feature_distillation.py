"""Feature-level distillation (beyond the paper; an option of the distillation issue): the logit
objective of :class:`LogitDistillationTask` plus ``beta`` times the mean squared error between
the student's readers ([CLS] and each modality's mean token), mapped to the teacher's width by a
learned linear projector, and the teacher's readers (standardised per feature, detached).

The projector is a trainable part of the task (``extra_parts``): it is optimised, wrapped in DDP
and checkpointed with the student, and dropped at the end — the run's model is the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from karmma.data.dataset import Batch
from karmma.errors import ConfigError
from karmma.losses import kd_kl, multitask_ce
from karmma.models.karmma import KARMMA
from karmma.tasks.distillation import LogitDistillationTask


class _Projector(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, readers: torch.Tensor) -> torch.Tensor:
        return self.proj(readers)


class FeatureDistillationTask(LogitDistillationTask):
    extra_parts = ("projector",)

    def __init__(self, student: KARMMA, teacher: KARMMA, alpha: float, temperature: float, beta: float = 1.0) -> None:
        super().__init__(student, teacher, alpha, temperature, cache=None)
        self.beta = beta
        self.projector = _Projector(student.cfg.dim, teacher.cfg.dim)

    @classmethod
    def from_config(cls, student: KARMMA, teacher: KARMMA, cfg, cache=None) -> FeatureDistillationTask:
        if cache is not None:
            raise ConfigError(
                "distill.task=feature_kd runs the teacher live (it needs its features): "
                "set distill.cache_teacher_logits=false"
            )
        if cfg.distill.unimodal:
            raise ConfigError("distill.unimodal works with distill.task=logit_kd; set distill.unimodal=false")
        return cls(student, teacher, cfg.distill.alpha, cfg.distill.temperature, cfg.distill.beta)

    def forward(self, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, aux = self.run_model(batch, mask)
        s_readers = logits.readers
        with torch.no_grad():
            # the teacher's output as it predicts (late-fused where its late-fusion add-on ensembles)
            t_logits = self.teacher(batch.teacher_tokens, self.teacher_mask(batch, mask))
            t_readers = F.layer_norm(t_logits.readers, t_logits.readers.shape[-1:])
        ce = multitask_ce(logits, batch.labels)
        kd = torch.stack([kd_kl(logits[k], t_logits[k], self.temperature) for k in logits]).mean()
        feat = F.mse_loss(self.part("projector")(s_readers), t_readers)
        loss = self.alpha * ce + (1.0 - self.alpha) * kd + self.beta * feat + aux.pop("loss", 0.0)
        parts = {"ce": ce.detach(), "kd": kd.detach(), "feat": feat.detach(), **aux}
        return {"loss": loss, **parts, "output": logits.logits}
