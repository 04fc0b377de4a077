"""The KARMMA model (teacher and student share this layout; only sizes differ).

    tokens[m] (B, N_m, D_m), present (B, M)
      -> standardise (absent -> 0) -> encoder[m] -> [train: modality swap] -> ModalityEmbedding (missing strategy)
      -> [CLS] + tokens -> fusion block
      -> readers: [CLS] output and each modality's mean output token     (forward_features)
      -> MultiTaskHead -> {task: logits}, averaged over readers            (forward_head)
      -> [inference, model.unimodal_ensemble: late fusion with the present modalities' unimodal heads,
          equal shares or weights fitted on the validation split (model.fusion_weights)]

The fusion block, the missing-modality strategy and the per-modality encoders are objects: pass
your own, or let ``cfg`` choose registered ones (``model.fusion``, ``model.missing``,
``model.encoders``). The baselines share the interface: ``missing="zero"`` (zero-filled
features) and ``missing="attn_mask"`` (missing slots masked out of attention and of the head
average). The "no modality dropout" baseline is a training setting (``modality_dropout.kind=none``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from karmma.config import ModelConfig
from karmma.errors import DataError
from karmma.modalities import ModalitySpec, check_named_modalities
from karmma.models.augment import ModalitySwap, TokenAugment, VectorRotate
from karmma.models.embedding import ModalityEmbedding
from karmma.models.encoders import build_encoders
from karmma.models.fusion import FUSION
from karmma.models.heads import MultiTaskHead
from karmma.models.missing import MISSING, MissingStrategy


class KARMMA(nn.Module):
    def __init__(
        self,
        specs: Sequence[ModalitySpec],
        tasks: Mapping[str, int],
        cfg: ModelConfig,
        *,
        fusion: nn.Module | None = None,
        missing: MissingStrategy | None = None,
        encoders: Sequence[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        cfg.validate()
        if not specs:
            raise DataError("KARMMA needs at least one modality spec")
        if not tasks:
            raise DataError("KARMMA needs at least one task (e.g. {'action': 27})")
        self.specs = list(specs)  # what the model takes (the stored tokens)
        self.tasks = dict(tasks)
        self.cfg = cfg
        self.augment = TokenAugment(cfg.time_warp, cfg.input_noise)
        self.rotate = _rotations(self.specs, cfg.rotate)
        self.swap = ModalitySwap(_per_modality(self.specs, cfg.swap, "model.swap"), cfg.swap_min_present)
        self.encoders = (
            nn.ModuleList(encoders) if encoders is not None else build_encoders(self.specs, cfg.encoders, cfg)
        )
        self.missing = missing if missing is not None else MISSING.get(cfg.missing)()
        encoded = [e.out_spec() for e in self.encoders]
        self.embed = ModalityEmbedding(encoded, cfg.dim, self.missing, in_specs=self.specs)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.fusion = fusion if fusion is not None else FUSION.get(cfg.fusion).from_config(cfg)
        self.head = MultiTaskHead(cfg.dim, cfg.head_hidden, self.tasks, 1 + len(self.specs))
        # Unimodal heads (model.unimodal_weight > 0): a linear classifier per modality and task on the
        # mean of that modality's encoder output; inference runs them only for model.unimodal_ensemble.
        self.unimodal = (
            nn.ModuleList(UnimodalHead(e.dim, self.tasks) for e in encoded) if cfg.unimodal_weight > 0 else None
        )
        # model.fusion_weights=validation|per_subset: the late fusion's weights, one row per modality
        # subset (row ``subset_index(present)``), at their starting row until karmma.fusion_weights
        # fits them.
        start = starting_row(cfg.unimodal_pool, cfg.unimodal_ensemble, len(self.specs))
        self.fusion_weights = (
            nn.Buffer(start.repeat(2 ** len(self.specs) - 1, 1)) if cfg.fusion_weights != "equal" else None
        )
        self.apply(_init_linear)

    def upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A saved state as this karmma loads it: checkpoints from before per-subset late-fusion
        weights hold one row of ``fusion_weights`` for every subset, which becomes that row in each."""
        w = state.get("fusion_weights")
        if self.fusion_weights is not None and w is not None and w.dim() == 1:
            state = {**state, "fusion_weights": w.expand_as(self.fusion_weights).clone()}
        return state

    @property
    def modality_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def _as_list(self, tokens: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(tokens, Mapping):
            unknown = sorted(set(tokens) - set(self.modality_names))
            if unknown:
                raise DataError(f"unknown modality {unknown}; this model knows {self.modality_names}")
            missing = [n for n in self.modality_names if n not in tokens]
            if missing:
                raise DataError(
                    f"no tensor for modality {missing}: pass zeros of the right shape and mark it "
                    "absent in the presence mask"
                )
            return [tokens[n] for n in self.modality_names]
        return list(tokens)

    def encode(self, tokens: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], present: torch.Tensor):
        """Each modality's standardised tokens through its encoder (absent ones as zeros)."""
        out = []
        for m, (x, enc) in enumerate(zip(self._as_list(tokens), self.encoders)):
            keep = present[:, m, None, None]
            if self.specs[m].name in self.rotate:  # a no-op outside training
                x = self.rotate[self.specs[m].name](x)
            x = self.embed.standardize(m, x, keep, getattr(enc, "standardize_inputs", True))
            if getattr(enc, "token_augment", True):
                x = torch.where(keep, self.augment(x), x)
            out.append(enc(x, present[:, m]) if getattr(enc, "takes_presence", False) else enc(x))
        return out

    def forward_features(
        self, tokens: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], present: torch.Tensor
    ) -> torch.Tensor:
        """Readers ``(B, 1 + M, dim)``: the [CLS] output and each modality's mean output token
        (in training, after the modality swap of ``model.swap``)."""
        return self._readers(self.swap(self.encode(tokens, present), present), present)

    def _readers(self, encoded: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        b = present.shape[0]
        x = self.embed(encoded, present)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = self.fusion(x, self.missing.key_mask(present, self.embed.specs))
        readers = [x[:, 0]]
        start = 1
        for s in self.embed.specs:
            readers.append(x[:, start : start + s.num_tokens].mean(1))
            start += s.num_tokens
        return torch.stack(readers, dim=1)

    def forward_head(self, readers: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: logits}`` from the readers, averaged as the missing-modality strategy weighs them."""
        return self.head(readers, self.missing.reader_weights(present, self.cfg.head_average))

    def forward(
        self,
        tokens: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
        present: torch.Tensor,
        with_features: bool = False,
        with_unimodal: bool = False,
    ):
        """``{task: logits}``; with ``with_features`` also the readers (for feature-level objectives),
        with ``with_unimodal`` also the unimodal heads' ``{task: (B, M, C)}`` logits — all through
        one forward call, so that a DDP wrapper synchronises their gradients."""
        encoded, readers, logits = self._through_head(tokens, present)
        ensemble = self.cfg.unimodal_ensemble > 0 and not self.training
        unimodal = self.forward_unimodal(encoded) if with_unimodal or ensemble else None
        if ensemble:
            logits = late_fusion(
                logits, unimodal, present, self.cfg.unimodal_ensemble, self.fusion_weights, self.cfg.unimodal_pool
            )
        out = [logits]
        if with_features:
            out.append(readers)
        if with_unimodal:
            out.append(unimodal)
        return tuple(out) if len(out) > 1 else out[0]

    def forward_experts(
        self, tokens: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], present: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The late fusion's experts, not fused: the fused ``{task: logits}`` and the unimodal
        heads' ``{task: (B, M, C)}`` (what :mod:`karmma.fusion_weights` weighs)."""
        encoded, _, fused = self._through_head(tokens, present)
        return fused, self.forward_unimodal(encoded)

    def _through_head(self, tokens, present: torch.Tensor):
        """(encoded tokens per modality, readers, fused ``{task: logits}``) — before any late fusion."""
        encoded = self.encode(tokens, present)
        readers = self._readers(self.swap(encoded, present), present)
        return encoded, readers, self.forward_head(readers, present)

    def forward_unimodal(self, encoded: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unimodal heads' ``{task: (B, M, C)}`` logits over each modality's mean encoding."""
        if self.unimodal is None:
            raise DataError("this model has no unimodal heads: set model.unimodal_weight > 0")
        return _stack_tasks([head(e.mean(1)) for head, e in zip(self.unimodal, encoded)])


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

    * ``weights`` None (``model.fusion_weights: equal``), ``w = weight``: for the ``product`` pool
      ``(log softmax(fused) + w * mean over present modalities of log softmax(unimodal)) / (1 + w)``,
      a weighted geometric mean of the fused expert's and the present sensors' own probabilities;
      for the ``mixture`` pool ``(log softmax(fused) + w * log mean over present modalities of
      softmax(unimodal)) / (1 + w)``.
    * ``weights`` ``(2^M - 1, K)``: the row of the sample's own modality subset (:func:`subset_index`).
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
        row = weights[subset_index(present)]
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
    """The late fusion's weights before any fit, ``model.unimodal_ensemble = weight``: (fused, each
    modality) = ``(1, w, .., w)`` for the product pool, (fused, heads, each modality's share) =
    ``(1, w, 1, .., 1)`` for the mixture (the mixture's equal shares exactly)."""
    return torch.tensor([1.0, weight] + [1.0] * m if pool == "mixture" else [1.0] + [weight] * m)


def subset_index(present: torch.Tensor) -> torch.Tensor:
    """Each sample's row in a per-subset table: the presence bits ``sum_m 2^m`` less one (a sample
    with no modality present reads row 0, where every modality's weight meets a zero mask)."""
    bits = 2 ** torch.arange(present.shape[1], device=present.device)
    return ((present.long() * bits).sum(1) - 1).clamp_min(0)


class UnimodalHead(nn.Module):
    """LayerNorm + a linear classifier per task over one modality's pooled encoder output."""

    def __init__(self, dim: int, tasks: Mapping[str, int]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({task: nn.Linear(dim, n) for task, n in tasks.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.norm(x)
        return {task: head(x) for task, head in self.heads.items()}


def _stack_tasks(per_modality: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {task: torch.stack([o[task] for o in per_modality], dim=1) for task in per_modality[0]}


def _rotations(specs: Sequence[ModalitySpec], rotate: Mapping[str, list[float]]) -> nn.ModuleDict:
    check_named_modalities(rotate, specs, "model.rotate")
    dims = {s.name: s.dim for s in specs}
    for name in rotate:
        if dims[name] % 3:
            raise DataError(
                f"model.rotate.{name}: its tokens have {dims[name]} values, not a whole number of 3-vectors; "
                "rotate only modalities stored as (x, y, z) triples"
            )
    return nn.ModuleDict({name: VectorRotate(angles) for name, angles in rotate.items()})


def _per_modality(specs: Sequence[ModalitySpec], values: Mapping[str, float], key: str) -> list[float]:
    """``values`` by modality, in the model's modality order (0 where not named)."""
    check_named_modalities(values, specs, key)
    return [float(values.get(s.name, 0.0)) for s in specs]


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
