"""``karmma import-features``: community pre-extracted EPIC-KITCHENS-100 features into a store,
matched to the annotation CSV by ``narration_id``.

Formats (``--format``):

* ``mtcn``: an HDF5 file as MTCN (Kazakos et al., ICCV 2021) writes it —
  ``visual_features/<narration_id>`` and ``audio_features/<narration_id>``, each (clips, D);
  modalities ``visual`` and ``audio``;
* ``npy``: a folder of per-segment arrays, ``<modality>/<narration_id>.npy`` or
  ``<narration_id>.npz`` holding one array per modality (read without pickle);
* ``tbn``: the EPIC UDA TBN pickles, ``{"features": {"RGB"|"Flow"|"Audio": (N, S, D)},
  "narration_ids": [...]}``, one file or a folder of ``*.pkl`` — read by the restricted unpickler
  of :mod:`karmma.data.safe_pickle`. Modalities ``rgb``, ``flow``, ``audio``.

Every file is read as a hostile one (:mod:`karmma.data.safe_files`): an HDF5 file's links and
datasets are checked before anything is read, and no array may declare more than
:data:`karmma.limits.DECLARED_BYTES`. HDF5 and npy features are read a segment at a time, as the
segment is written: memory holds one segment, not the file (TBN pickles are read whole).

A segment's (clips, D) array becomes ``--tokens`` tokens (default: the most common clip count),
sampled evenly. A segment without any features is not written and is listed in the summary
(``<store>.summary.json``), as are features whose narration id the annotations lack. The store
is written under a temporary name and renamed when complete: a failed or interrupted import
leaves an existing store as it was.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from karmma.data.readers import epic
from karmma.data.safe_files import check_features_dtype, check_hdf5, npy_info, npz_info, read_npy, read_npz
from karmma.data.safe_pickle import Budget, safe_unpickle
from karmma.data.store_safety import os_error
from karmma.data.store_summary import summary_path
from karmma.data.store_writer import FeatureStoreWriter
from karmma.errors import ConfigError, DataError
from karmma.limits import DECLARED_BYTES
from karmma.modalities import ModalitySpec
from karmma.outputs import check_file_writable, not_an_input, write_failed, write_json_atomic
from karmma.progress import progress_bar

log = logging.getLogger(__name__)

FORMATS = ("mtcn", "npy", "tbn", "actionformer", "tim", "ego4d", "timeline")


def checked_shape(shape: tuple[int, ...] | None, dtype: np.dtype, where: str) -> tuple[int, ...]:
    """A segment's features: a real numeric (clips, ...) or (D,) array, not empty, within the bound."""
    check_features_dtype(dtype, where)
    if not shape or not all(shape):
        raise DataError(f"{where}: has shape {shape}; a segment's features are a non-empty (clips, dim) array")
    # as read, and as float32 (what as_tokens makes of it): int8 features cannot grow past the bound
    DECLARED_BYTES.check(math.prod(shape) * max(dtype.itemsize, 4), where)
    return tuple(shape)


