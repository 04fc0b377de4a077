"""``karmma import-features``: community pre-extracted EPIC-KITCHENS-100 features into a store,
matched to the annotation CSV by ``narration_id``.

Formats (``--format``):

* ``mtcn``: an HDF5 file as MTCN (Kazakos et al., ICCV 2021) writes it —
  ``visual_features/<narration_id>`` and ``audio_features/<narration_id>``, each (clips, D);
  modalities ``visual`` and ``audio``;
* ``npy``: a folder of per-segment arrays, ``<modality>/<narration_id>.npy`` or
  ``<narration_id>.npz`` holding one array per modality (read without pickle);
* ``tbn``: the EPIC UDA TBN pickles, ``{"features": {"RGB"|"Flow"|"Audio": (N, S, D)},
  "narration_ids": [...]}``, one file or a folder of ``*.pkl`` — read by a restricted unpickler
  that builds numpy arrays, dicts, lists, tuples, numbers and strings only; anything else (a
  pickle that would run code) is refused with the file's name. Modalities ``rgb``, ``flow``, ``audio``.

A segment's (clips, D) array becomes ``--tokens`` tokens (default: the most common clip count),
sampled evenly. A segment without any features is not written and is listed in the summary
(``<store>.summary.json``), as are features whose narration id the annotations lack.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from karmma.data import epic
from karmma.data.store_writer import FeatureStoreWriter, summary_path
from karmma.errors import DataError
from karmma.modalities import ModalitySpec
from karmma.progress import progress_bar

log = logging.getLogger(__name__)

FORMATS = ("mtcn", "npy", "tbn")
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol-2 pickles store an array's bytes
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, f, path: Path) -> None:
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self.path}: refused to unpickle {module}.{name} — only numpy arrays, dicts, lists, tuples, numbers "
            "and strings are read; this file is not a plain feature pickle (it could run code)"
        )


def safe_unpickle(path: str | Path):
    """Load a pickle of numpy arrays and plain containers; refuse anything else by name."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(io.BufferedReader(f), path).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as e:
        raise DataError(f"{path}: not a readable feature pickle ({type(e).__name__}: {e})") from e
    _refuse_objects(obj, path)
    return obj


def _refuse_objects(obj, path: Path) -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise DataError(f"{path}: holds an object array; only numeric arrays are read")
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    for v in children:
        if isinstance(v, (dict, list, tuple, np.ndarray)):  # numbers and strings cannot hold objects
            _refuse_objects(v, path)


