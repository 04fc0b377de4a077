"""Dataset readers behind one registry: how ``karmma extract <name>`` reads a dataset.

A reader is a small class in ``karmma/data/<name>.py``, registered with ``@READERS.register(name)``:

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

from karmma.errors import DataError
from karmma.registry import Registry

log = logging.getLogger(__name__)

READERS = Registry("dataset reader")
SPLITS = ("all", "train", "test")


@dataclass(frozen=True)
class Kind:
    """What a raw modality is: ``frames`` (T, H, W[, C]), ``depth`` (T, H, W depth frames: depth motion
    maps with ``--encoder efficientnet``, frames otherwise), ``flow`` (T, H, W, 3: u, v, magnitude),
    ``signal`` (T, C) or ``skeleton`` (T, C joint coordinates)."""

    kind: str
    channels: int


@dataclass
class SampleRef:
    id: str
    labels: dict[str, int]
    group: str | None = None  # e.g. the subject or participant (validation splits by group)
    source: Any = field(default=None, repr=False)  # reader-specific: files, a CSV row, ...


class Raw(dict):
    """``{modality: array}`` of one sample, and ``absent``: ``{modality: why it is missing}``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.absent: dict[str, str] = {}


class DatasetReader:
    modalities: dict[str, Kind] = {}
    default_modalities: tuple[str, ...] = ()
    extra: dict[str, Any] = {}
    options: tuple[str, ...] = ()
    on_error: str = "raise"

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
    from karmma.extractors.media import NoStream

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


def _register_shipped() -> None:
    import karmma.data.epic_media  # noqa: F401  (each shipped reader registers itself on import)
    import karmma.data.ssv2_media  # noqa: F401
    import karmma.data.utd_mhad  # noqa: F401
    import karmma.data.video_folder  # noqa: F401


def reader_class(name: str) -> type[DatasetReader]:
    """The registered reader class ``name`` (the shipped ones included)."""
    _register_shipped()
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
    _register_shipped()
    return READERS.names()
