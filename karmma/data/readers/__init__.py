"""Dataset readers (``karmma extract <name>``): the base class and registry helpers in
:mod:`karmma.data.readers.base`, one module per dataset beside it, registered in
:data:`karmma.registries.READERS`."""

from karmma.data.readers.base import (
    READERS,
    DatasetReader,
    Kind,
    Raw,
    SampleRef,
    get_reader,
    or_absent,
    reader_class,
    reader_names,
)

__all__ = [
    "READERS",
    "DatasetReader",
    "Kind",
    "Raw",
    "SampleRef",
    "get_reader",
    "or_absent",
    "reader_class",
    "reader_names",
]