def _mtcn(source: Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        with h5py.File(source, "r") as h5:
            groups = [g for g in ("visual_features", "audio_features") if g in h5]
            if not groups:
                raise DataError(f"{source}: no visual_features/ or audio_features/ group; is it an MTCN feature file?")
            for g in groups:
                out[g.removesuffix("_features")] = {nid: np.asarray(h5[g][nid]) for nid in h5[g]}
    except OSError as e:
        raise DataError(f"{source}: not a readable HDF5 file ({e})") from e
    return out


def _npy(source: Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    if not source.is_dir():
        raise DataError(f"{source}: --format npy reads a folder (<modality>/<narration_id>.npy or <narration_id>.npz)")
    try:
        for p in sorted(source.glob("*.npz")):
            with np.load(p, allow_pickle=False) as z:
                for m in z.files:
                    out.setdefault(m, {})[p.stem] = z[m]
        for d in sorted(x for x in source.iterdir() if x.is_dir()):
            for p in sorted(d.glob("*.npy")):
                out.setdefault(d.name, {})[p.stem] = np.load(p, allow_pickle=False)
    except ValueError as e:  # an object array: refused, never unpickled
        raise DataError(f"{source}: a non-numeric (pickled) array ({e}); save float arrays only") from e
    return out


def _tbn(source: Path) -> dict[str, dict[str, np.ndarray]]:
    files = sorted(source.glob("*.pkl")) if source.is_dir() else [source]
    out: dict[str, dict[str, np.ndarray]] = {}
    for f in files:
        data = safe_unpickle(f)
        if not isinstance(data, dict) or "features" not in data or "narration_ids" not in data:
            raise DataError(f"{f}: expected {{'features': {{'RGB'|'Flow'|'Audio': (N, S, D)}}, 'narration_ids': []}}")
        nids = [str(x) for x in data["narration_ids"]]
        for name, arr in data["features"].items():
            arr = np.asarray(arr)
            if len(arr) != len(nids):
                raise DataError(f"{f}: {name} has {len(arr)} rows for {len(nids)} narration ids")
            out.setdefault(str(name).lower(), {}).update(zip(nids, arr))
    return out


READ = {"mtcn": _mtcn, "npy": _npy, "tbn": _tbn}


def as_tokens(x: np.ndarray, n: int) -> np.ndarray:
    """(clips, D) or (D,) -> (n, D) float32, clips sampled evenly (repeated when fewer)."""
    x = np.asarray(x, np.float32)
    x = x[None] if x.ndim == 1 else x.reshape(len(x), -1)
    return x[np.linspace(0, len(x) - 1, n).round().astype(int)]


def import_features(
    fmt: str,
    source: str | Path,
    annotations: str | Path,
    out: str | Path,
    tokens: int | None = None,
    feature_set: str = "teacher",
    dtype: str = "float32",
    progress: bool = False,
) -> dict:
    """Write the features of every annotated segment; returns the summary (also in
    ``<out>.summary.json``)."""
    if fmt not in READ:
        raise DataError(f"unknown feature format {fmt!r}; choose one of {FORMATS}")
    source, out = Path(source), Path(out)
    if not source.exists():
        raise DataError(f"{source} does not exist")
    feats = READ[fmt](source)
    if not feats:
        raise DataError(f"{source}: no features found for --format {fmt}")
    segments = epic.read_annotations(annotations)
    wanted = {s.narration_id for s in segments}
    specs, mods = [], sorted(feats)
    for m in mods:
        arrays = [np.asarray(a) for a in feats[m].values()]
        dims = Counter(int(np.prod(a.shape[1:])) if a.ndim > 1 else a.shape[0] for a in arrays)
        if len(dims) > 1:
            raise DataError(f"{source}: modality {m} has features of several widths {sorted(dims)}")
        n = tokens or Counter(len(a) if a.ndim > 1 else 1 for a in arrays).most_common(1)[0][0]
        specs.append(ModalitySpec(m, n, next(iter(dims))))
    have = [s for s in segments if any(s.narration_id in feats[m] for m in mods)]
    missing = sorted(wanted - {s.narration_id for s in have})
    unmatched = sorted({nid for m in mods for nid in feats[m]} - wanted)
    if not have:
        raise DataError(f"{source}: none of the {len(segments)} segments of {annotations} has features; "
                        "are these the features of that split?")  # fmt: skip
    labels, labelled = epic.segment_labels(have)
    extra = {"dataset": "epic100", "imported": fmt, "source": source.name, "labelled": labelled}
    bar = progress_bar(len(have), f"import {fmt}", progress, unit="segment")
    names = epic.class_names_beside(Path(annotations))
    ids = [s.narration_id for s in have]
    with FeatureStoreWriter(out, ids, labels, epic.TASKS, {feature_set: specs}, names, extra, False, dtype) as w:
        for i, s in enumerate(have):
            present = [s.narration_id in feats[m] for m in mods]
            w.write(i, {feature_set: {sp.name: as_tokens(feats[sp.name][s.narration_id], sp.num_tokens)
                                      for sp, p in zip(specs, present) if p}}, present)  # fmt: skip
            bar.update(1)
    bar.close()
    absent = {m: sum(s.narration_id not in feats[m] for s in have) for m in mods}
    summary = {"samples": len(have), "modalities": {sp.name: list(sp.shape) for sp in specs}, "absent": absent,
               "not_written": missing, "unmatched_features": unmatched[:100],
               "unmatched_count": len(unmatched)}  # fmt: skip
    summary_path(out).write_text(json.dumps(summary, indent=2))
    if missing:
        log.warning("%s: %d annotated segment(s) have no features and were not written", out, len(missing))
    return summary
