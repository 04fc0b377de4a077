"""Per-sample, per-modality token features with an explicit presence mask.

A :class:`FeatureSet` holds, for N samples, one array-like ``(N, num_tokens, dim)`` per modality
(numpy arrays or lazy h5py datasets), a ``(N, M)`` bool presence mask, and integer labels per
task. Shapes, labels and presence are checked when it is built; feature values (NaN/Inf, absurd
magnitudes) once per split by :func:`validate_features` before training or evaluation (and at
write time by the store writer), not on every batch. ``get_batch`` reads and collates a batch:
absent modalities are zero-filled and flagged absent. Each error names the source and the sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from karmma import presence
from karmma.data import store_tokens
from karmma.data.store_values import MAX_ABS_FEATURE, invalid_rows, row_extremes  # noqa: F401
from karmma.errors import DataError
from karmma.modalities import ModalitySpec, check_mask


@dataclass
class Batch:
    ids: list[str]
    tokens: list[torch.Tensor]  # per modality (B, N_m, D_m), zeros where absent
    present: torch.Tensor  # (B, M) bool
    labels: dict[str, torch.Tensor]  # task -> (B,) int64
    index: torch.Tensor  # (B,) dataset indices
    teacher_tokens: list[torch.Tensor] | None = None  # distillation: the teacher's own features
    token_present: torch.Tensor | None = None  # (B, ΣN_m) per-token presence; None: whole modalities
    teacher_token_present: torch.Tensor | None = None  # distillation: the teacher's features' own (its ΣN_m)

    def mask(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (default: ``present``; either form, :mod:`karmma.presence`) restricted to what
        the data holds: per token when the batch has per-token presence or ``mask`` is per token,
        else ``mask & present``."""
        mask = self.present if mask is None else mask.bool()
        counts = [t.shape[1] for t in self.tokens]
        if self.token_present is None and mask.shape[1] == len(counts):
            return mask & self.present.to(mask.device)
        data = presence.per_token(self.present, counts)
        if self.token_present is not None:
            data = data & self.token_present
        return presence.combine(mask, data.to(mask.device), counts)

    def __len__(self) -> int:
        return len(self.ids)

    def _map(self, fn) -> Batch:
        return Batch(
            ids=self.ids,
            tokens=[fn(t) for t in self.tokens],
            present=fn(self.present),
            labels={k: fn(v) for k, v in self.labels.items()},
            index=self.index,
            teacher_tokens=None if self.teacher_tokens is None else [fn(t) for t in self.teacher_tokens],
            token_present=None if self.token_present is None else fn(self.token_present),
            teacher_token_present=None if self.teacher_token_present is None else fn(self.teacher_token_present),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch's tensors on ``device`` (ids and dataset indices stay on the CPU)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copies, for asynchronous host-to-GPU copies (called by the DataLoader)."""
        return self._map(lambda t: t.pin_memory())

    def select(self, rows: torch.Tensor) -> Batch:
        """The sub-batch of ``rows`` (a bool mask or index tensor)."""
        pick = rows.nonzero().flatten() if rows.dtype == torch.bool else rows
        return Batch(
            ids=[self.ids[i] for i in pick.tolist()],
            tokens=[t[pick] for t in self.tokens],
            present=self.present[pick],
            labels={k: v[pick] for k, v in self.labels.items()},
            index=self.index[pick],
            teacher_tokens=None if self.teacher_tokens is None else [t[pick] for t in self.teacher_tokens],
            token_present=None if self.token_present is None else self.token_present[pick],
            teacher_token_present=None if self.teacher_token_present is None else self.teacher_token_present[pick],
        )


@dataclass
class FeatureSet:
    specs: list[ModalitySpec]
    features: dict[str, object]  # modality -> array-like (N, n, d)
    present: np.ndarray  # (N, M) bool
    labels: dict[str, np.ndarray]  # task -> (N,) int
    ids: list[str]
    tasks: dict[str, int]
    class_names: dict[str, list[str]] = field(default_factory=dict)
    source: str = "<memory>"
    values_checked: bool = False  # validate_features() has passed on this set (in this process)
    chunk_rows: int | None = None  # samples per storage chunk of the store it comes from (None: no store)
    labelled: bool = True  # False: labels are -1 (e.g. the EPIC test split), for prediction only
    checksums: np.ndarray | None = None  # (N, M) CRC-32 of each present row as written (karmma.data.checksums)
    token_present: np.ndarray | None = None  # (N, ΣN_m) which tokens hold data; None: whole modalities
    durations: np.ndarray | None = None  # (N,) each clip's seconds (NaN: unknown); None: none known
    clip_tokens: tuple[str, ...] = ()  # modalities whose every token summarises the whole clip (not a time span)

    def __post_init__(self) -> None:
        n = len(self.ids)
        names = [s.name for s in self.specs]
        if sorted(self.features) != sorted(names):
            raise DataError(
                f"{self.source}: features for {sorted(self.features)} but specs name {names}; "
                "every modality needs a feature array (zeros where absent)"
            )
        self.present = np.asarray(self.present, dtype=bool)
        if self.present.shape != (n, len(names)):
            raise DataError(f"{self.source}: presence mask has shape {self.present.shape}, expected {(n, len(names))}")
        if self.checksums is not None and np.shape(self.checksums) != self.present.shape:
            raise DataError(f"{self.source}: per-row checksums have shape {np.shape(self.checksums)}, expected "
                            f"{self.present.shape}; the store is corrupt — re-extract it")  # fmt: skip
        for s in self.specs:
            shape = tuple(self.features[s.name].shape)
            if shape != (n, *s.shape):
                raise DataError(
                    f"{self.source}: modality {s.name!r} has features of shape {shape}, expected "
                    f"{(n, *s.shape)} (N, num_tokens, dim); re-extract it or fix the modality spec"
                )
        for task, num in self.tasks.items():
            if task not in self.labels:
                raise DataError(f"{self.source}: no labels for task {task!r}")
            lab = np.asarray(self.labels[task], dtype=np.int64)
            bad = np.flatnonzero((lab < 0) | (lab >= num)) if self.labelled else np.flatnonzero(lab != -1)
            if len(bad):
                raise DataError(
                    f"{self.source}: task {task!r} has unknown class id(s) {lab[bad[:5]].tolist()} at "
                    f"sample(s) {[self.ids[i] for i in bad[:5]]}; valid ids are 0..{num - 1} "
                    "(check the class list or drop those samples)"
                )
            self.labels[task] = lab
        if self.token_present is not None:
            self.token_present = np.asarray(self.token_present, dtype=bool)
            if self.token_present.shape != (n, sum(s.num_tokens for s in self.specs)):
                raise DataError(f"{self.source}: per-token presence has shape {self.token_present.shape}, expected "
                                f"{(n, sum(s.num_tokens for s in self.specs))}")  # fmt: skip
            self.token_present, lost = store_tokens.restrict(self.token_present, self.present, self.specs)
            if len(lost):
                raise DataError(f"{self.source}: sample(s) {[self.ids[i] for i in lost[:5]]} have a modality marked "
                                "present with no present token; mark it absent")  # fmt: skip
        empty = np.flatnonzero(~self.present.any(1))
        if len(empty):
            raise DataError(
                f"{self.source}: sample(s) {[self.ids[i] for i in empty[:5]]} have no modality present; "
                "every sample needs at least one modality (drop them from the split)"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def parts(self) -> list[FeatureSet]:
        """The feature sets this data reads (one here; student and teacher for paired data)."""
        return [self]

    @property
    def modality_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def _read(self, name: str, idx: np.ndarray, keep_dtype: bool = False) -> np.ndarray:
        """Rows ``idx`` of a modality, as a new array (float32, or the stored dtype if ``keep_dtype``):
        one read of the sorted unique rows, a slice when they are contiguous."""
        arr = self.features[name]
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        uniq, inverse = np.unique(sorted_idx, return_inverse=True)
        contiguous = len(uniq) > 0 and uniq[-1] - uniq[0] + 1 == len(uniq)
        key = slice(int(uniq[0]), int(uniq[-1]) + 1) if contiguous else uniq
        try:
            data = arr[key]
        except (OSError, KeyError, ValueError, RuntimeError) as e:  # h5py: corrupt chunks
            bad = self._unreadable(arr, uniq)
            raise DataError(
                f"{self.source}: cannot read modality {name!r} of sample(s) "
                f"{[self.ids[i] for i in bad[:5]]} ({e}); the file is corrupt (checksum or format) "
                "— re-extract it"
            ) from e
        dtype = data.dtype if keep_dtype else np.dtype(np.float32)
        if not (len(uniq) == len(idx) and (order == np.arange(len(idx))).all()):
            data = data[inverse[np.argsort(order)]]  # back to the asked order: one gather, a new array
        elif isinstance(arr, np.ndarray) and data.dtype == dtype:
            data = data.copy()  # a slice of an in-memory array is a view: callers may write into theirs
        return data.astype(dtype, copy=False)

    def _unreadable(self, arr: object, idx: np.ndarray) -> list[int]:
        """The rows of ``idx`` whose storage chunk cannot be read (to name them in an error)."""
        chunk = (getattr(getattr(arr, "ds", arr), "chunks", None) or (1,))[0]
        bad: list[int] = []
        for group in np.split(idx, np.flatnonzero(np.diff(idx // chunk)) + 1):
            try:
                arr[group[:1]]
            except (OSError, KeyError, ValueError, RuntimeError):
                bad.extend(int(i) for i in group)
            if len(bad) >= 5:
                break
        return bad or [int(i) for i in idx[:5]]

    def get_batch(self, idx: Sequence[int] | np.ndarray) -> Batch:
        idx = np.asarray(idx, dtype=np.int64)
        present = self.present[idx] if len(idx) else np.zeros((0, len(self.specs)), dtype=bool)
        tokens = []
        for m, s in enumerate(self.specs):
            x = self._read(s.name, idx) if len(idx) else np.zeros((0, *s.shape), np.float32)
            x[~present[:, m]] = 0.0
            tokens.append(torch.from_numpy(x))
        present_t = torch.from_numpy(present.copy())
        ids = [self.ids[i] for i in idx]
        if len(idx):
            check_mask(present_t, ids)
        return Batch(
            ids=ids,
            tokens=tokens,
            present=present_t,
            labels={t: torch.from_numpy(self.labels[t][idx]) for t in self.tasks},
            index=torch.from_numpy(idx),
            token_present=None if self.token_present is None else torch.from_numpy(self.token_present[idx]),
        )

    def rows(self, idx: Sequence[int] | np.ndarray) -> FeatureSet:
        """Samples ``idx``: still read lazily when the features are on disk, else an in-memory copy."""
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        if all(isinstance(a, np.ndarray) for a in self.features.values()):
            return self.subset(idx)
        return self._taking(idx, {k: RowView(v, idx) for k, v in self.features.items()})

    def subset(self, idx: Sequence[int] | np.ndarray) -> FeatureSet:
        """An in-memory copy of samples ``idx`` (features in their stored dtype)."""
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        features = {s.name: self._read(s.name, idx, keep_dtype=True) for s in self.specs}
        return self._taking(idx, features, self.chunk_rows if len(idx) == len(self) else None)

    def _taking(self, idx: np.ndarray, features: dict, chunk_rows: int | None = None) -> FeatureSet:
        return FeatureSet(
            specs=self.specs,
            features=features,
            present=self.present[idx],
            labels={t: v[idx] for t, v in self.labels.items()},
            ids=[self.ids[i] for i in idx],
            tasks=self.tasks,
            class_names=self.class_names,
            source=self.source,
            values_checked=self.values_checked,
            chunk_rows=chunk_rows,
            labelled=self.labelled,
            checksums=None if self.checksums is None else self.checksums[idx],
            token_present=None if self.token_present is None else self.token_present[idx],
            durations=None if self.durations is None else self.durations[idx],
            clip_tokens=self.clip_tokens,
        )


class RowView:
    """Rows ``rows`` (sorted) of an array-like, indexable like it (a lazy subset of a store)."""

    def __init__(self, ds, rows: np.ndarray) -> None:
        self.ds, self.rows = ds, rows
        self.shape = (len(rows), *ds.shape[1:])
        self.dtype = getattr(ds, "dtype", None)

    def __getitem__(self, idx) -> np.ndarray:
        return self.ds[self.rows[idx]]


class PairedFeatureSet:
    """Student features + the teacher's features of the same samples (distillation).

    Presence and labels come from the student's set; both must list the same sample ids.
    """

    def __init__(self, student: FeatureSet, teacher: FeatureSet) -> None:
        if student.ids != teacher.ids:
            raise DataError(
                f"teacher features ({teacher.source}) and student features ({student.source}) list "
                "different samples; extract both feature sets from the same split"
            )
        if [s.name for s in student.specs] != [s.name for s in teacher.specs]:
            raise DataError("teacher and student feature sets must have the same modalities, in order")
        self.student = student
        self.teacher = teacher
        self.specs = student.specs
        self.tasks = student.tasks
        self.class_names = student.class_names
        self.ids = student.ids
        self.present = student.present

    def __len__(self) -> int:
        return len(self.student)

    def parts(self) -> list[FeatureSet]:
        return [self.student, self.teacher]

    def get_batch(self, idx: Sequence[int] | np.ndarray) -> Batch:
        batch = self.student.get_batch(idx)
        theirs = self.teacher.get_batch(idx)
        batch.teacher_tokens, batch.teacher_token_present = theirs.tokens, theirs.token_present
        return batch


def tokens_from_mapping(
    specs: Sequence[ModalitySpec], sample: Mapping[str, np.ndarray], source: str
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One sample's available modalities (a name -> array mapping) as a batch of one
    (:func:`karmma.data.sample.sample_tokens`, as tensors). Modalities not in ``sample`` are absent;
    :class:`DataError` on unknown modalities, wrong shapes, NaN/Inf or an empty set."""
    from karmma.data.sample import sample_tokens

    tokens, present = sample_tokens(specs, sample, source)
    return [torch.from_numpy(t) for t in tokens], torch.from_numpy(present)


# their home before 0.2 (imported at the end: they take the classes above)
from karmma.data.checks import check_fits, feature_stats, require_samples, validate_features  # noqa: E402,F401
