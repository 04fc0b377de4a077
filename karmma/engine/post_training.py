"""Post-training steps: what a recipe runs on the trained model before the run saves it as
``final`` — e.g. fitting the late fusion's weights on the validation split. A step is
``step(model, val_data, seed) -> {entries for model.json}``; :func:`recipe_steps` gives the steps
a config's add-ons ask for, which :func:`karmma.engine.train.fit` runs unless told others.
"""

from __future__ import annotations

from collections.abc import Callable

from karmma.config import ExperimentConfig
from karmma.data.dataset import FeatureSet
from karmma.errors import ConfigError
from karmma.models.karmma import KARMMA
from karmma.models.late_fusion import late_fusion_of

PostStep = Callable[[KARMMA, FeatureSet | None, int], dict]


def recipe_steps(model: KARMMA) -> list[PostStep]:
    """The steps ``model``'s add-ons need: the late-fusion weights when they are fitted."""
    from karmma.engine.fusion_weights import fit_late_fusion_step

    lf = late_fusion_of(model)
    return [fit_late_fusion_step] if lf is not None and lf.cfg.weights != "equal" else []


def check_steps(steps: list[PostStep], cfg: ExperimentConfig, has_val: bool) -> None:
    """Refuse, before training, steps that need a validation split the run lacks."""
    if steps and not has_val:
        raise ConfigError(
            f"model.addons.late_fusion.weights fits the late fusion on a validation split after training, "
            f"and {cfg.name} has none: give data.val (a feature store) or data.val_fraction, "
            "or set model.addons.late_fusion.weights=equal"
        )
