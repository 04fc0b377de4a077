"""KARMMA models: embedding -> [CLS] + fusion -> multi-head MLP."""

from karmma.models.karmma import KARMMA, build_model

__all__ = ["KARMMA", "build_model"]
