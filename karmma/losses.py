"""Losses as pure functions of logits and labels, per head.

Stage 1 (teacher, baselines): cross-entropy averaged over heads.
Stage 2 (student): per head  alpha * CE(student, y) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
where ``x_T = softmax(x / T)``; the result is averaged over heads.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)  # float32 under bf16 autocast


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``alpha * CE + (1 - alpha) * T^2 * KL`` for one head."""
    ce = cross_entropy(student_logits, labels)
    kl = kd_kl(student_logits, teacher_logits, temperature)
    return alpha * ce + (1.0 - alpha) * kl


def multitask_ce(
    logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor], label_smoothing: float = 0.0
) -> torch.Tensor:
    return torch.stack([cross_entropy(logits[k], labels[k], label_smoothing) for k in logits]).mean()


def unimodal_ce(
    unimodal: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """CE of the unimodal heads' ``{task: (B, M, C)}`` logits, averaged over the (sample, modality)
    pairs where the modality is present (``present`` (B, M)) and over the tasks; 0 with none."""
    keep = present.reshape(-1)
    losses = []
    for k, logits in unimodal.items():
        y = labels[k][:, None].expand(-1, logits.shape[1]).reshape(-1)
        flat = logits.reshape(-1, logits.shape[-1])
        ce = F.cross_entropy(flat.float(), y, reduction="none", label_smoothing=label_smoothing)
        losses.append((ce * keep).sum() / keep.sum().clamp_min(1))
    return torch.stack(losses).mean()


def unimodal_kd(
    unimodal: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor], present: torch.Tensor, temperature: float
) -> torch.Tensor:
    """:func:`kd_kl` between the unimodal heads' ``{task: (B, M, C)}`` logits and the teacher's
    ``{task: (B, M, C)}`` (modality m's: its prediction from m alone), over the present (sample,
    modality) pairs, averaged over the tasks; 0 with none."""
    keep = present.reshape(-1).bool()
    if not keep.any():  # a zero that keeps every head in the graph
        return torch.stack([logits.sum() * 0.0 for logits in unimodal.values()]).mean()
    losses = []
    for k, logits in unimodal.items():
        flat = logits.reshape(-1, logits.shape[-1])
        losses.append(kd_kl(flat[keep], teacher[k].reshape(flat.shape)[keep], temperature))
    return torch.stack(losses).mean()


def multitask_distillation(
    student: Mapping[str, torch.Tensor],
    teacher: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    return torch.stack(
        [distillation_loss(student[k], teacher[k], labels[k], alpha, temperature) for k in student]
    ).mean()
