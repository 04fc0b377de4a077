"""Configs and model files written for karmma 0.1, read as 0.2 lays them out.

0.1 kept two things beyond the paper inside ``model``: train-time augmentation
(``time_warp``, ``input_noise``, ``rotate``, ``swap``, ``swap_min_present``) — now the
``augment`` section, never saved with a model — and the unimodal heads with their late fusion
(``unimodal_weight``, ``unimodal_ensemble``, ``unimodal_pool``, ``fusion_weights``) — now the
``late_fusion`` add-on, ``model.addons.late_fusion: {loss_weight, ensemble, pool, weights}``.
A user's YAML with the old keys still loads, with a warning naming the new key; a 0.1
``model.json`` (format version 1) loads silently.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from karmma.errors import ConfigError

log = logging.getLogger(__name__)

AUGMENT_KEYS = ("time_warp", "input_noise", "rotate", "swap", "swap_min_present")
LATE_FUSION_KEYS = {
    "unimodal_weight": "loss_weight",
    "unimodal_ensemble": "ensemble",
    "unimodal_pool": "pool",
    "fusion_weights": "weights",
}


def migrate_model(model: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``(model keys of 0.2, augment keys, [old -> new, ...])`` from a 0.1 ``model`` mapping."""
    model = dict(model)
    augment = {k: model.pop(k) for k in AUGMENT_KEYS if k in model}
    late = {new: model.pop(old) for old, new in LATE_FUSION_KEYS.items() if old in model}
    moved = [f"model.{k} -> augment.{k}" for k in augment]
    moved += [f"model.{old} -> model.addons.late_fusion.{new}" for old, new in LATE_FUSION_KEYS.items() if new in late]
    if late.get("loss_weight", 0.0) or any(
        late.get(k, d) != d for k, d in (("ensemble", 0.0), ("pool", "product"), ("weights", "equal"))
    ):
        addons = dict(model.get("addons") or {})
        if "late_fusion" in addons:
            raise ConfigError(
                "model.addons.late_fusion and the old keys model.unimodal_* / model.fusion_weights are both "
                "given; keep only model.addons.late_fusion"
            )
        model["addons"] = {**addons, "late_fusion": late}
    return model, augment, moved


def migrate_experiment(data: dict[str, Any], where: str, warn: bool = True) -> dict[str, Any]:
    """An experiment config mapping with 0.1's ``model.*`` keys moved (a warning names them)."""
    model = data.get("model")
    if not isinstance(model, dict) or not (set(model) & {*AUGMENT_KEYS, *LATE_FUSION_KEYS}):
        return data
    data = copy.deepcopy(data)
    data["model"], augment, moved = migrate_model(model)
    if augment:
        section = data.setdefault("augment", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: augment must be a mapping of augmentation keys")
        both = sorted(set(section) & set(augment))
        if both:
            raise ConfigError(f"{where}: {both} given both as model.* (the old place) and augment.*; keep augment.*")
        section.update(augment)
    if warn:
        log.warning("%s: keys moved in karmma 0.2, read at their new place: %s; please move them", where,
                    ", ".join(moved))  # fmt: skip
    return data
