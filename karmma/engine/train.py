"""The one training loop: :func:`fit` optimises a :class:`karmma.tasks.Task` (an objective that
owns its trainable parts) with modality dropout — stage 1 with ``ClassificationTask``, stage 2
(:mod:`karmma.engine.distill`) with a distillation task.
Reproducible and resumable by construction: the sample order of epoch ``e`` and every random
draw of step ``s`` (modality dropout, nn.Dropout) derive from ``(seed, e)`` / ``(seed, s)``, so a
run resumed from any checkpoint — at an epoch boundary or mid-epoch — follows the uninterrupted
run step for step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from karmma.bursts import train_bursts
from karmma.config import ExperimentConfig
from karmma.data.dataset import FeatureSet, check_fits, feature_stats, require_samples, validate_features
from karmma.data.loader import batch_loader
from karmma.data.order import epoch_order
from karmma.engine import distributed
from karmma.engine.augment import build_augmentation
from karmma.engine.post_training import PostStep, check_steps, recipe_steps
from karmma.errors import ConfigError, Interrupted
from karmma.evaluation.evaluate import main_metric, run_masked
from karmma.faults import fault_point
from karmma.io.checkpoint import (
    latest_checkpoint,
    load_model,
    load_task_extra,
    load_training_checkpoint,
    model_metadata,
    save_model,
    save_training_checkpoint,
    write_json_atomic,
)
from karmma.io.rundir import RunLock, check_resume, fingerprint, start_fresh
from karmma.modality_dropout import apply_modality_dropout
from karmma.models.karmma import KARMMA
from karmma.precision import autocast, compile_model
from karmma.progress import progress_bar
from karmma.tasks.base import Task

log = logging.getLogger(__name__)
progress_log = logging.getLogger("karmma.progress")


@dataclass
class FitResult:
    run_dir: Path
    global_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    samples_per_second: float = 0.0
    diagnostics: dict[str, Any] = field(default_factory=dict)  # e.g. what a teacher passes on
    fusion_weights: dict[str, float] = field(default_factory=dict)  # fitted late-fusion weights (shared row)


@dataclass
class FitOptions:
    """How one training run goes, shared by :func:`fit` and :func:`karmma.engine.distill.distill`."""

    val_data: FeatureSet | None = None  # the validation split: per-epoch scores, post-training steps
    resume: bool = True  # resume from the run folder's latest checkpoint
    progress: bool = False  # a progress bar and per-epoch lines
    extra_meta: dict | None = None  # entries for model.json
    fingerprint_extra: dict | None = None  # other inputs a resumed run must share (e.g. the teacher's hash)
    # What runs on the trained model before it is saved as final (karmma.engine.post_training);
    # None: the steps the model's add-ons ask for.
    post_steps: list[PostStep] | None = None
    data_checked: bool = False  # the caller has already run check_training_data on these splits


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


def build_model(cfg: ExperimentConfig, train_data: FeatureSet) -> KARMMA:
    """A new model for ``train_data`` (seeded by ``cfg.seed``), its inputs standardised by the
    training features' statistics."""
    seed_everything(cfg.seed)
    model = KARMMA(train_data.specs, train_data.tasks, cfg.model)
    model.embed.set_input_stats(*feature_stats(train_data))
    return model


MAX_WARMUP_SHARE = 0.2  # the warm-up never takes more than this share of the run's steps


