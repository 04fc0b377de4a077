"""A ``torch.utils.data`` pipeline over feature sets: the training loop decides *which* rows make
each step's batch (a pure function of seed and step, so runs resume exactly); this loader reads
those batches ahead, in ``data.num_workers`` worker processes, pinned for CUDA.

Each item of :class:`StepBatches` is one whole batch (``FeatureSet.get_batch`` reads sorted rows,
one read per modality), so the DataLoader runs with automatic batching off.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from karmma.data.dataset import Batch


class StepBatches(Dataset):
    """``batches[i]``: the dataset rows of step ``i``; item ``i`` is their :class:`Batch`."""

    def __init__(self, data, batches: Sequence[np.ndarray]) -> None:
        self.data, self.batches = data, list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Batch:
        return self.data.get_batch(self.batches[i])


def _as_is(batch: Batch) -> Batch:
    return batch


def batch_loader(
    data, batches: Sequence[np.ndarray], num_workers: int = 0, pin_memory: bool = False, prefetch: int = 2
) -> DataLoader:
    """Batches of ``data`` for the given row lists, in order; read ahead by ``num_workers``
    processes (0: in this process), page-locked when ``pin_memory`` (for a CUDA device)."""
    return DataLoader(
        StepBatches(data, batches),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_as_is,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=prefetch if num_workers > 0 else None,
        persistent_workers=False,
    )
