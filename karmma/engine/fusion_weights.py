"""Late-fusion weights fitted on the validation split, a post-training step
(``model.addons.late_fusion.weights: validation | per_subset``, :mod:`karmma.models.late_fusion`).

Beyond the paper. With the late fusion's ``ensemble`` the model's output at inference fuses two kinds
of experts: the fusion block's output and each present modality's unimodal head. The equal rule
gives every present head the same share, so a weak sensor (UTD-MHAD's flow: about 55% alone
against 80-90% for the others) pulls a pair of strong ones that already agree. After training,
:func:`fit_fusion_weights` fits one weight per expert — the log-linear pool (product of experts)
``a * log softmax(fused) + sum over present m of b_m * log softmax(unimodal_m)`` with the smallest
cross-entropy on the validation split, every non-empty modality subset pooled (so one set of
weights serves every subset) — and stores them in the add-on's ``weights`` buffer, which
the checkpoint, ONNX export and every later prediction carry. ``per_subset`` then fits one row per
modality subset on that subset's pool alone, drawn toward the shared weights: how much a sensor
may say can depend on which sensors it joins, and the fused output's own weight on how many
sensors it read. ``late_fusion`` (karmma/models/late_fusion.py) divides
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
from karmma.evaluation.evaluate import subset_mask_fns
from karmma.modalities import all_subsets, subset_index, subset_name
from karmma.models.karmma import KARMMA
from karmma.models.late_fusion import LateFusion, late_fusion_of, pool_experts

log = logging.getLogger(__name__)

MAX_SAMPLES = 2048  # validation samples the fit reads (a seeded choice when the split is larger) ...
MEMORY_MB = 256  # ... and fewer where their log-probabilities over every subset would pass this
# weights: per_subset: how strongly each subset's log-weights are drawn toward the
# shared ones. Beyond the paper; chosen on the four UTD-MHAD validation folds from 0.001-0.1
# (docs/results/utd_mhad.md, seventh round).
SHRINK = 0.01
# ... and the shared row's toward weight 1, only so that the fit stays finite where one expert
# separates the validation split (the cross-entropy then falls forever as its weight grows).
RIDGE = 1e-4


@torch.no_grad()
def _expert_log_probs(model: KARMMA, data: FeatureSet, rows: np.ndarray, batch_size: int = 256):
    """Per task, the experts' log-probabilities ``(N, 1 + M, C)`` (fused first), the modalities' presence ``(N, M)`` and
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
            experts_out = model(b.tokens, batch.mask(mask)[ok].to(device)).extras["late_fusion"]  # per token if partial
            fused, unimodal = experts_out["fused"], experts_out["heads"]
            for t in model.tasks:
                experts[t].append(torch.cat([fused[t][:, None], unimodal[t]], 1).float().log_softmax(-1).cpu())
                labels[t].append(b.labels[t].cpu())
            keep.append(mask[ok])
    cat = lambda d: {t: torch.cat(v) for t, v in d.items()}  # noqa: E731
    return cat(experts), torch.cat(keep), cat(labels)