def warmup_steps(asked: int, total: int, n: int, batch_size: int, name: str = "run", warn: bool = True) -> int:
    """The warm-up of a run of ``total`` steps: ``asked``, clamped to a fifth of the run (a preset
    tuned for a full data set warms up over more steps than a small run has: it would never reach
    its learning rate), with a warning; also warns when a batch is larger than the ``n`` samples."""
    if batch_size > n and warn:
        log.warning("%s: optim.batch_size=%d is larger than the %d training samples: one step per epoch, "
                    "%d steps in all; lower optim.batch_size for more updates", name, batch_size, n, total)  # fmt: skip
    cap = int(total * MAX_WARMUP_SHARE)
    if asked > cap and warn:
        log.warning("%s: optim.warmup_steps=%d is more than a fifth of the run's %d steps: warming up over %d "
                    "instead, so that the run reaches its learning rate", name, asked, total, cap)  # fmt: skip
    return min(asked, cap)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(task: Task, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """AdamW over the task's trainable parameters; no weight decay on biases, norms and tokens."""
    decay, no_decay = [], []
    for name, p in task.named_trainable_parameters():
        (no_decay if p.ndim < 2 or "token" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(0.9, 0.999))


def quick_eval(model: torch.nn.Module, data: FeatureSet, batch_size: int = 256, precision: str = "fp32") -> dict:
    """Accuracy with every available modality (used for per-epoch validation)."""
    was_training = model.training
    out = run_masked(model, data, lambda present, rows: present, batch_size, precision)
    model.train(was_training)
    return out


def check_training_data(train_data: FeatureSet, val_data: FeatureSet | None) -> None:
    """Everything that can be known wrong before the first step: empty splits, NaN/Inf or absurd
    features in either split, a validation split of other modalities or classes."""
    require_samples(train_data, "training")
    for fs in train_data.parts():
        validate_features(fs, "training")  # once per set: a second call is free
    if val_data is not None:
        require_samples(val_data, "validation")
        ref = train_data.parts()[0]
        check_fits(ref.specs, ref.tasks, ref.class_names, val_data, f"the training split ({ref.source})")
        validate_features(val_data, "validation")


def fit(
    task: Task,
    train_data: FeatureSet,
    cfg: ExperimentConfig,
    run_dir: str | Path,
    options: FitOptions | None = None,
    **kwargs: Any,
) -> FitResult:
    """Optimise ``task`` on ``train_data``; checkpoints and the final ``task.model`` go to ``run_dir``.

    ``options`` (or its fields as keywords: ``val_data=``, ``resume=``, ...) say how. The run
    folder is locked for the duration; resuming checks that config and data are those the run
    was started with (``fingerprint_extra`` adds other inputs, e.g. the teacher's hash). In
    training steps the model gets the ``augment`` section's pipeline; after the last step the
    post-training steps run (by default those the model's add-ons ask for).
    """
    opts = dataclasses.replace(options or FitOptions(), **kwargs)
    cfg.validate()
    info = distributed.current()
    if info.enabled and cfg.optim.patience:
        raise ConfigError("optim.patience (early stopping) is not supported with torchrun yet; set it to 0")
    if opts.post_steps is None:
        opts.post_steps = recipe_steps(task.model)
    check_steps(opts.post_steps, cfg, opts.val_data is not None)
    if not opts.data_checked:
        check_training_data(train_data, opts.val_data)
    task.augment = build_augmentation(task.model.specs, cfg.augment)
    run_dir = Path(run_dir)
    if not info.is_main:
        return _fit(task, train_data, cfg, run_dir, opts)
    with RunLock(run_dir):
        fp = fingerprint(cfg.to_dict(), train_data, opts.fingerprint_extra)
        if opts.resume and latest_checkpoint(run_dir) is not None:
            check_resume(run_dir, fp)
        else:
            start_fresh(run_dir, fp)
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
        return _fit(task, train_data, cfg, run_dir, opts)


BEST = "best"  # the best validation epoch's model, inside the run folder


def _track_best(history: list[dict], metric: str, model, meta: dict, run_dir: Path, patience: int) -> bool:
    """Save the model as ``best`` when this epoch's validation accuracy is the best so far; return
    whether ``patience`` epochs have passed without improvement (early stopping)."""
    scores = [h.get(f"val_{metric}", float("-inf")) for h in history]
    best = int(np.argmax(scores))
    if best == len(scores) - 1:
        save_model(run_dir / BEST, model, {**meta, "epoch": history[-1]["epoch"], f"val_{metric}": scores[-1]})
    return bool(patience) and len(scores) - 1 - best >= patience


def _fit(task: Task, train_data, cfg, run_dir, opts: FitOptions) -> FitResult:
    val_data, resume, progress = opts.val_data, opts.resume, opts.progress
    info = distributed.current()
    distributed.barrier()  # rank 0 has checked (or cleared) the run folder
    model = task.model
    seed_everything(cfg.seed)
    n = len(train_data)
    bs = cfg.optim.batch_size
    steps_per_epoch = max(1, math.ceil(n / bs))
    total_steps = steps_per_epoch * cfg.optim.epochs
    warmup = warmup_steps(cfg.optim.warmup_steps, total_steps, n, bs, cfg.name, warn=info.is_main)
    device = distributed.resolve_device(cfg.device)
    task.to(device)
    compile_model(model, cfg.compile)
    optimizer = make_optimizer(task, cfg)
    meta = model_metadata(model, train_data.class_names, **(opts.extra_meta or {}))
    history: list[dict[str, Any]] = []
    global_step = 0
    latest = latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        state = load_training_checkpoint(latest, model, optimizer)
        task.load_extra_state_dict(load_task_extra(latest))
        global_step = int(state["global_step"])
        history = list(state.get("history", []))
        threads = state.get("torch_threads")
        if threads is not None and threads != torch.get_num_threads():
            log.warning(
                "resuming with %d threads, the run started with %d: the result will match an "
                "uninterrupted run closely but not bit for bit",
                torch.get_num_threads(),
                threads,
            )
        log.info("resumed from %s at step %d/%d", latest, global_step, total_steps)
    pin = device.type == "cuda"
    metric = main_metric(list(model.tasks))
    if info.enabled:
        task.prepare_distributed([device] if device.type == "cuda" else None)
    task.train()
    t0, seen = time.perf_counter(), 0
    bar = progress_bar(total_steps, cfg.name, progress and info.is_main, initial=global_step, unit="step")
    params = task.trainable_parameters()

    def checkpoint(epoch: int) -> None:
        if info.is_main:
            state = {
                "global_step": global_step,
                "epoch": epoch,
                "history": history,
                "steps_per_epoch": steps_per_epoch,
                "torch_threads": torch.get_num_threads(),
            }
            save_training_checkpoint(
                run_dir, model, optimizer, meta, state, keep=cfg.keep_checkpoints, extra=task.extra_state_dict()
            )
        distributed.barrier()

    try:
        for epoch in range(global_step // steps_per_epoch, cfg.optim.epochs):
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, -1 - epoch))
            order = epoch_order(n, gen, train_data.parts()[0].chunk_rows, cfg.data.shuffle_chunks)
            sums, steps = {}, 0
            first = global_step - epoch * steps_per_epoch
            step_rows = [order[s * bs : (s + 1) * bs] for s in range(first, steps_per_epoch)]
            mine = slice(info.rank, None, info.world)
            loader = batch_loader(train_data, [rows[mine] for rows in step_rows], cfg.data.num_workers, pin)
            for s, rows, batch in zip(range(first, steps_per_epoch), step_rows, loader):
                gen = torch.Generator().manual_seed(step_seed(cfg.seed, global_step))
                mask_all = apply_modality_dropout(torch.from_numpy(train_data.present[rows]), cfg.modality_dropout, gen)
                if cfg.modality_dropout.kind == "burst":  # sensors failing for stretches of the clip
                    mask_all = train_bursts(train_data, rows, mask_all, cfg.modality_dropout, gen)
                batch = batch.to(device, non_blocking=pin)
                mask = batch.mask(mask_all[mine].to(device))  # per token where the data or the bursts are
                torch.manual_seed(step_seed(cfg.seed, global_step))  # nn.Dropout draws
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(global_step, total_steps, cfg.optim.lr, warmup)
                if len(batch):
                    with autocast(device, cfg.precision):
                        out = task(batch, mask)
                    # Scaled so that DDP's mean over ranks equals the mean over the global batch.
                    loss = out["loss"] * (len(batch) * info.world / len(rows))
                else:
                    out = {}
                    loss = sum(p.sum() * 0.0 for p in params)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
                global_step += 1
                seen += len(rows)
                steps += 1
                for k, v in out.items():
                    if k != "output":
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", epoch=epoch)
                fault_point("train-step")
                if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and s + 1 < steps_per_epoch:
                    checkpoint(epoch)
            # Each component's mean over the epoch (this rank's steps since the epoch began or resumed).
            record: dict[str, Any] = {"epoch": epoch + 1, "step": global_step}
            record.update({k: v / max(steps, 1) for k, v in sums.items()})
            if val_data is not None and info.is_main:
                val = quick_eval(model, val_data, precision=cfg.precision)
                record.update({f"val_{k}": v for k, v in val.items() if k not in ("count", "skipped")})
            history.append(record)
            stop = False
            if val_data is not None and info.is_main and (cfg.optim.select == "best" or cfg.optim.patience):
                stop = _track_best(history, metric, model, meta, run_dir, cfg.optim.patience)
            if progress and info.is_main:
                progress_log.info(
                    "%s epoch %d/%d: %s",
                    cfg.name,
                    epoch + 1,
                    cfg.optim.epochs,
                    ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch", "step")),
                )
            log.info("epoch %d: %s", epoch + 1, record)
            if stop or (epoch + 1) % cfg.checkpoint_epochs == 0 or epoch + 1 == cfg.optim.epochs:
                checkpoint(epoch + 1)
            if stop:
                log.info("early stop after epoch %d: no validation gain for %d epochs", epoch + 1, cfg.optim.patience)
                break
    except KeyboardInterrupt:
        bar.close()
        last = latest_checkpoint(run_dir)
        where = (
            f"the last checkpoint is {last} (step {last.name.removeprefix('step-').lstrip('0') or 0})"
            if last
            else "no checkpoint was written yet"
        )
        raise Interrupted(
            f"interrupted at step {global_step}/{total_steps} of {run_dir}; {where}. "
            "Run the same command again to resume from there (--no-resume starts over)"
        ) from None
    bar.close()
    seconds = time.perf_counter() - t0
    if info.is_main:
        if cfg.optim.select == "best" and (run_dir / BEST).is_dir():
            model.load_state_dict(load_model(run_dir / BEST)[0].state_dict())
            log.info("kept the weights of the best validation epoch (%s)", run_dir / BEST)
        for step in opts.post_steps or []:
            meta.update(step(model, val_data, cfg.seed))
        save_model(run_dir / "final", model, meta)
        write_json_atomic(run_dir / "history.json", history)
    distributed.barrier()
    model.eval()
    return FitResult(run_dir, global_step, history, seen / seconds if seconds > 0 else 0.0,
                     fusion_weights=meta.get("fusion_weights", {}))  # fmt: skip
