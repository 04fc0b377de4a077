"""Resolve a :class:`DataConfig` into feature sets (synthetic generator or feature stores)."""

from __future__ import annotations

import functools

from karmma.config import DataConfig, SyntheticConfig
from karmma.data.dataset import FeatureSet, PairedFeatureSet
from karmma.data.splits import group_split
from karmma.data.store import open_store
from karmma.errors import ConfigError

SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=4)
def _synthetic(cfg_items: tuple) -> dict:
    from karmma.data.synthetic import generate

    return generate(SyntheticConfig(**dict(cfg_items)))


def load_split(cfg: DataConfig, split: str, feature_set: str | None = None) -> FeatureSet:
    """``split``: "train", "val" or "test"; ``feature_set`` defaults to ``cfg.feature_set``.

    With ``data.val_fraction`` (and no ``data.val``) "train" and "val" are the two sides of a
    split of the training store by group (:mod:`karmma.data.splits`)."""
    fs = feature_set or cfg.feature_set
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
    if cfg.kind == "synthetic":
        sets = _synthetic(tuple(sorted(vars(cfg.synthetic).items())))[split]
        if fs not in sets:
            raise ConfigError(f"synthetic data has feature sets {sorted(sets)}, not {fs!r}")
        return sets[fs]
    if split != "test" and not cfg.val and cfg.val_fraction > 0:
        full = open_store(cfg.train, fs)
        fit_rows, val_rows = group_split(full.ids, cfg.val_fraction, cfg.group_pattern, str(cfg.train))
        return full.rows(fit_rows if split == "train" else val_rows)
    path = {"train": cfg.train, "val": cfg.val, "test": cfg.test}[split]
    if not path:
        raise ConfigError(f"data.{split} is not set; give the path of the {split} feature store")
    return open_store(path, fs)


def load_paired(cfg: DataConfig, split: str, teacher_feature_set: str) -> PairedFeatureSet:
    return PairedFeatureSet(load_split(cfg, split), load_split(cfg, split, teacher_feature_set))
