"""Dataset readers behind one registry: how ``karmma extract <name>`` reads a dataset.

A reader is a small class in ``karmma/data/readers/<name>.py``, registered with ``@READERS.register(name)``:

* ``modalities``: ``{modality: Kind}`` — what each raw modality is (frames of C channels, optical
  flow, a C-channel signal, a skeleton of C coordinates), which chooses its frozen encoders;
* ``samples(root, split)``: the :class:`SampleRef` list (id, labels, group), sorted;
* ``load(ref, modalities, on_error)``: one sample's decoded raw inputs, ``{modality: array}``; a
  modality the sample lacks (or, with ``on_error="absent"``, cannot be read) is simply not there;
* ``tasks(refs)``: ``({task: num_classes}, {task: class names})``; ``extra``: metadata stored;
* ``options``: the keyword arguments its constructor takes (``karmma extract --annotations`` etc.);
  ``on_error``: its default for a corrupt file (``raise``, or ``absent`` for large media sets).

``load`` may return a :class:`Raw` (a dict) whose ``absent`` names why a modality is missing
("no video file", "no audio track", ...): extraction counts the reasons in its summary.

Extraction (:mod:`karmma.extractors.extract`) and the CLI's choices come from :data:`READERS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from karmma.data.raw import Kind, Raw  # noqa: F401  (re-exported: part of the reader API)
from karmma.errors import DataError
from karmma.registries import READERS

log = logging.getLogger(__name__)

SPLITS = ("all", "train", "test")


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
    options: tuple[str, ...] = ()
    on_error: str = "raise"
    source_names: dict[str, str] = {}  # {modality: where it comes from}, when the same for every sample
    contract: dict[str, str] = {}  # how raw data becomes arrays: time base, frames, audio, lengths, flow

    def sources(self, ref: SampleRef, modalities: tuple[str, ...]) -> dict[str, str]:
        """Where each of ``modalities`` of ``ref`` will come from, decided without reading media: the
        sample's provenance (:mod:`karmma.data.store_provenance`)."""
        return {m: self.source_names[m] for m in modalities if m in self.source_names}

    def samples(self, root: Path, split: str) -> list[SampleRef]:
        raise NotImplementedError

    def load(self, ref: SampleRef, modalities: tuple[str, ...], on_error: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def tasks(self, refs: list[SampleRef]) -> tuple[dict[str, int], dict[str, list[str]]]:
        raise NotImplementedError

    @classmethod
    def read_clip(cls, path: Path, modalities: tuple[str, ...]) -> Raw:
        """One raw clip (a video or a folder of frames) as this reader's raw modalities, for
        ``karmma predict --clip``; streams the clip lacks are absent."""
        raise DataError(f"the {cls.__name__} reader cannot read a raw clip; predict from a features file (--input)")


def or_absent(
    read: Callable[[], np.ndarray], on_error: str, what: str, raw: Raw | None = None, modality: str = ""
) -> np.ndarray | None:
    """``read()``, or None (logged, and the reason kept in ``raw.absent[modality]``) when it
    raises :class:`DataError` and ``on_error="absent"``. A missing stream (a clip without an audio
    track) is never an error: that modality is simply absent."""
    from karmma.data.media.decode import NoStream

    try:
        return read()
    except NoStream as e:
        if raw is not None:
            raw.absent[modality] = e.what
        return None
    except DataError as e:
        if on_error == "raise":
            raise
        log.warning("%s; recording %s as absent", e, what)
        if raw is not None:
            raw.absent[modality] = f"unreadable ({e})"
        return None


def reader_class(name: str) -> type[DatasetReader]:
    """The registered reader class ``name`` (the shipped ones are registered lazily in
    :mod:`karmma.registries`: only this reader's module is imported)."""
    return READERS.get(name)


def get_reader(name: str, **options: Any) -> DatasetReader:
    """The reader ``name``, built with the options it takes; an option it does not take (or one
    left as None) is refused or ignored, naming the flag."""
    cls = reader_class(name)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(cls.options))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise DataError(f"the {name} reader does not take {flags}; it takes {list(cls.options) or 'no options'}")
    return cls(**given)


def reader_names() -> list[str]:
    return READERS.names()
