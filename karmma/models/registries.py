"""Every model-side registry in one import, and the config check against them."""

from __future__ import annotations

from karmma.errors import ConfigError
from karmma.models.encoders import ENCODERS
from karmma.models.fusion import FUSION
from karmma.models.missing import MISSING
from karmma.models.motion_maps import MotionMapCNN  # noqa: F401  (registers motion_map_cnn)


def check_model_names(cfg) -> None:
    """``model.missing``, ``model.fusion`` and ``model.encoders`` name registered entries."""
    for key, registry in (("missing", MISSING), ("fusion", FUSION)):
        name = getattr(cfg, key)
        if name not in registry:
            raise ConfigError(f"model.{key}={name!r}; choose one of {registry.names()}")
    if not isinstance(cfg.encoders, dict):
        raise ConfigError(f"model.encoders must map modality -> encoder name, got {cfg.encoders!r}")
    for modality, name in cfg.encoders.items():
        if name not in ENCODERS:
            raise ConfigError(f"model.encoders.{modality}={name!r}; choose one of {ENCODERS.names()}")


__all__ = ["ENCODERS", "FUSION", "MISSING", "check_model_names"]
