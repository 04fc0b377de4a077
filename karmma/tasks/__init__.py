"""Training objectives as modules (:class:`Task`), chosen by name from :data:`TASKS`.

``classification`` (stage 1), ``logit_kd`` (KARMMA's stage 2) and ``feature_kd`` (feature-level
distillation, beyond the paper). A distillation task is built as ``cls.from_config(student,
teacher, cfg, cache)``; register your own with ``@TASKS.register("name")``.
"""

from karmma.registries import TASKS
from karmma.tasks.base import FrozenTeacherMixin, Task
from karmma.tasks.classification import ClassificationTask
from karmma.tasks.distillation import LogitDistillationTask
from karmma.tasks.feature_distillation import FeatureDistillationTask
from karmma.tasks.teacher_logits import TeacherLogits, cache_teacher_logits

__all__ = [
    "TASKS",
    "ClassificationTask",
    "FeatureDistillationTask",
    "FrozenTeacherMixin",
    "LogitDistillationTask",
    "Task",
    "TeacherLogits",
    "cache_teacher_logits",
]
