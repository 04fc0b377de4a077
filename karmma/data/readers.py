"""Dataset readers behind one registry: how ``karmma extract <name>`` reads a dataset.

A reader is a small class in ``karmma/data/<name>.py``, registered with ``@READERS.register(name)``:

* ``modalities``: ``{modality: Kind}`` — what each raw modality is (frames of C channels, optical
  flow, a C-channel signal, a skeleton of C coordinates), which chooses its frozen encoders;
* ``samples(root, split)``: the :class:`SampleRef` list (id, labels, group), sorted;
* ``load(ref, modalities, on_error)``: one sample's decoded raw inputs, ``{modality: array}``; a
  modality the sample lacks (or, with ``on_error="absent"``, cannot be read) is simply not there;
* ``tasks(refs)``: ``({task: num_classes}, {task: class names})``; ``extra``: metadata stored.

Extraction (:mod:`karmma.extractors.extract`) and the CLI's choices come from :data:`READERS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from karmma.errors import DataError
from karmma.registry import Registry

log = logging.getLogger(__name__)

READERS = Registry("dataset reader")
SPLITS = ("all", "train", "test")


@dataclass(frozen=True)
class Kind:
    """What a raw modality is: ``frames`` (T, H, W[, C]), ``flow`` (T, H, W, 3: u, v, magnitude),
    ``signal`` (T, C) or ``skeleton`` (T, C joint coordinates)."""

    kind: str
    channels: int


@dataclass
class SampleRef:
    id: str
    labels: dict[str, int]
    group: str | None = None  # e.g. the subject or participant (validation splits by group)
    source: Any = field(default=None, repr=False)  # reader-specific: files, a CSV row, ...


class DatasetReader:
    modalities: dict[str, Kind] = {}
    default_modalities: tuple[str, ...] = ()
    extra: dict[str, Any] = {}

    def samples(self, root: Path, split: str) -> list[SampleRef]:
        raise NotImplementedError

    def load(self, ref: SampleRef, modalities: tuple[str, ...], on_error: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def tasks(self, refs: list[SampleRef]) -> tuple[dict[str, int], dict[str, list[str]]]:
        raise NotImplementedError


def or_absent(read: Callable[[], np.ndarray], on_error: str, what: str) -> np.ndarray | None:
    """``read()``, or None (logged) when it raises :class:`DataError` and ``on_error="absent"``."""
    try:
        return read()
    except DataError as e:
        if on_error == "raise":
            raise
        log.warning("%s; recording %s as absent", e, what)
        return None


def _register_shipped() -> None:
    import karmma.data.utd_mhad  # noqa: F401  (each shipped reader registers itself on import)
    import karmma.data.video_folder  # noqa: F401


def get_reader(name: str) -> DatasetReader:
    _register_shipped()
    return READERS.get(name)()


def reader_names() -> list[str]:
    _register_shipped()
    return READERS.names()
