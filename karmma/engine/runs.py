"""Runs from a config: config -> data -> model -> fit (``karmma train``, ``karmma distill``,
``karmma evaluate``); the app's experiments build on these (:mod:`karmma.experiments.comparison`)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from karmma.config import DataConfig, ExperimentConfig, from_dict
from karmma.data.dataset import FeatureSet, check_fits, require_samples, validate_features
from karmma.data.sources import load_paired, load_split
from karmma.data.store import store_info
from karmma.engine import defaults
from karmma.engine.distill import distill
from karmma.engine.distributed import resolve_device
from karmma.engine.out_of_fold import teacher_config
from karmma.engine.train import FitResult, build_model, fit
from karmma.errors import DataError
from karmma.evaluation.evaluate import evaluate_models
from karmma.io.checkpoint import load_model
from karmma.precision import compile_model
from karmma.registries import READERS
from karmma.tasks import ClassificationTask

log = logging.getLogger(__name__)


def _meta_extra(cfg: ExperimentConfig, stage: str) -> dict:
    meta = {"stage": stage, "feature_set": cfg.data.feature_set, "data": dataclasses.asdict(cfg.data), "name": cfg.name}
    if cfg.data.kind == "store" and cfg.data.train:  # how the features were made: `predict --clip` redoes it
        extra = store_info(cfg.data.train).get("extra", {})
        if extra.get("reader"):
            meta["extractor"] = {"reader": extra["reader"], "encoder": extra.get("encoder", "pool"),
                                 "feature_set": cfg.data.feature_set}  # fmt: skip
            if extra.get("weights"):
                meta["extractor"]["weights"] = extra["weights"]
            # what each raw modality is, so that `predict --clip` rebuilds the extractors without the reader
            # (as the store recorded them; a store of karmma < 0.3: as its reader declares them)
            kinds = READERS.get(extra["reader"]).modalities if extra["reader"] in READERS else {}
            meta["extractor"]["kinds"] = extra.get("kinds") or {m: [k.kind, k.channels] for m, k in kinds.items()}
            if extra.get("preprocessing"):  # the clip format's options (frame size, frames, audio features)
                meta["extractor"]["preprocessing"] = extra["preprocessing"]
    return meta


def _val(cfg: ExperimentConfig) -> FeatureSet | None:
    if cfg.data.kind == "store" and not cfg.data.val and not cfg.data.val_fraction:
        return None
    if cfg.data.kind == "store" and cfg.data.val and cfg.data.train and cfg.data.val != cfg.data.train:
        from karmma.data.store_provenance import mismatch

        why = mismatch(cfg.data.train, cfg.data.val)
        if why:  # e.g. TV-L1 flow in training, Farneback in validation: choices made there may not carry over
            log.warning("the training and validation stores take modalities from different sources (%s); what is "
                        "chosen on validation may not hold for the training data's distribution", why)  # fmt: skip
    return load_split(cfg.data, "val")


def run_train(cfg: ExperimentConfig, run_dir: str | Path, resume: bool = True, progress: bool = False) -> FitResult:
    """Stage 1: a teacher (or a baseline) trained with cross-entropy."""
    train, val = load_split(cfg.data, "train"), _val(cfg)
    cfg = defaults.resolve(cfg, val is not None)
    return fit(
        ClassificationTask(build_model(cfg, train), cfg.optim.label_smoothing),
        train,
        cfg,
        run_dir,
        val_data=val,
        resume=resume,
        progress=progress,
        extra_meta=_meta_extra(cfg, "train"),
    )


def run_distill(
    cfg: ExperimentConfig, teacher_path: str | Path, run_dir: str | Path, resume: bool = True, progress: bool = False
) -> FitResult:
    """Stage 2: the student distilled from a frozen teacher checkpoint."""
    teacher, tmeta = load_model(teacher_path)
    data, val = load_paired(cfg.data, "train", tmeta.get("feature_set", "teacher")), _val(cfg)
    cfg = defaults.resolve(cfg, val is not None, "distill")
    return distill(
        build_model(cfg, data.student),
        teacher,
        data,
        cfg,
        run_dir,
        val_data=val,
        resume=resume,
        progress=progress,
        extra_meta={**_meta_extra(cfg, "distill"), "teacher": str(teacher_path)},
        teacher_cfg=teacher_config(teacher_path) if cfg.distill.teacher_logits == "out_of_fold" else None,
    )


def load_eval_data(meta: dict, val_store: str | None = None, split: str = "val") -> FeatureSet:
    """The split (``val`` or ``test``) of the data a model was trained on — or the store
    ``val_store`` — in the model's feature set."""
    feature_set = meta.get("feature_set", "teacher")
    if val_store:
        data_cfg = DataConfig(kind="store", train=val_store, val=val_store, test=val_store, feature_set=feature_set)
    elif "data" in meta:
        data_cfg = from_dict(DataConfig, meta["data"], "model.json:data")
    else:
        raise DataError("this model records no data; pass --val PATH (a feature store)")
    if data_cfg.kind == "store" and not val_store and split == "test" and not data_cfg.test:
        raise DataError("this model was trained without a test store (data.test); pass --val PATH (a feature store)")
    if data_cfg.kind == "store" and not val_store and split == "val" and not (data_cfg.val or data_cfg.val_fraction):
        raise DataError("this model was trained without a validation store; pass --val PATH (a feature store)")
    data = load_split(data_cfg, split, feature_set)
    require_samples(data, "evaluation")
    validate_features(data, "evaluation")
    return data


