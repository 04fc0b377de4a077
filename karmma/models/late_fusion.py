"""Late fusion of unimodal heads (beyond the paper: the UTD-MHAD recipe), as a model add-on.

``model.addons.late_fusion: {loss_weight, ensemble, pool, weights}``:

* ``loss_weight`` w > 0: a unimodal head per modality (LayerNorm + a linear classifier per task
  on the mean of its encoder output), trained by an auxiliary CE on the samples where the
  modality is present (w times it is added to the task's loss) — each encoder learns to
  recognise on its own, the role the paper's pre-trained extractors play;
* ``ensemble`` e > 0 (needs w > 0): outside training the output fuses the fusion block's
  output with the *present* modalities' heads (:func:`late_fusion`), ``pool`` ``product`` (the
  mean of their log softmax) or ``mixture`` (the log of the mean of their probabilities);
* ``weights``: ``equal`` (the rule), ``validation`` (a weight per expert fitted on the validation
  split after training) or ``per_subset`` (then a row per modality subset drawn toward it), kept
  in the ``weights`` buffer (one row per subset, :func:`karmma.modalities.subset_index`) and fitted
  by :func:`karmma.engine.fusion_weights.fit_fusion_weights`, a post-training step.

Distillation (``distill.unimodal``) trains each head with alpha CE + (1 - alpha) T^2 KL from the
teacher's prediction with that modality alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from karmma.errors import ConfigError
from karmma.losses import unimodal_ce, unimodal_kd
from karmma.modalities import ModalitySpec, subset_index
from karmma.models.addons import AddOn, LossContext
from karmma.models.output import ModelOutput
from karmma.presence import masked_mean, only
from karmma.registries import ADDONS

POOLS = ("product", "mixture")
WEIGHTS = ("equal", "validation", "per_subset")


@dataclass
class LateFusionConfig:
    loss_weight: float = 1.0  # weight of the unimodal heads' auxiliary loss
    ensemble: float = 0.0  # weight of the heads in the late fusion at inference (0: heads training-only)
    pool: str = "product"  # how the present heads combine: "product" | "mixture"
    weights: str = "equal"  # "equal" | "validation" | "per_subset": fitted after training

    def validate(self) -> None:
        if not (math.isfinite(self.loss_weight) and self.loss_weight > 0):
            raise ConfigError(
                f"loss_weight={self.loss_weight} must be a finite number > 0 (remove the add-on for none)"
            )
        if not (math.isfinite(self.ensemble) and self.ensemble >= 0):
            raise ConfigError(f"ensemble={self.ensemble} must be a finite number >= 0 (0: off)")
        if self.pool not in POOLS:
            raise ConfigError(f"pool={self.pool!r}; choose 'product' or 'mixture'")
        if self.weights not in WEIGHTS:
            raise ConfigError(f"weights={self.weights!r}; choose 'equal', 'validation' or 'per_subset'")
        if self.weights != "equal" and self.ensemble == 0:
            raise ConfigError(
                f"weights={self.weights} weighs the late fusion of the unimodal heads; set ensemble > 0 (e.g. 2.0) "
                "or weights=equal"
            )


class UnimodalHead(nn.Module):
    """LayerNorm + a linear classifier per task over one modality's pooled encoder output."""

    def __init__(self, dim: int, tasks: Mapping[str, int]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({task: nn.Linear(dim, n) for task, n in tasks.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.norm(x)
        return {task: head(x) for task, head in self.heads.items()}


@ADDONS.register("late_fusion")
class LateFusion(AddOn):
    Config = LateFusionConfig
    cfg: LateFusionConfig

    def __init__(self, cfg: LateFusionConfig, dims: Sequence[int], tasks: Mapping[str, int],
                 counts: Sequence[int] | None = None) -> None:  # fmt: skip
        super().__init__(cfg)
        self.heads = nn.ModuleList(UnimodalHead(d, tasks) for d in dims)
        self.counts = list(counts) if counts is not None else [1] * len(dims)  # stored tokens per modality
        start = starting_row(cfg.pool, cfg.ensemble, len(dims))
        self.weights = nn.Buffer(start.repeat(2 ** len(dims) - 1, 1)) if cfg.weights != "equal" else None

    @classmethod
    def build(cls, cfg, specs: Sequence[ModalitySpec], encoded: Sequence[ModalitySpec], tasks) -> LateFusion:
        return cls(cfg, [e.dim for e in encoded], tasks, [s.num_tokens for s in specs])

    def unimodal(
        self, encoded: Sequence[torch.Tensor], token_masks: Sequence[torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The heads' ``{task: (B, M, C)}`` logits over each modality's mean encoding (over its
        present tokens, when ``token_masks`` says a modality is present for part of a clip)."""
        masks = token_masks if token_masks is not None else [None] * len(encoded)
        per = [head(masked_mean(e, mk)) for head, e, mk in zip(self.heads, encoded, masks)]
        return {task: torch.stack([o[task] for o in per], dim=1) for task in per[0]}

    def experts(self, out: ModelOutput) -> dict:
        """``out.extras["late_fusion"]``: the fused logits before late fusion and the heads' logits
        (computed once per output)."""
        if "late_fusion" not in out.extras:
            out.extras["late_fusion"] = {"fused": out.logits, "heads": self.unimodal(out.encoded, out.token_masks)}
        return out.extras["late_fusion"]

    def forward(self, out: ModelOutput, present: torch.Tensor) -> ModelOutput:
        ensemble = self.cfg.ensemble > 0 and not self.training
        if not (self.training or ensemble):
            return out
        heads = self.experts(out)["heads"]
        if not ensemble:
            return out
        fused = late_fusion(out.logits, heads, present, self.cfg.ensemble, self.weights, self.cfg.pool)
        return out.replace_logits(fused)

    def losses(self, out: ModelOutput, present: torch.Tensor, ctx: LossContext) -> dict[str, torch.Tensor]:
        heads = out.extras["late_fusion"]["heads"]
        aux = unimodal_ce(heads, ctx.labels, present, ctx.label_smoothing)
        if ctx.distill_addons and ctx.teacher is not None:
            step = ctx.mask if ctx.mask is not None else present  # per token when a modality is partial
            t = [ctx.teacher(only(step, m, self.counts)) for m in range(present.shape[1])]  # each modality alone
            teacher = {k: torch.stack([o[k] for o in t], dim=1) for k in t[0]}
            kd = unimodal_kd(heads, teacher, present, ctx.temperature)
            aux = ctx.alpha * aux + (1.0 - ctx.alpha) * kd
        return {"loss": self.cfg.loss_weight * aux, "unimodal": aux.detach()}

    def upgrade_state(self, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """karmma 0.1 kept the heads at ``unimodal.*`` and the weights at ``fusion_weights`` (before
        per-subset weights: one row ``(K,)`` for every subset)."""
        out = {}
        for k, v in state.items():
            if k.startswith("unimodal."):
                k = prefix + "heads." + k.removeprefix("unimodal.")
            elif k == "fusion_weights":
                k = prefix + "weights"
            out[k] = v
        w = out.get(prefix + "weights")
        if self.weights is not None and w is not None and w.dim() == 1:
            out[prefix + "weights"] = w.expand_as(self.weights).clone()
        return out


def late_fusion(
    fused: Mapping[str, torch.Tensor],
    unimodal: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    weight: float,
    weights: torch.Tensor | None = None,
    pool: str = "product",
) -> dict[str, torch.Tensor]:
    """The late-fused ``{task: log-probability-scale logits}``: :func:`pool_experts` divided by the
    experts' total weight (which keeps the log-probability scale distillation at temperature T needs).

    * ``weights`` None (``weights: equal``), ``w = weight``: for the ``product`` pool
      ``(log softmax(fused) + w * mean over present modalities of log softmax(unimodal)) / (1 + w)``;
      for the ``mixture`` pool ``(log softmax(fused) + w * log mean over present modalities of
      softmax(unimodal)) / (1 + w)``.
    * ``weights`` ``(2^M - 1, K)``: the row of the sample's own modality subset (a sample with no
      modality reads row 0, where every modality's weight meets a zero mask).
    """
    if weights is None and pool == "product":
        keep = present[..., None].to(next(iter(fused.values())).dtype)
        return {
            t: (f.log_softmax(-1) + weight * (unimodal[t].log_softmax(-1) * keep).sum(1) / keep.sum(1).clamp_min(1.0))
            / (1.0 + weight)
            for t, f in fused.items()
        }
    if weights is None:  # the mixture's equal shares are its starting row, for every subset
        row = starting_row(pool, weight, present.shape[1]).to(present.device).expand(len(present), -1)
    else:
        row = weights[subset_index(present).clamp_min(0)]
    out = {}
    for task, f in fused.items():
        num, total = pool_experts(f.log_softmax(-1), unimodal[task].log_softmax(-1), present, row.to(f.dtype), pool)
        out[task] = num / total
    return out


def pool_experts(
    fused: torch.Tensor, heads: torch.Tensor, present: torch.Tensor, w: torch.Tensor, pool: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The late fusion's pool ``(B, C)`` of log-probabilities — ``fused`` ``(B, C)``, the unimodal
    ``heads`` ``(B, M, C)`` where ``present`` ``(B, M)`` — and its total weight ``(B, 1)``.

    * ``product``, ``w = (a, b_1..b_M)``: ``a * fused + sum over present m of b_m * heads_m``;
      total ``a + sum over present m of b_m``.
    * ``mixture``, ``w = (a, c, b_1..b_M)``: ``a * fused + c * log(sum over present m of b_m *
      exp(heads_m) / sum over present m of b_m)``; total ``a + c``. With no modality present the
      heads' term is 0.
    """
    keep = present[..., None].to(fused.dtype)
    a = w[:, :1]
    if pool == "product":
        b = w[:, 1:, None]
        return a * fused + (b * keep * heads).sum(1), a + (b * keep).sum(1)
    c, b = w[:, 1:2], w[:, 2:, None]
    shares = torch.where(present[..., None], b.clamp_min(1e-30).log() + heads, torch.full_like(heads, -1e4))
    mix = torch.logsumexp(shares, 1) - (b * keep).sum(1).clamp_min(1e-30).log()
    mix = torch.where(present.any(1, keepdim=True), mix, torch.zeros_like(mix))
    return a * fused + c * mix, a + c


def starting_row(pool: str, weight: float, m: int) -> torch.Tensor:
    """The late fusion's weights before any fit, ``ensemble = weight``: (fused, each modality) =
    ``(1, w, .., w)`` for the product pool, (fused, heads, each modality's share) =
    ``(1, w, 1, .., 1)`` for the mixture (the mixture's equal shares exactly)."""
    return torch.tensor([1.0, weight] + [1.0] * m if pool == "mixture" else [1.0] + [weight] * m)


def late_fusion_of(model: nn.Module) -> LateFusion | None:
    """The model's late-fusion add-on, or None."""
    addons = getattr(model, "addons", None)
    return addons["late_fusion"] if addons is not None and "late_fusion" in addons else None
