"""Resolve a :class:`DataConfig` into feature sets (synthetic generator or feature stores)."""

from __future__ import annotations

import functools

from karmma.config import DataConfig, SyntheticConfig
from karmma.data.dataset import FeatureSet, PairedFeatureSet
from karmma.data.store import open_store
from karmma.errors import ConfigError


@functools.lru_cache(maxsize=4)
def _synthetic(cfg_items: tuple) -> dict:
    from karmma.data.synthetic import generate

    return generate(SyntheticConfig(**dict(cfg_items)))


def load_split(cfg: DataConfig, split: str, feature_set: str | None = None) -> FeatureSet:
    """``split``: "train" or "val"; ``feature_set`` defaults to ``cfg.feature_set``."""
    fs = feature_set or cfg.feature_set
    if cfg.kind == "synthetic":
        sets = _synthetic(tuple(sorted(vars(cfg.synthetic).items())))[split]
        if fs not in sets:
            raise ConfigError(f"synthetic data has feature sets {sorted(sets)}, not {fs!r}")
        return sets[fs]
    path = cfg.train if split == "train" else cfg.val
    if not path:
        raise ConfigError(f"data.{split} is not set; give the path of the {split} feature store")
    return open_store(path, fs)


def load_paired(cfg: DataConfig, split: str, teacher_feature_set: str) -> PairedFeatureSet:
    return PairedFeatureSet(load_split(cfg, split), load_split(cfg, split, teacher_feature_set))
