"""Stage 2 (KARMMA's student): per head ``alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)``
from a frozen teacher that sees the same modality-dropout mask as the student.

With a teacher-logit cache (:mod:`karmma.tasks.teacher_logits`: every sample under every
non-empty modality subset, computed once, bounded in memory) the teacher is not run during
training and its features are not read; the step's mask picks the cached subset. A step whose
mask has a modality present for part of a clip (per-token presence, :mod:`karmma.presence`) runs
the teacher on the fly with that mask, on the teacher's own features.

With ``distill.unimodal`` (beyond the paper) the student's unimodal heads are distilled too, each
from the teacher's prediction with that modality alone (the cache's single-modality subsets).
"""

from __future__ import annotations

import torch

from karmma import presence
from karmma.data.dataset import Batch
from karmma.errors import ConfigError, DataError
from karmma.losses import kd_kl, multitask_ce
from karmma.modalities import subset_index
from karmma.models.addons import LossContext
from karmma.models.karmma import KARMMA
from karmma.models.late_fusion import late_fusion_of
from karmma.tasks.base import FrozenTeacherMixin, Task
from karmma.tasks.teacher_logits import TeacherLogits


class LogitDistillationTask(FrozenTeacherMixin, Task):
    teacher: KARMMA  # frozen (FrozenTeacherMixin)

    def __init__(
        self,
        student: KARMMA,
        teacher: KARMMA,
        alpha: float,
        temperature: float,
        cache: TeacherLogits | None = None,
        unimodal: bool = False,
    ) -> None:
        super().__init__(student)
        if unimodal and late_fusion_of(student) is None:
            raise ConfigError(
                "distill.unimodal distils the student's unimodal heads, which only exist with the late-fusion "
                "add-on; set model.addons.late_fusion (e.g. {loss_weight: 1.0}) or distill.unimodal=false"
            )
        self.teacher = teacher
        self.alpha, self.temperature = alpha, temperature
        self.cache = cache
        self.unimodal = unimodal
        self.freeze_teacher()

    @classmethod
    def from_config(cls, student: KARMMA, teacher: KARMMA, cfg, cache=None) -> LogitDistillationTask:
        d = cfg.distill
        return cls(student, teacher, d.alpha, d.temperature, cache, d.unimodal)

    def teacher_logits(self, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's logits under the student's ``mask``: from the cache for a whole-modality
        mask, computed here for one with a modality present for part of a clip (the cache holds
        whole subsets only) — the teacher's tokens resampled to its own token counts."""
        whole, tokens = presence.normalize(mask, presence.counts_of(self.model.specs))
        if self.cache is not None and tokens is None:
            return {k: v.to(mask.device) for k, v in self.cache.lookup(batch.index, subset_index(whole)).items()}
        if batch.teacher_tokens is None:
            raise DataError("a per-token mask needs the teacher's own features in the batch (paired data); the "
                            "teacher-logit cache holds whole-modality subsets only")  # fmt: skip
        with torch.no_grad():
            return self.teacher(batch.teacher_tokens, self.teacher_mask(batch, mask))  # the student's mask

    def teacher_mask(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """The student's ``mask`` for the teacher: at its token counts, and restricted to what its
        own features hold."""
        counts = presence.counts_of(self.teacher.specs)
        theirs = presence.to_counts(mask, presence.counts_of(self.model.specs), counts)
        if batch.teacher_token_present is None:
            return theirs
        return presence.combine(theirs, batch.teacher_token_present.to(mask.device), counts)

    def forward(self, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        ctx = LossContext(batch.labels, teacher=lambda m: self.teacher_logits(batch, m), alpha=self.alpha,
                          temperature=self.temperature, distill_addons=self.unimodal, mask=mask)  # fmt: skip
        out, aux = self.run_model(batch, mask, ctx)
        ce = multitask_ce(out, batch.labels)
        t_logits = self.teacher_logits(batch, mask)
        kd = torch.stack([kd_kl(out[k], t_logits[k], self.temperature) for k in out]).mean()
        loss = self.alpha * ce + (1.0 - self.alpha) * kd + aux.pop("loss", 0.0)
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), **aux, "output": out.logits}
