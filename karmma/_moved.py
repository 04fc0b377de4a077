"""Old import paths of modules that moved in 0.2 (the tree now shows library and app): they keep
working for a release, with a :class:`DeprecationWarning` naming the new path.

``import karmma.train`` gives the very module ``karmma.engine.train`` (one object under two
names: patching either patches both).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    "karmma.train": "karmma.engine.train",
    "karmma.distill": "karmma.engine.distill",
    "karmma.out_of_fold": "karmma.engine.out_of_fold",
    "karmma.fusion_weights": "karmma.engine.fusion_weights",
    "karmma.distributed": "karmma.engine.distributed",
    "karmma.diagnostics": "karmma.engine.diagnostics",
    "karmma.runs": "karmma.engine.runs",
    "karmma.models.augment": "karmma.engine.augment",
    "karmma.evaluate": "karmma.evaluation.evaluate",
    "karmma.epic_eval": "karmma.evaluation.epic_eval",
    "karmma.cost": "karmma.evaluation.cost",
    "karmma.pipeline_cost": "karmma.evaluation.pipeline_cost",
    "karmma.plots": "karmma.evaluation.plots",
    "karmma.export": "karmma.deploy.export",
    "karmma.predict": "karmma.deploy.predict",
    "karmma.checkpoint": "karmma.io.checkpoint",
    "karmma.rundir": "karmma.io.rundir",
    "karmma.cli_epic": "karmma.cli.epic",
    "karmma.cli_experiments": "karmma.cli.experiments",
    "karmma.cli_args": "karmma.cli.args",
    "karmma.demo": "karmma.experiments.demo",
    "karmma.sweep": "karmma.experiments.sweep",
    "karmma.benchmark": "karmma.experiments.utd_mhad",
    "karmma.lanes": "karmma.experiments.lanes",
    "karmma.seeds": "karmma.experiments.seeds",
    "karmma.data.utd_mhad": "karmma.data.readers.utd_mhad",
    "karmma.data.epic_media": "karmma.data.readers.epic_media",
    "karmma.data.epic": "karmma.data.readers.epic",
    "karmma.data.ssv2_media": "karmma.data.readers.ssv2_media",
    "karmma.data.ssv2": "karmma.data.readers.ssv2",
    "karmma.data.video_folder": "karmma.data.readers.video_folder",
    "karmma.extractors.media": "karmma.data.media.decode",
    "karmma.extractors.audio_stream": "karmma.data.media.audio_stream",
    "karmma.extractors.flow": "karmma.data.media.flow",
    "karmma.extractors.images": "karmma.data.media.images",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new} in karmma 0.2; import it from there (the old path works for one more release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module is the new one, already executed


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
