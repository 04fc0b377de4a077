"""Every model-side registry in one import, and the config check against them (kept for code
written against karmma 0.1: the registries live in :mod:`karmma.registries`)."""

from __future__ import annotations

from karmma.config import check_model_names
from karmma.registries import ADDONS, ENCODERS, FUSION, MISSING

__all__ = ["ADDONS", "ENCODERS", "FUSION", "MISSING", "check_model_names"]