def sample_budget(model: KARMMA, max_samples: int = MAX_SAMPLES, memory_mb: float = MEMORY_MB) -> int:
    """How many validation samples the fit reads: each holds ``(1 + M)`` experts' float32
    log-probabilities over every task's classes under each of the ``2^M - 1`` subsets."""
    m = len(model.specs)
    per_sample = (2**m - 1) * (1 + m) * sum(model.tasks.values()) * 4
    return max(1, min(max_samples, int(memory_mb * 2**20 // per_sample)))


def fit_fusion_weights(model: KARMMA, data: FeatureSet, seed: int = 0, max_samples: int = MAX_SAMPLES) -> torch.Tensor:
    """Fit the late fusion's ``weights`` on ``data`` (the validation split), set them, and return the
    shared weights ``(1 + M,)``.

    Minimises the cross-entropy of the log-linear pool of the experts (summed over tasks, averaged
    over samples and subsets) over positive weights (fitted as logarithms, L-BFGS from all ones).
    With ``weights: per_subset`` each subset's row is then fitted on that subset alone,
    its log-weights drawn toward the shared ones by ``SHRINK * ||log w - log w_shared||^2``.
    Labels outside a task's classes (``-1``: unlabelled) are ignored."""
    if not data.labelled or not any((np.asarray(v) >= 0).any() for v in data.labels.values()):
        raise DataError(
            f"{data.source}: the validation split has no labels to fit the late-fusion weights on; "
            "give a labelled validation split (data.val) or set model.addons.late_fusion.weights=equal"
        )
    lf = _late_fusion(model)
    was_training = model.training
    model.eval()
    rows = np.arange(len(data))
    budget = sample_budget(model, max_samples)
    if len(rows) > budget:
        rows = np.sort(np.random.default_rng(seed).choice(rows, budget, replace=False))
    experts, keep, labels = _expert_log_probs(model, data, rows)
    pool = lf.cfg.pool
    shared = _fit(experts, keep, labels, torch.zeros(lf.weights.shape[1]), RIDGE, pool)
    table = shared.log().repeat(lf.weights.shape[0], 1)
    if lf.cfg.weights == "per_subset":
        row = subset_index(keep)
        for r in row.unique().tolist():
            sel = row == r
            table[r] = _fit({t: e[sel] for t, e in experts.items()}, keep[sel],
                            {t: y[sel] for t, y in labels.items()}, shared.log(), SHRINK, pool).log()  # fmt: skip
    lf.weights.copy_(table.exp().to(lf.weights))
    model.train(was_training)
    log.info(
        "late-fusion weights fitted on %d validation samples: %s%s",
        len(rows),
        ", ".join(f"{k} {v:.3g}" for k, v in fusion_weight_names(model, shared).items()),
        " (shared; one row per modality subset drawn toward them)" if lf.cfg.weights == "per_subset" else "",
    )
    return shared


def _fit(
    experts: dict, present: torch.Tensor, labels: dict, prior: torch.Tensor, shrink: float, pool: str
) -> torch.Tensor:
    """Positive weights (one row) minimising the pooled experts' cross-entropy plus
    ``shrink * ||log w - prior||^2``; an expert absent from every sample keeps ``exp(prior)``."""
    log_w = prior.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([log_w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w = log_w.exp().expand(len(present), -1)
        loss = sum(
            torch.nn.functional.cross_entropy(
                pool_experts(e[:, 0], e[:, 1:], present, w, pool)[0], labels[t], ignore_index=-1
            )  # fmt: skip
            for t, e in experts.items()
        )
        loss = loss + shrink * ((log_w - prior) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return log_w.detach().exp()


def _expert_names(model: KARMMA) -> list[str]:
    return ["fused", *(["heads"] if _late_fusion(model).cfg.pool == "mixture" else []), *model.modality_names]


def fusion_weight_names(model: KARMMA, weights: torch.Tensor) -> dict[str, float]:
    """``{"fused": a, ("heads": c,) modality: b_m, ...}`` for one row of fusion weights."""
    return dict(zip(_expert_names(model), (float(x) for x in weights)))


def per_subset_weight_names(model: KARMMA) -> dict[str, dict[str, float]]:
    """``{subset: {"fused": a, present modality: b_m, ...}}``, the model's weights row by row."""
    names = model.modality_names
    out = {}
    for subset in all_subsets(names):
        present = torch.tensor([[n in subset for n in names]])
        row = dict(zip(_expert_names(model), _late_fusion(model).weights[subset_index(present)[0]].tolist()))
        out[subset_name(subset)] = {k: v for k, v in row.items() if k not in names or k in subset}
    return out


def _late_fusion(model: KARMMA) -> LateFusion:
    lf = late_fusion_of(model)
    if lf is None or lf.weights is None:
        raise DataError(
            "this model has no late-fusion weights to fit: give it model.addons.late_fusion with "
            "weights: validation or per_subset"
        )
    return lf


def fit_late_fusion_step(model: KARMMA, val_data: FeatureSet | None, seed: int) -> dict:
    """The post-training step (:mod:`karmma.engine.post_training`): fit the weights on the
    validation split; the entries it adds to ``model.json``."""
    lf = _late_fusion(model)
    if val_data is None:
        raise DataError("the late-fusion weights are fitted on a validation split, and there is none")
    meta = {"fusion_weights": fusion_weight_names(model, fit_fusion_weights(model, val_data, seed))}
    if lf.cfg.weights == "per_subset":
        meta["fusion_weights_per_subset"] = per_subset_weight_names(model)
    return meta
