"""A training task: one objective as an ``nn.Module`` (the pattern of timm's ``timm/task`` and
open_clip's distillation task).

A task owns every trainable part — ``self.model`` (the model the run saves) and any modules
named in ``extra_parts`` (e.g. a projector) — and any frozen teacher. ``forward(batch, mask)``
returns ``{"loss": total, <named components>: scalars, "output": the model's logits}``. The
generic loop (:func:`karmma.train.fit`) optimises :meth:`trainable_parameters`, wraps only the
trainable parts in DDP (:meth:`prepare_distributed`), checkpoints ``model`` and the extra parts,
and logs the per-epoch mean of every component.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from karmma.data.dataset import Batch
from karmma.losses import unimodal_ce, unimodal_kd
from karmma.models.karmma import KARMMA


class Task(nn.Module):
    extra_parts: tuple[str, ...] = ()  # trainable modules beyond ``model``, checkpointed with it

    def __init__(self, model: KARMMA) -> None:
        super().__init__()
        self.model = model
        self._ddp: dict[str, nn.Module] = {}  # plain dict: the wrappers are not submodules

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, **{name: getattr(self, name) for name in self.extra_parts}}

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [
            (f"{part}.{name}", p)
            for part, module in self.trainable_modules().items()
            for name, p in module.named_parameters()
            if p.requires_grad
        ]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        """The extra parts' weights (``model`` is saved on its own, as the run's model)."""
        return {f"{n}.{k}": v for n in self.extra_parts for k, v in getattr(self, n).state_dict().items()}

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.extra_parts:
            prefix = f"{name}."
            getattr(self, name).load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

    def prepare_distributed(self, device_ids: list | None = None) -> None:
        """Wrap each trainable part in DDP; forward reaches them through :meth:`part`."""
        for name, module in self.trainable_modules().items():
            self._ddp[name] = DDP(module, device_ids=device_ids)

    def part(self, name: str) -> nn.Module:
        return self._ddp.get(name) or getattr(self, name)

    def forward(self, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def run_model(
        self,
        batch: Batch,
        mask: torch.Tensor,
        with_features: bool = False,
        label_smoothing: float = 0.0,
        unimodal_teacher: dict[str, torch.Tensor] | None = None,
        alpha: float = 1.0,
        temperature: float = 1.0,
    ):
        """The model's ``(logits, [readers,] extra)``: ``extra`` holds the weighted unimodal auxiliary
        loss under ``"loss"`` and its value under ``"unimodal"`` when ``model.unimodal_weight`` > 0
        (an empty dict otherwise) — add ``extra["loss"]`` to the task's loss. With
        ``unimodal_teacher`` (the teacher's ``{task: (B, M, C)}`` single-modality logits) that loss
        is ``alpha * CE + (1 - alpha) * T^2 * KL`` per unimodal head."""
        weight = self.model.cfg.unimodal_weight
        flags = {k: True for k, on in (("with_features", with_features), ("with_unimodal", weight > 0)) if on}
        out = self.part("model")(batch.tokens, mask, **flags)
        if weight <= 0:
            return (*out, {}) if with_features else (out, {})
        aux = unimodal_ce(out[-1], batch.labels, mask, label_smoothing)
        if unimodal_teacher is not None:
            aux = alpha * aux + (1.0 - alpha) * unimodal_kd(out[-1], unimodal_teacher, mask, temperature)
        return (*out[:-1], {"loss": weight * aux, "unimodal": aux.detach()})


class FrozenTeacherMixin:
    """For tasks with ``self.teacher``: frozen (no gradients) and in eval mode whatever
    ``task.train()`` is asked, as open_clip's distillation task does."""

    teacher: nn.Module

    def freeze_teacher(self) -> None:
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)  # type: ignore[misc]
        self.teacher.eval()
        return self
