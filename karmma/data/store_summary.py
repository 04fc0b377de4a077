"""``<store>.summary.json``: what a store lacks and why, as the store is now.

The writer keeps, per sample, why each absent modality is absent (the store's ``reasons``: JSON
``{modality: why}``), for written samples and for those left unwritten because nothing could be
read. The summary is recomputed from them after every run, so it describes the store exactly:
a resumed run keeps the reasons of the samples already done and replaces those of the samples it
redoes, and ``--no-resume`` (a new store) starts a fresh one.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from karmma.data.safe_files import check_hdf5
from karmma.errors import DataError

EXAMPLES = 20  # ids shown per modality and reason


def summary_path(store: str | Path) -> Path:
    """``<store>.summary.json``: what extraction or import left absent or unwritten, and why."""
    store = Path(store)
    return store.with_name(store.name + ".summary.json")


def store_summary(path: str | Path) -> dict:
    """The store's summary: ``samples`` and ``done`` counts; per modality (``absent``), per reason,
    how many samples lack it (written or not) with up to 20 example ids; the samples left unwritten
    because nothing could be read (``not_written``); each sample's reasons (``reasons``)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as h5:
            check_hdf5(h5, path, "features/")  # nothing read from another file, nothing over the bound
            modalities = json.loads(h5.attrs["meta"])["modalities"]
            ids = list(h5["ids"].asstr()[:])
            done = h5["done"][:]
            raw = list(h5["reasons"].asstr()[:]) if "reasons" in h5 else [""] * len(ids)
        reasons = {i: json.loads(r) for i, r in zip(ids, raw) if r}
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: cannot read its absence reasons ({e}); the store is corrupt — re-extract it") from e
    absent: dict[str, dict[str, dict]] = {}
    for sample, why in reasons.items():
        for m, reason in why.items():
            slot = absent.setdefault(m, {}).setdefault(reason, {"count": 0, "examples": []})
            slot["count"] += 1
            if len(slot["examples"]) < EXAMPLES:
                slot["examples"].append(sample)
    return {
        "samples": len(ids),
        "done": int(done.sum()),
        "modalities": modalities,
        "absent": absent,
        "not_written": sorted(i for i, d in zip(ids, done) if not d and i in reasons),
        "reasons": reasons,
    }
