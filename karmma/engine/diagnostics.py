"""What the frozen teacher passes on: its accuracy and mean top probability (at the distillation
temperature) on the distillation data, per modality subset. A teacher that is right on nearly
every training sample with near-certain soft targets has memorised them: its soft targets are
then close to the labels, and distillation can add little."""

from __future__ import annotations

import logging

import numpy as np
import torch

from karmma.modalities import subset_masks, subset_name
from karmma.tasks.teacher_logits import TeacherLogits

log = logging.getLogger(__name__)

MEMORISED_ACCURACY = 98.0  # % of training samples the teacher gets right ...
MEMORISED_CONFIDENCE = 0.9  # ... with at least this mean top probability at T


def teacher_diagnostics(cache: TeacherLogits, labels: dict[str, np.ndarray], present: np.ndarray,
                        names: list[str], temperature: float, block: int = 4096) -> dict:  # fmt: skip
    """From the teacher-logit cache: per subset, the samples that hold it, the teacher's top-1
    accuracy (%) and mean top probability at ``temperature``, for each task (read ``block`` rows
    at a time, so that an on-disk cache stays on disk)."""
    masks = subset_masks(len(names)).numpy()
    out: dict = {"temperature": temperature, "subsets": {}}
    for j, row in enumerate(masks):
        rows = np.flatnonzero((present[:, row]).all(1))
        if not len(rows):
            continue
        right = {t: 0 for t in cache.tasks}
        top = {t: 0.0 for t in cache.tasks}
        for start in range(0, len(rows), block):
            part = rows[start : start + block]
            for task, z in cache.column(j, part).items():
                right[task] += int((z.argmax(-1).numpy() == labels[task][part]).sum())
                top[task] += float(torch.softmax(z / temperature, -1).max(-1).values.sum())
        entry: dict = {"count": int(len(rows))}
        for task in cache.tasks:
            entry[f"{task}_accuracy"] = right[task] / len(rows) * 100
            entry[f"{task}_top_prob"] = top[task] / len(rows)
        out["subsets"][subset_name(tuple(n for n, keep in zip(names, row) if keep))] = entry
    full = out["subsets"].get(subset_name(tuple(names)))
    task = cache.tasks[0]
    out["memorised"] = bool(
        full and full[f"{task}_accuracy"] >= MEMORISED_ACCURACY and full[f"{task}_top_prob"] >= MEMORISED_CONFIDENCE
    )
    if out["memorised"]:
        log.warning(
            "the teacher is right on %.1f%% of the distillation samples with mean top probability %.2f at T=%g: "
            "its soft targets are nearly the labels, so distillation can add little. Use a teacher trained on "
            "other samples (out-of-fold logits), a higher temperature, or a more regularised teacher",
            full[f"{task}_accuracy"], full[f"{task}_top_prob"], temperature,
        )  # fmt: skip
    return out


def format_diagnostics(diag: dict) -> str:
    tasks = sorted({k.rsplit("_", 2)[0] for e in diag["subsets"].values() for k in e if k.endswith("_accuracy")})
    head = " | ".join(f"{t} acc % | {t} top p" for t in tasks)
    lines = [f"| teacher on the distillation data (T={diag['temperature']:g}) | n | {head} |",
             "|---|---:|" + "---:|---:|" * len(tasks)]  # fmt: skip
    for subset, e in diag["subsets"].items():
        cells = " | ".join(f"{e[f'{t}_accuracy']:.1f} | {e[f'{t}_top_prob']:.2f}" for t in tasks)
        lines.append(f"| {subset} | {e['count']} | {cells} |")
    return "\n".join(lines)
