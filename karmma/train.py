"""Stage 1: train a model (the teacher, or a baseline) with cross-entropy and modality dropout.

:func:`fit` is the one training loop; :mod:`karmma.distill` reuses it with another loss.
Reproducible and resumable by construction: the sample order of epoch ``e`` and every random
draw of step ``s`` (modality dropout, nn.Dropout) derive from ``(seed, e)`` / ``(seed, s)``, so a
run resumed from any checkpoint — at an epoch boundary or mid-epoch — follows the uninterrupted
run step for step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from karmma import distributed
from karmma.checkpoint import (
    latest_checkpoint,
    load_training_checkpoint,
    model_metadata,
    save_model,
    save_training_checkpoint,
    write_json_atomic,
)
from karmma.config import ExperimentConfig
from karmma.data.dataset import Batch, FeatureSet
from karmma.evaluate import run_masked
from karmma.faults import fault_point
from karmma.losses import multitask_ce
from karmma.modality_dropout import apply_modality_dropout
from karmma.models.karmma import KARMMA

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, Batch, torch.Tensor], torch.Tensor]


@dataclass
class FitResult:
    run_dir: Path
    global_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_second: float = 0.0


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def ce_loss(label_smoothing: float = 0.0) -> LossFn:
    def loss(model: torch.nn.Module, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        return multitask_ce(model(batch.tokens, mask), batch.labels, label_smoothing)

    return loss


def make_optimizer(model: torch.nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "token" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(0.9, 0.999))


def quick_eval(model: torch.nn.Module, data: FeatureSet, batch_size: int = 256) -> dict[str, float]:
    """Accuracy with every available modality (used for per-epoch validation)."""
    was_training = model.training
    out = run_masked(model, data, lambda present, rows: present, batch_size)
    model.train(was_training)
    return out


def fit(
    model: KARMMA,
    train_data: FeatureSet,
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    loss_fn: LossFn | None = None,
    val_data: FeatureSet | None = None,
    resume: bool = True,
    progress: bool = False,
    extra_meta: dict | None = None,
) -> FitResult:
    """Train ``model`` on ``train_data``; checkpoints and the final model go to ``run_dir``."""
    cfg.validate()
    run_dir = Path(run_dir)
    info = distributed.current()
    loss_fn = loss_fn or ce_loss(cfg.optim.label_smoothing)
    seed_everything(cfg.seed)
    n = len(train_data)
    bs = cfg.optim.batch_size
    steps_per_epoch = max(1, math.ceil(n / bs))
    total_steps = steps_per_epoch * cfg.optim.epochs
    device = distributed.resolve_device(cfg.device)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    meta = model_metadata(model, train_data.class_names, **(extra_meta or {}))
    history: list[dict[str, Any]] = []
    global_step = 0
    latest = latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        state = load_training_checkpoint(latest, model, optimizer)
        global_step = int(state["global_step"])
        history = list(state.get("history", []))
        log.info("resumed from %s at step %d/%d", latest, global_step, total_steps)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
    net: torch.nn.Module = DDP(model, device_ids=[device] if device.type == "cuda" else None) if info.enabled else model
    model.train()
    t0, seen = time.perf_counter(), 0
    bar = tqdm(total=total_steps, initial=global_step, disable=not (progress and info.is_main), desc=cfg.name, unit="step")

    def checkpoint(epoch: int) -> None:
        if info.is_main:
            state = {"global_step": global_step, "epoch": epoch, "history": history, "steps_per_epoch": steps_per_epoch}
            save_training_checkpoint(run_dir, model, optimizer, meta, state, keep=cfg.keep_checkpoints)
        distributed.barrier()

    for epoch in range(global_step // steps_per_epoch, cfg.optim.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(cfg.seed, -1 - epoch))).numpy()
        for s in range(global_step - epoch * steps_per_epoch, steps_per_epoch):
            rows = order[s * bs : (s + 1) * bs]
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, global_step))
            mask_all = apply_modality_dropout(torch.from_numpy(train_data.present[rows]), cfg.modality_dropout, gen)
            mine = slice(info.rank, None, info.world)
            batch = train_data.get_batch(rows[mine]).to(device)
            mask = mask_all[mine].to(device)
            torch.manual_seed(step_seed(cfg.seed, global_step))  # nn.Dropout draws
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step, total_steps, cfg.optim.lr, cfg.optim.warmup_steps)
            if len(batch):
                # Scaled so that DDP's mean over ranks equals the mean over the global batch.
                loss = loss_fn(net, batch, mask) * (len(batch) * info.world / len(rows))
            else:
                loss = sum(p.sum() * 0.0 for p in net.parameters())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            global_step += 1
            seen += len(rows)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
            fault_point("train-step")
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and s + 1 < steps_per_epoch:
                checkpoint(epoch)
        record: dict[str, Any] = {"epoch": epoch + 1, "step": global_step, "loss": float(loss.item())}
        if val_data is not None and info.is_main:
            record.update({f"val_{k}": v for k, v in quick_eval(model, val_data).items() if k not in ("count", "skipped")})
        history.append(record)
        log.info("epoch %d: %s", epoch + 1, record)
        checkpoint(epoch + 1)
    bar.close()
    seconds = time.perf_counter() - t0
    if info.is_main:
        save_model(run_dir / "final", model, meta)
        write_json_atomic(run_dir / "history.json", history)
    distributed.barrier()
    model.eval()
    return FitResult(run_dir, global_step, history, seconds, seen / seconds if seconds > 0 else 0.0)
