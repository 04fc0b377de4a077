"""The teacher-logit cache: the frozen teacher's logits for every sample under every non-empty
modality subset, computed once so that distillation never runs the teacher (nor reads its
features) again.

Dense, it is ``N x (2**M - 1) x C`` floats: 16.9 GB in float32 for EPIC-100 train with 4
modalities and 97 + 300 + 3806 classes. It is held in memory (float32, exact) while that fits
in ``distill.cache_memory_mb``; beyond that it lives in an HDF5 file in the run folder, as float16
laid out ``(subset, sample, class)`` and chunked by samples, and each step reads only the rows and
subset its mask picks — resident memory is then the chunk cache, whatever N is. The file is
reused (and completed, if interrupted) by a later run of the same teacher on the same samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import torch

from karmma.data.store import read_sorted_rows
from karmma.modalities import subset_masks

log = logging.getLogger(__name__)

FILE = "teacher_logits.h5"
CHUNK_BYTES = 1 << 19  # ~512 KiB chunks of (1, rows, C) float16
CACHE_BYTES = 32 << 20  # per task: the chunk cache of the reading handle


def dense_bytes(n: int, num_modalities: int, tasks: dict[str, int]) -> int:
    """Bytes of the dense float32 cache of ``n`` samples."""
    return n * (2**num_modalities - 1) * sum(tasks.values()) * 4


def fits_in_memory(n: int, num_modalities: int, tasks: dict[str, int], memory_mb: float) -> bool:
    """Whether the dense float32 cache of ``n`` samples is held in memory (else on disk, float16)."""
    return dense_bytes(n, num_modalities, tasks) <= memory_mb * 2**20


def resident_bytes(n: int, num_modalities: int, tasks: dict[str, int], memory_mb: float = 1024) -> int:
    """Bytes the cache keeps in memory for ``n`` samples: the dense float32 array if it fits in
    ``memory_mb``, else the on-disk cache's chunk caches."""
    if fits_in_memory(n, num_modalities, tasks, memory_mb):
        return dense_bytes(n, num_modalities, tasks)
    return len(tasks) * CACHE_BYTES


