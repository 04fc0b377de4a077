"""KARMMA models: [encoders] -> embedding -> [CLS] + fusion -> multi-head MLP."""

from karmma.models.karmma import KARMMA

__all__ = ["KARMMA"]