class _Source:
    """Features by modality and narration id: ``names[modality]`` lists the ids, ``shape`` reads
    one array's declared shape and ``read`` the array itself (on demand)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: dict[str, dict[str, Any]] = {}

    def shape(self, m: str, nid: str) -> tuple[int, ...]:
        raise NotImplementedError

    def read(self, m: str, nid: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Mtcn(_Source):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if not path.is_file():
            raise DataError(f"{path}: --format mtcn reads one HDF5 file (visual_features/, audio_features/)")
        try:
            self.h5 = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{path}: not a readable HDF5 file ({e})") from e
        try:
            # first: no name below is looked up through a link out of the file (sizes: checked per segment read)
            check_hdf5(self.h5, path, sizes=False)
            groups = [g for g in ("visual_features", "audio_features") if g in self.h5]
            if not groups:
                raise DataError(f"{path}: no visual_features/ or audio_features/ group; is it an MTCN feature file?")
            for g in groups:
                if not isinstance(self.h5[g], h5py.Group):
                    raise DataError(f"{path}: {g} is not a group of per-segment datasets; is it an MTCN feature file?")
                # a name that is not UTF-8 text (h5py gives bytes) can name no annotated segment
                self.names[g.removesuffix("_features")] = {k: None for k in self.h5[g] if isinstance(k, str)}
        except BaseException:
            self.h5.close()
            raise

    def _dataset(self, m: str, nid: str) -> h5py.Dataset:
        ds = self.h5[f"{m}_features/{nid}"]
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"{self.path}: {m}_features/{nid} is a group, not a (clips, dim) dataset")
        return ds

    def shape(self, m: str, nid: str) -> tuple[int, ...]:
        ds = self._dataset(m, nid)
        return checked_shape(ds.shape, ds.dtype, f"{self.path}: dataset {f'{m}_features/{nid}'!r}")

    def read(self, m: str, nid: str) -> np.ndarray:
        try:
            return self._dataset(m, nid)[()]
        except OSError as e:  # a damaged chunk, a failed checksum or decompression
            where = f"{self.path}: dataset {f'{m}_features/{nid}'!r}"
            raise DataError(f"{where} cannot be read ({e}); the file is damaged — get a fresh copy") from e

    def close(self) -> None:
        self.h5.close()


class _Npy(_Source):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if not path.is_dir():
            raise DataError(f"{path}: --format npy reads a folder (<modality>/<id>.npy or <narration_id>.npz files)")
        for p in sorted(path.glob("*.npz")):
            members = npz_info(p)  # the headers only
            _few_modalities(len(members), p)
            for name, (shape, dtype) in members.items():
                self.names.setdefault(name, {})[p.stem] = (p, name, shape, dtype)
            _few_modalities(len(self.names), path)
        for d in sorted(x for x in path.iterdir() if x.is_dir()):
            for p in sorted(d.glob("*.npy")):
                self.names.setdefault(d.name, {})[p.stem] = (p, None, None, None)
            _few_modalities(len(self.names), path)

    def shape(self, m: str, nid: str) -> tuple[int, ...]:
        p, member, shape, dtype = self.names[m][nid]
        if member is None:
            shape, dtype = npy_info(p)
        return checked_shape(shape, dtype, f"{p}" + (f": member {member!r}" if member else ""))

    def read(self, m: str, nid: str) -> np.ndarray:
        p, member, _, _ = self.names[m][nid]
        return read_npy(p) if member is None else read_npz(p, [member])[member]


class _Tbn(_Source):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        files = sorted(path.glob("*.pkl")) if path.is_dir() else [path]
        budget = Budget()  # one bound for the arrays of every file: they are all held at once
        for f in files:
            nids, feats = tbn_contents(safe_unpickle(f, budget), f)
            for name, arr in feats.items():
                self.names.setdefault(name.lower(), {}).update(zip(nids, arr))

    def shape(self, m: str, nid: str) -> tuple[int, ...]:
        x = self.names[m][nid]
        return checked_shape(x.shape, x.dtype, f"{self.path}: {m} of {nid}")

    def read(self, m: str, nid: str) -> np.ndarray:
        return self.names[m][nid]


MAX_MODALITIES = 64  # a feature file holds a few modalities (MTCN 2, TBN 3): more is not a feature file


def _few_modalities(n: int, where: Path) -> None:
    if n > MAX_MODALITIES:
        raise DataError(f"{where}: holds {n} modalities (arrays per segment); a feature file has a few "
                        f"(at most {MAX_MODALITIES}) — is this the right folder or file?")  # fmt: skip


def tbn_contents(data: Any, f: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The narration ids and per-modality (N, ...) arrays of an unpickled TBN file, checked
    strictly: anything else (nested lists, shared references) is refused, never walked."""
    layout = "expected {'features': {'RGB'|'Flow'|'Audio': (N, S, D) array}, 'narration_ids': [N ids]}"
    if type(data) is not dict or type(data.get("features")) is not dict or "narration_ids" not in data:
        raise DataError(f"{f}: {layout}")
    ids = data["narration_ids"]
    if isinstance(ids, np.ndarray) and ids.ndim == 1 and ids.dtype.kind in "Uiu":
        ids = ids.tolist()
    if type(ids) not in (list, tuple) or not all(type(x) is int or isinstance(x, str | np.integer) for x in ids):
        raise DataError(f"{f}: narration_ids is not a list of strings or numbers; {layout}")
    nids = [str(x) for x in ids]
    feats = {}
    _few_modalities(len(data["features"]), f)
    for name, arr in data["features"].items():
        if not isinstance(arr, np.ndarray):
            raise DataError(f"{f}: features[{name!r}] is a {type(arr).__name__}, not a numeric array; {layout}")
        arr = np.asarray(arr)
        check_features_dtype(arr.dtype, f"{f}: features[{name!r}]")
        if arr.ndim < 2 or not all(arr.shape):
            raise DataError(f"{f}: features[{name!r}] has shape {arr.shape}; {layout}")
        if len(arr) != len(nids):
            raise DataError(f"{f}: {name} has {len(arr)} rows for {len(nids)} narration ids")
        feats[name] = arr
    return nids, feats


