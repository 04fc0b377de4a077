"""Late-fusion weights fitted on the validation split (``model.fusion_weights: validation``).

Beyond the paper. With ``model.unimodal_ensemble`` the model's output at inference fuses two kinds
of experts: the fusion block's output and each present modality's unimodal head. The equal rule
gives every present head the same share, so a weak sensor (UTD-MHAD's flow: about 55% alone
against 80-90% for the others) pulls a pair of strong ones that already agree. After training,
:func:`fit_fusion_weights` fits one weight per expert — the log-linear pool (product of experts)
``a * log softmax(fused) + sum over present m of b_m * log softmax(unimodal_m)`` with the smallest
cross-entropy on the validation split, every non-empty modality subset pooled (so one set of
weights serves every subset) — and stores them in the model's ``fusion_weights`` buffer, which
the checkpoint, ONNX export and every later prediction carry. ``late_fusion`` (karmma/models/karmma.py) divides
the pool by the present experts' total weight, keeping the log-probability scale that
distillation at temperature T was tuned for; the division changes no prediction.

The validation split is data the model never trained on: on its training data every expert is
nearly always right, so weights fitted there could not tell a weak sensor from a strong one.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from karmma.data.dataset import FeatureSet
from karmma.errors import DataError
from karmma.evaluate import subset_mask_fns
from karmma.models.karmma import KARMMA

log = logging.getLogger(__name__)

MAX_SAMPLES = 2048  # validation samples the fit reads (a seeded choice when the split is larger) ...
MEMORY_MB = 256  # ... and fewer where their log-probabilities over every subset would pass this


@torch.no_grad()
def _expert_log_probs(model: KARMMA, data: FeatureSet, rows: np.ndarray, batch_size: int = 256):
    """Per task, the experts' log-probabilities ``(N, 1 + M, C)``, their presence ``(N, 1 + M)`` and
    the labels, over every non-empty modality subset of ``rows`` (samples left with no modality
    by a subset are left out)."""
    subsets = subset_mask_fns(data.modality_names)
    device = next(model.parameters()).device
    experts: dict[str, list] = {t: [] for t in model.tasks}
    keep, labels = [], {t: [] for t in model.tasks}
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        batch = data.get_batch(batch_rows)
        for subset in subsets.values():
            mask = subset(batch.present, batch_rows) & batch.present
            ok = mask.any(1)
            if not ok.any():
                continue
            b = batch.select(ok).to(device)
            fused, unimodal = model.forward_experts(b.tokens, mask[ok].to(device))
            for t in model.tasks:
                experts[t].append(torch.cat([fused[t][:, None], unimodal[t]], 1).float().log_softmax(-1).cpu())
                labels[t].append(b.labels[t].cpu())
            keep.append(torch.cat([torch.ones(int(ok.sum()), 1, dtype=torch.bool), mask[ok]], 1))
    cat = lambda d: {t: torch.cat(v) for t, v in d.items()}  # noqa: E731
    return cat(experts), torch.cat(keep).float(), cat(labels)


def sample_budget(model: KARMMA, max_samples: int = MAX_SAMPLES, memory_mb: float = MEMORY_MB) -> int:
    """How many validation samples the fit reads: each holds ``(1 + M)`` experts' float32
    log-probabilities over every task's classes under each of the ``2^M - 1`` subsets."""
    m = len(model.specs)
    per_sample = (2**m - 1) * (1 + m) * sum(model.tasks.values()) * 4
    return max(1, min(max_samples, int(memory_mb * 2**20 // per_sample)))


def fit_fusion_weights(model: KARMMA, data: FeatureSet, seed: int = 0, max_samples: int = MAX_SAMPLES) -> torch.Tensor:
    """Fit ``model.fusion_weights`` on ``data`` (the validation split), set them, and return them.

    Minimises the cross-entropy of the log-linear pool of the experts (summed over tasks, averaged
    over samples and subsets) over positive weights (fitted as logarithms, L-BFGS from all ones).
    Labels outside a task's classes (``-1``: unlabelled) are ignored."""
    if not data.labelled or not any((np.asarray(v) >= 0).any() for v in data.labels.values()):
        raise DataError(
            f"{data.source}: the validation split has no labels to fit the late-fusion weights on; "
            "give a labelled validation split (data.val) or set model.fusion_weights=equal"
        )
    was_training = model.training
    model.eval()
    rows = np.arange(len(data))
    budget = sample_budget(model, max_samples)
    if len(rows) > budget:
        rows = np.sort(np.random.default_rng(seed).choice(rows, budget, replace=False))
    experts, keep, labels = _expert_log_probs(model, data, rows)
    log_w = torch.zeros(keep.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([log_w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w = log_w.exp()[None, :, None] * keep[..., None]
        loss = sum(
            torch.nn.functional.cross_entropy((w * experts[t]).sum(1), labels[t], ignore_index=-1) for t in experts
        )
        loss.backward()
        return loss

    opt.step(closure)
    weights = log_w.detach().exp()
    model.fusion_weights.copy_(weights.to(model.fusion_weights))
    model.train(was_training)
    log.info(
        "late-fusion weights fitted on %d validation samples: %s",
        len(rows),
        ", ".join(f"{k} {v:.3g}" for k, v in fusion_weight_names(model, weights).items()),
    )
    return weights


def fusion_weight_names(model: KARMMA, weights: torch.Tensor | None = None) -> dict[str, float]:
    """``{"fused": a, modality: b_m, ...}`` for the model's (or the given) fusion weights."""
    w = model.fusion_weights if weights is None else weights
    return dict(zip(["fused", *(s.name for s in model.specs)], (float(x) for x in w)))
