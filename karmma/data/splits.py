"""Validation splits carved from the training data, by group.

Every choice (alpha, T, epochs, checkpoint, dropout rate) is made on a validation split; the test
split is read only for the final report. When a data set has no validation split of its own,
``data.val_fraction`` holds out that fraction of the training samples — whole groups at a time
when ``data.group_pattern`` names the group in each sample id (a regular expression whose first
group is, e.g., the participant: ``^(P\\d+)_`` for EPIC-100 narration ids, ``_s(\\d+)_`` for
UTD-MHAD's subjects), so that no participant is on both sides. The split is a pure function of
the ids, the fraction and the pattern.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from karmma.errors import DataError

SPLIT_SEED = 0  # the held-out groups do not change with the training seed


def sample_groups(ids: Sequence[str], pattern: str, source: str = "data") -> list[str]:
    """The group of each sample id (the id itself without a pattern)."""
    if not pattern:
        return list(ids)
    rx = re.compile(pattern)
    out = []
    for i in ids:
        m = rx.search(i)
        if m is None:
            raise DataError(
                f"{source}: sample id {i!r} does not match data.group_pattern {pattern!r}; "
                "fix the pattern (its first group is the sample's group) or leave it empty"
            )
        out.append(m.group(1) if m.groups() else m.group(0))
    return out


def shuffled_groups(ids: Sequence[str], pattern: str, source: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """(each sample's group, the distinct groups in the fixed random order splits and folds take)."""
    groups = np.array(sample_groups(ids, pattern, source))
    names = np.unique(groups)
    return groups, names[np.random.default_rng(SPLIT_SEED).permutation(len(names))]


def group_split(
    ids: Sequence[str], fraction: float, pattern: str = "", source: str = "data"
) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): whole groups, drawn in a fixed random order until at least
    ``fraction`` of the samples are held out."""
    groups, names = shuffled_groups(ids, pattern, source)
    if len(names) < 2:
        raise DataError(
            f"{source}: a validation split by group needs at least 2 groups, found {len(names)} "
            f"with data.group_pattern {pattern!r}; give data.val or another pattern"
        )
    counts = {g: c for g, c in zip(*np.unique(groups, return_counts=True))}
    held, total = [], 0
    for name in names:
        if total >= fraction * len(ids) or len(held) == len(names) - 1:
            break
        held.append(name)
        total += counts[name]
    is_val = np.isin(groups, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