def run_evaluate(
    model_paths: dict[str, str | Path],
    val_store: str | None = None,
    seed: int = 0,
    repeats: int = 3,
    progress: bool = False,
    device: str = "cpu",
    precision: str = "fp32",
    compile: bool = False,
    split: str = "val",
    epic: str | Path | None = None,
    bursts: tuple[float, ...] = (),
    clip_seconds: float = 3.0,
    raw_root: str | Path | None = None,
) -> tuple[dict, list[str]]:
    """Every model on every modality subset and sensor-dropout rate, on ``split`` of its own data
    (``val``: where choices are made; ``test``: the final report) or on the store ``val_store``;
    with ``epic`` (the EPIC-100 annotation folder) also the official EPIC metrics per model; with
    ``bursts`` (mean burst lengths, s) the within-clip failure tables (``within_clip``: the first),
    with ``raw_root`` (the raw data the store was extracted from) whole-clip summaries recomputed
    for each draw (:mod:`karmma.evaluation.raw_summaries`).
    The results name the split they report (``results["split"]``)."""
    models: dict[str, torch.nn.Module] = {}
    data: dict[str, FeatureSet] = {}
    for name, path in model_paths.items():
        model, meta = load_model(path)
        models[name] = compile_model(model.to(resolve_device(device)).eval(), compile)
        data[name] = load_eval_data(meta, val_store, split)
        check_fits(model.specs, model.tasks, meta.get("class_names", {}), data[name], f"model {name} ({path})")
    tasks = list(next(iter(models.values())).tasks)
    results = evaluate_models(models, data, seed=seed, repeats=repeats, progress=progress, precision=precision)
    results["split"] = f"{split} ({val_store})" if val_store else split
    if bursts:  # sensors failing inside the clip (karmma.evaluation.bursts), mean burst lengths in seconds
        from karmma.evaluation.bursts import evaluate_bursts
        from karmma.evaluation.raw_summaries import RawSummaries

        raws: dict[str, RawSummaries] = {}  # one per store: its models share the recomputed draws
        for name, model in models.items():
            src = data[name].source
            if raw_root is not None and src not in raws:
                raws[src] = RawSummaries.for_store(data[name], raw_root)
            by_length = evaluate_bursts(model, data[name], seed=seed, repeats=repeats, burst_seconds=bursts,
                                        clip_default=clip_seconds, precision=precision,
                                        raw=raws.get(src))  # fmt: skip
            results["models"][name]["within_clip"] = by_length[f"{bursts[0]:g}"]
            results["models"][name]["within_clip_by_length"] = by_length
    if epic:  # the official EPIC-100 metrics, on the models and data already loaded
        from karmma.evaluation.epic_eval import epic_report

        results["epic"] = {name: epic_report(models[name], data[name], epic, f"model {name}") for name in models}
    return results, tasks
