"""Stage 1 (teacher, baselines): cross-entropy averaged over the heads."""

from __future__ import annotations

import torch

from karmma.data.dataset import Batch
from karmma.losses import multitask_ce
from karmma.models.addons import LossContext
from karmma.models.karmma import KARMMA
from karmma.tasks.base import Task


class ClassificationTask(Task):
    def __init__(self, model: KARMMA, label_smoothing: float = 0.0) -> None:
        super().__init__(model)
        self.label_smoothing = label_smoothing

    def forward(self, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out, aux = self.run_model(batch, mask, LossContext(batch.labels, self.label_smoothing))
        ce = multitask_ce(out, batch.labels, self.label_smoothing)
        return {"loss": ce + aux.pop("loss", 0.0), "ce": ce.detach(), **aux, "output": out.logits}
