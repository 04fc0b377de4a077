"""The training application: config -> data -> model -> fit. The CLI and the demo call these."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch

from karmma.checkpoint import load_model
from karmma.config import DataConfig, ExperimentConfig, from_dict, load_config
from karmma.data.dataset import FeatureSet, check_fits, require_samples, validate_features
from karmma.data.sources import load_paired, load_split
from karmma.data.store import store_info
from karmma.distill import distill
from karmma.distributed import resolve_device
from karmma.errors import DataError
from karmma.evaluate import evaluate_models
from karmma.lanes import run_two_lanes
from karmma.out_of_fold import teacher_config
from karmma.precision import compile_model
from karmma.presets import preset_path
from karmma.progress import stderr_is_terminal
from karmma.tasks import ClassificationTask
from karmma.train import FitResult, build_model, fit

log = logging.getLogger(__name__)


def _meta_extra(cfg: ExperimentConfig, stage: str) -> dict:
    meta = {"stage": stage, "feature_set": cfg.data.feature_set, "data": dataclasses.asdict(cfg.data), "name": cfg.name}
    if cfg.data.kind == "store" and cfg.data.train:  # how the features were made: `predict --clip` redoes it
        extra = store_info(cfg.data.train).get("extra", {})
        if extra.get("reader"):
            meta["extractor"] = {"reader": extra["reader"], "encoder": extra.get("encoder", "pool"),
                                 "feature_set": cfg.data.feature_set}  # fmt: skip
    return meta


def _val(cfg: ExperimentConfig) -> FeatureSet | None:
    if cfg.data.kind == "store" and not cfg.data.val and not cfg.data.val_fraction:
        return None
    return load_split(cfg.data, "val")


def run_train(cfg: ExperimentConfig, run_dir: str | Path, resume: bool = True, progress: bool = False) -> FitResult:
    """Stage 1: a teacher (or a baseline) trained with cross-entropy."""
    train = load_split(cfg.data, "train")
    return fit(
        ClassificationTask(build_model(cfg, train), cfg.optim.label_smoothing),
        train,
        cfg,
        run_dir,
        val_data=_val(cfg),
        resume=resume,
        progress=progress,
        extra_meta=_meta_extra(cfg, "train"),
    )


def run_distill(
    cfg: ExperimentConfig, teacher_path: str | Path, run_dir: str | Path, resume: bool = True, progress: bool = False
) -> FitResult:
    """Stage 2: the student distilled from a frozen teacher checkpoint."""
    teacher, tmeta = load_model(teacher_path)
    data = load_paired(cfg.data, "train", tmeta.get("feature_set", "teacher"))
    return distill(
        build_model(cfg, data.student),
        teacher,
        data,
        cfg,
        run_dir,
        val_data=_val(cfg),
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
) -> tuple[dict, list[str]]:
    """Every model on every modality subset and sensor-dropout rate, on ``split`` of its own data
    (``val``: where choices are made; ``test``: the final report) or on the store ``val_store``;
    with ``epic`` (the EPIC-100 annotation folder) also the official EPIC metrics per model.
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
    if epic:  # the official EPIC-100 metrics, on the models and data already loaded
        from karmma.epic_eval import epic_report

        results["epic"] = {name: epic_report(models[name], data[name], epic, f"model {name}") for name in models}
    return results, tasks


COMPARISON = ("teacher", "student", "baseline-ce", "baseline-md")


def _train_runs(runs: list[tuple[ExperimentConfig, Path]], resume: bool, progress: bool) -> None:
    log.info("baselines: the student architecture without distillation")
    for cfg, run_dir in runs:
        run_train(cfg, run_dir, resume=resume, progress=progress)


def run_comparison(
    teacher_config: str | Path,
    student_config: str | Path,
    out_dir: str | Path,
    overrides: list[str] | None = None,
    repeats: int = 3,
    progress: bool = False,
    resume: bool = True,
    eval_store: str | Path | None = None,
    eval_split: str = "val",
    lanes: int = 1,
) -> tuple[dict, list[str], dict[str, Path]]:
    """Train and evaluate the four models of the paper's comparison, in ``out_dir/<name>``:

    * ``teacher``: CE + modality dropout + missing-modality tokens (``teacher_config``),
    * ``student``: the KARMMA student distilled from it (``student_config``),
    * ``baseline-ce``: the student architecture with CE only (no KD, no modality dropout),
    * ``baseline-md``: the student architecture with CE + modality dropout + missing tokens (no KD).

    ``overrides`` (``key=value``) apply to every config. The models are evaluated on
    ``eval_store`` (e.g. the test split, read once at the end) or else on ``eval_split`` of their
    own data (``val``, or ``test`` for the final report).
    ``lanes=2`` trains the baselines in a second process while teacher and student train here
    (:func:`karmma.lanes.run_two_lanes`, the threads split between the two).
    Returns (results, tasks, run folders).
    """
    out = Path(out_dir)
    base = list(overrides or [])
    dirs = {k: out / k for k in COMPARISON}
    teacher_cfg = load_config(preset_path(teacher_config), base)

    def student(*extra: str) -> ExperimentConfig:
        return load_config(preset_path(student_config), [*base, *extra])

    baselines = [(student("modality_dropout.kind=none", "name=baseline-ce"), dirs["baseline-ce"]),
                 (student("name=baseline-md"), dirs["baseline-md"])]  # fmt: skip

    def teacher_then_student() -> None:
        log.info("stage 1: teacher")
        run_train(teacher_cfg, dirs["teacher"], resume=resume, progress=progress)
        log.info("stage 2: student distilled from the teacher")
        run_distill(student(), dirs["teacher"], dirs["student"], resume=resume, progress=progress)

    # The baselines need no teacher: with lanes=2 they train in a second process meanwhile
    # (karmma.lanes); a second lane draws no progress bar on a terminal, only log lines elsewhere.
    side_progress = progress and (lanes < 2 or not stderr_is_terminal())
    run_two_lanes(teacher_then_student, functools.partial(_train_runs, baselines, resume, side_progress), lanes)
    eval_at = str(eval_store) if eval_store else None
    results, tasks = run_evaluate(dirs, eval_at, seed=teacher_cfg.seed, repeats=repeats, progress=progress,
                                  split="test" if eval_at else eval_split)  # fmt: skip
    return results, tasks, dirs
