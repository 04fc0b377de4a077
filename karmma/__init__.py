"""KARMMA: multimodal knowledge distillation for action recognition robust to missing modalities.

First public implementation of arXiv 2504.08578. The library logs (``logging.getLogger("karmma")``)
and never prints; the ``karmma`` command line prints.
"""

from karmma import _moved
from karmma.errors import CheckpointError, ConfigError, DataError, KarmmaError
from karmma.modalities import ModalitySpec, all_subsets, subset_name

_moved.install()  # old import paths (karmma.train, karmma.checkpoint, ...) keep working, with a warning

__version__ = "0.2.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "KarmmaError",
    "ModalitySpec",
    "all_subsets",
    "subset_name",
    "__version__",
]