READ = {"mtcn": _Mtcn, "npy": _Npy, "tbn": _Tbn}


def as_tokens(x: np.ndarray, n: int) -> np.ndarray:
    """(clips, D) or (D,) -> (n, D) float32, clips sampled evenly (repeated when fewer)."""
    x = np.asarray(x)
    x = x[None] if x.ndim == 1 else x.reshape(len(x), -1)
    return x[np.linspace(0, len(x) - 1, n).round().astype(int)].astype(np.float32)  # the rows kept, then float


def _specs(feats: Any, wanted: set[str], tokens: int | None) -> list[ModalitySpec]:
    """One spec per modality with annotated features (their shapes read from the headers)."""
    specs = []
    for m in sorted(feats.names):
        shapes = [feats.shape(m, nid) for nid in feats.names[m] if nid in wanted]
        if not shapes:
            log.warning("%s: modality %s has no features for the annotated segments; not imported", feats.path, m)
            continue
        dims = Counter(math.prod(s[1:]) if len(s) > 1 else s[0] for s in shapes)
        if len(dims) > 1:
            raise DataError(f"{feats.path}: modality {m} has features of several widths {sorted(dims)}")
        n = tokens or Counter(s[0] if len(s) > 1 else 1 for s in shapes).most_common(1)[0][0]
        dim = next(iter(dims))
        DECLARED_BYTES.check(n * dim * 4, f"{m}: {n} tokens x {dim} (one segment, float32)")
        try:
            specs.append(ModalitySpec(m, n, dim))
        except (ConfigError, DataError) as e:  # a member name or a shape no modality can have
            raise DataError(f"{feats.path}: modality {m[:60]!r} ({e}); is this a feature file?") from e
    return specs