class TeacherLogits:
    """``{task: (2**M - 1, N, C)}`` logits, in memory (torch float32) or in an HDF5 file (float16)."""

    def __init__(self, arrays: dict, path: Path | None = None) -> None:
        self.arrays, self.path = arrays, path
        self.tasks = list(arrays)

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def _read(self, task: str, col: int, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` (sorted) of subset ``col``, float32."""
        arr = self.arrays[task]
        if not self.on_disk:
            return arr[col, torch.from_numpy(rows)]
        out = np.empty((len(rows), arr.shape[2]), dtype=np.float32)
        return torch.from_numpy(read_sorted_rows(lambda a, b: arr[col, a:b], rows, arr.chunks[1], out))

    def lookup(self, index: torch.Tensor, col: torch.Tensor) -> dict[str, torch.Tensor]:
        """The logits of sample ``index[i]`` under subset ``col[i]``, for each task: ``(B, C)``."""
        rows, cols = index.cpu().numpy(), col.cpu().numpy()
        out = {}
        for task in self.tasks:
            if not self.on_disk:
                out[task] = self.arrays[task][torch.from_numpy(cols), torch.from_numpy(rows)]
                continue
            res = torch.empty(len(rows), self.arrays[task].shape[2])
            for c in np.unique(cols):
                pick = np.flatnonzero(cols == c)
                order = np.argsort(rows[pick], kind="stable")
                res[pick[order]] = self._read(task, int(c), rows[pick][order])
            out[task] = res
        return out

    def column(self, col: int, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Every task's logits for subset ``col`` at (sorted) ``rows``."""
        return {t: self._read(t, col, np.asarray(rows, dtype=np.int64)) for t in self.tasks}

    def close(self) -> None:
        if self.on_disk and self.arrays:
            next(iter(self.arrays.values())).file.close()


def open_teacher_logits(path: str | Path, tasks: list[str]) -> TeacherLogits:
    """A complete cache file written by :func:`cache_teacher_logits`, read-only (other DDP ranks)."""
    h5 = h5py.File(path, "r", rdcc_nbytes=CACHE_BYTES)
    return TeacherLogits({t: h5[t] for t in tasks}, Path(path))


def _key(teacher: torch.nn.Module, ids: list[str], teacher_hash: str | None) -> str:
    h = hashlib.sha256("\n".join(ids).encode())
    tasks: dict[str, int] = getattr(teacher, "tasks")  # noqa: B009  (a KARMMA's {task: classes})
    return json.dumps({"teacher": teacher_hash, "samples": h.hexdigest(), "tasks": dict(tasks)})


def _open_file(path: Path, key: str, n: int, num_subsets: int, tasks: dict[str, int]) -> tuple[h5py.File, int]:
    """The cache file, reused (rows done so far) when it holds this teacher's logits for these samples."""
    if path.exists():
        try:
            h5 = h5py.File(path, "r+", rdcc_nbytes=CACHE_BYTES)
            if h5.attrs.get("key") == key:
                return h5, int(h5.attrs["rows_done"])
            h5.close()
        except OSError:
            pass
        log.info("%s is from another teacher or other samples: computing it anew", path)
        path.unlink()
    h5 = h5py.File(path, "w", rdcc_nbytes=CACHE_BYTES)
    for task, c in tasks.items():
        rows = max(1, min(n, CHUNK_BYTES // (2 * c)))
        h5.create_dataset(task, shape=(num_subsets, n, c), dtype=np.float16, chunks=(1, rows, c))
    h5.attrs["key"], h5.attrs["rows_done"] = key, 0
    return h5, 0


@torch.no_grad()
def cache_teacher_logits(
    teacher,
    data,
    batch_size: int = 256,
    progress: bool = False,
    *,
    memory_mb: float = 1024,
    path: str | Path | None = None,
    teacher_hash: str | None = None,
) -> TeacherLogits:
    """The teacher's logits for every sample of ``data`` (a :class:`PairedFeatureSet`) under every
    non-empty modality subset (rows a sample cannot take, for lack of data, are left as computed).
    In memory if they fit in ``memory_mb``; else in ``path`` (needed then), float16 on disk."""
    from karmma.progress import progress_bar

    m, n = len(data.specs), len(data)
    masks = subset_masks(m)  # (2**M - 1, M), row j = subset code j + 1
    dense = dense_bytes(n, m, teacher.tasks)
    h5, start = None, 0
    if fits_in_memory(n, m, teacher.tasks, memory_mb):
        arrays = {t: torch.zeros(len(masks), n, c) for t, c in teacher.tasks.items()}
    else:
        if path is None:
            raise ValueError(f"teacher logits need {dense / 2**30:.1f} GiB; give a path to keep them on disk")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        h5, start = _open_file(path, _key(teacher, data.ids, teacher_hash), n, len(masks), teacher.tasks)
        arrays = {t: h5[t] for t in teacher.tasks}
        log.info("teacher logits (%.1f GiB as float32) kept on disk in %s, float16", dense / 2**30, path)
    device = next(teacher.parameters()).device
    steps = (n + batch_size - 1) // batch_size
    bar = progress_bar(len(masks) * steps, "teacher logits", progress, initial=len(masks) * (start // batch_size))
    for first in range(start, n, batch_size):
        rows = np.arange(first, min(n, first + batch_size))
        tokens = [t.to(device) for t in data.teacher.get_batch(rows).tokens]
        for j, row in enumerate(masks):
            out = teacher(tokens, row.to(device).expand(len(rows), -1))
            for t, arr in arrays.items():
                z = out[t].float().cpu()
                if h5 is None:
                    arr[j, first : rows[-1] + 1] = z
                else:
                    arr[j, first : rows[-1] + 1] = z.clamp(-6e4, 6e4).numpy().astype(np.float16)
            bar.update(1)
        if h5 is not None:
            h5.attrs["rows_done"] = int(rows[-1]) + 1
    bar.close()
    if h5 is not None:
        h5.flush()
    return TeacherLogits(arrays, Path(path) if h5 is not None and path is not None else None)
