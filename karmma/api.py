"""The Python API in one import: configs, data, training, distillation, evaluation, deployment.

>>> from karmma import api
>>> cfg = api.config("demo_teacher", ["data.kind=store", "data.train=train.h5", "optim.epochs=2"])  # doctest: +SKIP
>>> api.run_train(cfg, "runs/teacher")  # doctest: +SKIP

docs/api.md walks through every call with examples that the tests run as written. Each name is
the library's own function or class, re-exported here (its home module is in its docstring).
"""

from __future__ import annotations

from pathlib import Path

from karmma.config import DataConfig, ExperimentConfig, ModelConfig, SyntheticConfig, load_config
from karmma.data.dataset import FeatureSet
from karmma.data.store import all_ids, open_store, store_info
from karmma.data.store_sets import write_store
from karmma.data.store_writer import FeatureStoreWriter
from karmma.data.synthetic import generate as synthetic
from karmma.deploy.export import export_onnx, verify_onnx
from karmma.deploy.export_pipeline import export_pipeline, verify_pipeline
from karmma.engine.runs import run_distill, run_evaluate, run_train
from karmma.io.checkpoint import load_model
from karmma.modalities import ModalitySpec, all_subsets, subset_name
from karmma.models import KARMMA
from karmma.presets import list_presets, preset_path
from karmma.runtime import AudioSource, Predictor, PushSource, SignalSource, VideoSource
from karmma.runtime import load as load_predictor


def config(name_or_path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """A shipped preset (``karmma presets`` lists them, e.g. ``demo_teacher``) or a YAML file, with
    ``key.sub=value`` overrides (as ``--set`` takes them)."""
    return load_config(preset_path(name_or_path), overrides)


__all__ = [
    "KARMMA", "AudioSource", "DataConfig", "ExperimentConfig", "FeatureSet", "FeatureStoreWriter", "ModalitySpec",
    "ModelConfig", "Predictor", "PushSource", "SignalSource", "SyntheticConfig", "VideoSource", "all_ids",
    "all_subsets", "config", "export_onnx", "export_pipeline", "list_presets", "load_config", "load_model",
    "load_predictor", "open_store", "run_distill", "run_evaluate", "run_train", "store_info", "subset_name",
    "synthetic", "verify_onnx", "verify_pipeline", "write_store",
]  # fmt: skip