def import_features(
    fmt: str,
    source: str | Path,
    annotations: str | Path,
    out: str | Path,
    tokens: int | None = None,
    feature_set: str = "teacher",
    dtype: str = "float32",
    progress: bool = False,
    stride: float | None = None,
    window: float | None = None,
    fps: float | None = None,
    modality: str = "rgb",
) -> dict:
    """Write the features of every annotated segment; returns the summary (also in
    ``<out>.summary.json``). Time-indexed formats (:mod:`karmma.data.timeline_import`) take
    ``stride``/``window``/``fps`` (``timeline`` only) and name a folder of files ``modality``."""
    from karmma.data import timeline_import as tl

    if fmt not in READ and fmt not in tl.TIMELINE_FORMATS:
        raise DataError(f"unknown feature format {fmt!r}; choose one of {FORMATS}")
    if tokens is not None and tokens < 1:
        raise DataError(f"--tokens {tokens}: give at least 1 token per modality")
    source, out = Path(source), Path(out)
    if not source.exists():
        raise DataError(f"{source} does not exist")
    segments = epic.read_annotations(annotations)
    check_file_writable(out, "feature store")
    not_an_input(out, {"--source": source, "--annotations": Path(annotations),
                       **{p.name: p for p in epic.class_files_beside(Path(annotations))}})  # fmt: skip
    if fmt in tl.TIMELINE_FORMATS:
        lay = tl.layout(fmt, stride, window, fps)
        tokens = tokens or tl.DEFAULT_TOKENS
        opened: Any = tl.Timeline(source, segments, lay, modality, tl.video_durations(Path(annotations)))
    else:
        opened = READ[fmt](source)
    with opened as feats:
        if not feats.names:
            raise DataError(f"{source}: no features found for --format {fmt}")
        wanted = {s.narration_id for s in segments}
        specs = _specs(feats, wanted, tokens)
        mods = [sp.name for sp in specs]
        have = [s for s in segments if any(s.narration_id in feats.names[m] for m in mods)]
        if not have:
            raise DataError(f"{source}: none of the {len(segments)} segments of {annotations} has features; "
                            "are these the features of that split?")  # fmt: skip
        _write(feats, have, specs, out, fmt, feature_set, dtype, annotations, progress)
        absent = {m: sum(s.narration_id not in feats.names[m] for s in have) for m in mods}
        unmatched = sorted({nid for m in feats.names for nid in feats.names[m]} - wanted)
    missing = sorted(wanted - {s.narration_id for s in have})
    summary = {"samples": len(have), "modalities": {sp.name: list(sp.shape) for sp in specs}, "absent": absent,
               "not_written": missing, "unmatched_features": unmatched[:100],
               "unmatched_count": len(unmatched)}  # fmt: skip
    write_json_atomic(summary_path(out), summary)  # this run's store only: it replaces an older summary
    if missing:
        log.warning("%s: %d annotated segment(s) have no features and were not written", out, len(missing))
    return summary


def _write(feats: Any, have: list, specs: list[ModalitySpec], out: Path, fmt: str, feature_set: str,
           dtype: str, annotations: str | Path, progress: bool) -> None:  # fmt: skip
    """The store, written under a temporary name beside ``out`` and renamed when complete: an
    existing store is replaced only by a whole one."""
    labels, labelled = epic.segment_labels(have)
    extra = {"dataset": "epic100", "imported": fmt, "source": feats.path.name, "labelled": labelled}
    names = epic.class_names_beside(Path(annotations))
    ids = [s.narration_id for s in have]
    tmp = out.with_name(f".{out.name}.importing")
    bar = progress_bar(len(have), f"import {fmt}", progress, unit="segment")
    w = None
    try:
        w = FeatureStoreWriter(tmp, ids, labels, epic.TASKS, {feature_set: specs}, names, extra, False, dtype)
        with w:
            for i, s in enumerate(have):
                nid = s.narration_id
                present = [nid in feats.names[sp.name] for sp in specs]
                w.write(i, {feature_set: {sp.name: as_tokens(feats.read(sp.name, nid), sp.num_tokens)
                                          for sp, p in zip(specs, present) if p}}, present)  # fmt: skip
                bar.update(1)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(out)
    except OSError as e:
        raise write_failed(out, e) from e
    except DataError as e:  # the disk (the writer's failed write, or no room to start), or the data
        if (w is None or getattr(w, "failed", False)) and isinstance(e.__cause__, OSError | RuntimeError):
            raise DataError(f"{write_failed(out, os_error(e.__cause__))}; {out} is left as it was") from e
        raise DataError(f"{str(e).replace(str(tmp), str(feats.path))}; {out} is left as it was") from e
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
