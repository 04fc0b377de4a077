"""A training task: one objective as an ``nn.Module`` (the pattern of timm's ``timm/task`` and
open_clip's distillation task).

A task owns every trainable part — ``self.model`` (the model the run saves) and any modules
named in ``extra_parts`` (e.g. a projector) — and any frozen teacher. ``forward(batch, mask)``
returns ``{"loss": total, <named components>: scalars, "output": the model's logits}``; the
model's add-ons (e.g. the late fusion's unimodal heads) add their auxiliary terms through
:meth:`run_model`, whatever the task. The
generic loop (:func:`karmma.engine.train.fit`) optimises :meth:`trainable_parameters`, wraps only the
trainable parts in DDP (:meth:`prepare_distributed`), checkpoints ``model`` and the extra parts,
and logs the per-epoch mean of every component.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from karmma.data.dataset import Batch
from karmma.models.addons import LossContext
from karmma.models.karmma import KARMMA
from karmma.models.output import ModelOutput

if TYPE_CHECKING:
    from karmma.engine.augment import Augmentation


class Task(nn.Module):
    extra_parts: tuple[str, ...] = ()  # trainable modules beyond ``model``, checkpointed with it

    def __init__(self, model: KARMMA) -> None:
        super().__init__()
        self.model = model
        self._ddp: dict[str, nn.Module] = {}  # plain dict: the wrappers are not submodules
        # The training augmentation (karmma.engine.augment), set by the engine; not a submodule:
        # nothing of it is saved, and only training forwards get it.
        self.augment: Augmentation | None = None

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

    def run_model(self, batch: Batch, mask: torch.Tensor, ctx: LossContext | None = None) -> tuple[ModelOutput, dict]:
        """The model's output on ``batch`` under ``mask`` (with the training augmentation) and the
        add-ons' auxiliary terms: ``aux["loss"]`` (their weighted sum; add it to the task's loss,
        absent when no add-on has one) and each term's value by name. ``ctx`` says what the task
        knows (labels, a teacher, alpha, T); by default the labels only."""
        augment = self.augment if self.training else None  # training forwards only
        out = self.part("model")(batch.tokens, mask, augment=augment)
        ctx = ctx if ctx is not None else LossContext(batch.labels)
        aux: dict[str, torch.Tensor] = dict(self.model.missing.losses(self.model, batch, mask))  # e.g. reconstruct's
        whole = self.model.presence(mask)[0]  # add-ons take the whole-modality mask (out.token_masks: per token)
        for addon in self.model.addon_list().values():
            for key, value in addon.losses(out, whole, ctx).items():
                aux[key] = aux[key] + value if key in aux else value
        return out, aux


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
