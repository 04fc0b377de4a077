"""Model add-ons: what goes beyond the paper's model without touching it (litgpt's adapters
beside an untouched model). An add-on is one file with a registered :class:`AddOn` subclass
(``@ADDONS.register(name)`` in :data:`karmma.registries.ADDONS`), chosen by
``model.addons: {name: {options}}``; its options are a typed dataclass (``Config``), parsed
where the model is built. The model calls three hooks:

* ``forward(out, present)`` at the end of every forward: read or change the
  :class:`~karmma.models.output.ModelOutput` (e.g. the late fusion's unimodal heads);
* ``losses(out, present, ctx)``: auxiliary loss terms, added by every task through one generic
  hook (:meth:`karmma.tasks.base.Task.run_model`); ``"loss"`` is the weighted sum to add;
* ``upgrade_state(state)``: how checkpoints of older releases map onto its weights.

A post-training step (e.g. fitting weights on the validation split) is a separate function the
recipe chooses (:mod:`karmma.engine.post_training`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from karmma.errors import ConfigError
from karmma.modalities import ModalitySpec
from karmma.models.output import ModelOutput
from karmma.registries import ADDONS
from karmma.typed_dict import typed_from_dict


@dataclass
class LossContext:
    """What a task knows that an add-on's auxiliary loss may use."""

    labels: dict[str, torch.Tensor]
    label_smoothing: float = 0.0
    # A distillation task's teacher: ``teacher(mask)`` is its ``{task: logits}`` on this batch
    # under another presence mask; None in stage 1.
    teacher: Any = None
    alpha: float = 1.0
    temperature: float = 1.0
    distill_addons: bool = False  # distil the add-on's own outputs too (distill.unimodal)
    mask: Any = None  # the step's presence mask in either form (karmma.presence); None: the whole one
    extra: dict[str, Any] = field(default_factory=dict)


class AddOn(nn.Module):
    Config: ClassVar[type] = object  # the add-on's options (a dataclass with a validate())

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    @classmethod
    def parse(cls, options: Mapping[str, Any], name: str) -> Any:
        cfg = typed_from_dict(cls.Config, dict(options), f"model.addons.{name}")
        try:
            cfg.validate()
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"model.addons.{name}: {e}") from None
        return cfg

    @classmethod
    def build(cls, cfg: Any, specs: Sequence[ModalitySpec], encoded: Sequence[ModalitySpec],
              tasks: Mapping[str, int]) -> AddOn:  # fmt: skip
        return cls(cfg)

    def options(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def forward(self, out: ModelOutput, present: torch.Tensor) -> ModelOutput:
        return out

    def losses(self, out: ModelOutput, present: torch.Tensor, ctx: LossContext) -> dict[str, torch.Tensor]:
        return {}

    def upgrade_state(self, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        return state


def build_addons(named: Mapping[str, Mapping[str, Any]], specs: Sequence[ModalitySpec],
                 encoded: Sequence[ModalitySpec], tasks: Mapping[str, int]) -> nn.ModuleDict:  # fmt: skip
    """The add-ons ``model.addons`` names, in its order."""
    out = nn.ModuleDict()
    for name, options in named.items():
        cls = ADDONS.get(name)
        out[name] = cls.build(cls.parse(options or {}, name), specs, encoded, tasks)
    return out


def resolved(cfg: Any) -> Any:
    """``cfg`` (a :class:`karmma.config.ModelConfig`) with every add-on's options spelled out, as
    a model built from it saves them."""
    return cfg.with_addons({n: asdict(ADDONS.get(n).parse(o or {}, n)) for n, o in cfg.addons.items()})
