"""Where each sample's modalities came from (provenance), recorded in the store per sample.

Layout (beside those of :mod:`karmma.data.store`)::

    provenance/<modality> (N,) uint8   index into attrs["sources"]: a JSON list of source names
                                       (e.g. ["tvl1_jpeg", "farneback_video"]); 255: not recorded

A reader says, before any media is read, where each modality of a sample will come from
(:meth:`karmma.data.readers.base.DatasetReader.sources`): EPIC-100's flow from the release's TV-L1
JPEGs (±20 px) or Farneback flow computed from the video, its rgb from JPEG frames or the video.
Extraction refuses a store whose samples mix flow sources unless asked to (two flow algorithms are
two input distributions for one set of flow tokens), records every sample's sources when the store
is complete, and :func:`counts` summarises them for ``karmma info`` and for the training warning
that a train and a validation store disagree (:func:`mismatch`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from karmma.errors import DataError

UNRECORDED = 255
GROUP = "provenance"


def record(path: str | Path, sources: Sequence[Mapping[str, str]]) -> None:
    """Write each sample's ``{modality: source}`` (in the store's sample order), replacing any
    earlier record, and sync it."""
    path = Path(path)
    modalities = sorted({m for s in sources for m in s})
    try:
        with h5py.File(path, "r+") as h5:
            if len(sources) != h5["ids"].shape[0]:
                raise DataError(f"{path}: {len(sources)} provenance rows for {h5['ids'].shape[0]} samples")
            if GROUP in h5:
                del h5[GROUP]
            group = h5.create_group(GROUP)
            for m in modalities:
                names = sorted({s[m] for s in sources if m in s})
                if len(names) >= UNRECORDED:
                    raise DataError(f"{path}: {len(names)} sources of {m}; provenance records at most {UNRECORDED - 1}")
                code = {n: i for i, n in enumerate(names)}
                ds = group.create_dataset(m, data=np.array([code.get(s.get(m, ""), UNRECORDED) for s in sources],
                                                           np.uint8))  # fmt: skip
                ds.attrs["sources"] = json.dumps(names)
            h5.flush()
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as e:
        raise DataError(f"{path}: cannot record the samples' provenance ({e})") from e


def _read(h5: h5py.File, path: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    group = h5.get(GROUP)
    if not isinstance(group, h5py.Group):
        return out
    for m, ds in group.items():
        try:
            names = json.loads(ds.attrs["sources"])
            codes = ds[()]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or codes.ndim != 1:
                raise TypeError("not a list of source names and a (N,) code array")
        except (KeyError, TypeError, ValueError, OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: provenance of {m} is unreadable ({e}); re-extract the store") from e
        out[m] = (names, codes)
    return out


def counts(h5: h5py.File, path: Path) -> dict[str, dict[str, int]]:
    """``{modality: {source: samples}}`` (present or not: where the sample's data was looked for)."""
    out = {}
    for m, (names, codes) in _read(h5, path).items():
        c = Counter(int(x) for x in codes)
        out[m] = {(names[k] if k < len(names) else "not recorded"): n for k, n in sorted(c.items())}
    return out


def sources_of(path: str | Path) -> dict[str, dict[str, int]]:
    """:func:`counts` of a store file ({} for a store written before provenance was recorded)."""
    from karmma.data.store import _open

    path = Path(path)
    with _open(path) as h5:
        return counts(h5, path)


def mixed_flow(sources: Sequence[Mapping[str, str]], ids: Sequence[str]) -> str | None:
    """Why a store with these samples' sources would mix flow algorithms (None if it would not)."""
    by = Counter(s["flow"] for s in sources if s.get("flow"))
    if len(by) < 2:
        return None
    examples = {src: next(i for i, s in zip(ids, sources) if s.get("flow") == src) for src in by}
    parts = ", ".join(f"{n} from {src} (e.g. {examples[src]})" for src, n in by.most_common())
    return (f"the samples' optical flow would come from {len(by)} sources: {parts}. One store's flow tokens should "
            "come from one algorithm: extract flow frames for every video, or leave flow out (--modalities rgb,audio), "
            "or pass --allow-mixed-flow to record the mix (each sample's source is kept in the store)")  # fmt: skip


def mismatch(train: str | Path, val: str | Path) -> str | None:
    """Why a train and a validation store disagree on where a modality comes from (None if not)."""
    a, b = sources_of(train), sources_of(val)
    diffs = [f"{m}: {sorted(a[m])} in {Path(train).name}, {sorted(b[m])} in {Path(val).name}"
             for m in sorted(set(a) & set(b)) if set(a[m]) != set(b[m])]  # fmt: skip
    return "; ".join(diffs) or None
