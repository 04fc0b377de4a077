"""Evaluation of one model on every non-empty modality subset and under run-time sensor dropout.

* Subsets: each sample's mask is its data presence AND the subset; samples left with no modality
  (the subset asks only for modalities they lack) are skipped and counted in ``skipped``.
* Sensor dropout: at rate r each present sensor fails independently with probability r (at least
  one survives); the masks derive from ``(seed, rate, repeat)`` and are identical for every model
  evaluated with the same seed.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from karmma.bursts import failed_as_data
from karmma.data.dataset import FeatureSet
from karmma.metrics import AccuracyMeter
from karmma.modalities import all_subsets, subset_mask, subset_name
from karmma.modality_dropout import sensor_dropout_masks
from karmma.precision import autocast
from karmma.progress import progress_bar

log = logging.getLogger(__name__)

DROPOUT_RATES = tuple(round(0.1 * i, 1) for i in range(10))  # 0%..90%


class AsData(NamedTuple):
    """A mask variant whose failed tokens are fed as data (:func:`karmma.bursts.failed_as_data`):
    ``mask`` as usual, ``failed`` ``(B, ΣN_m)`` the tokens replaced, ``fill`` per modality;
    ``replace``: ``{modality index: (rows (B,) bool, tokens (B, N_m, D))}``, a modality's tokens
    recomputed from the raw data for those rows (:mod:`karmma.evaluation.raw_summaries`)."""

    mask: torch.Tensor
    failed: torch.Tensor
    fill: tuple[str, ...]
    replace: Mapping[int, tuple[torch.Tensor, torch.Tensor]] = {}


MaskFn = Callable[[torch.Tensor, np.ndarray], "torch.Tensor | AsData"]


@torch.no_grad()
def run_masked_many(
    model: torch.nn.Module,
    data: FeatureSet,
    mask_fns: dict[str, MaskFn],
    batch_size: int = 256,
    precision: str = "fp32",
) -> dict[str, dict[str, float]]:
    """Accuracy of ``model`` under each mask variant ``mask_fns[key](present, rows)`` (a mask of
    either form, :mod:`karmma.presence`, or :class:`AsData`), reading the split once: every
    variant runs on each batch while it is in memory (on the model's device, under
    ``precision``'s autocast). A mask is restricted to what the data holds (``Batch.mask``)."""
    model.eval()
    device = next(model.parameters()).device
    meters = {key: AccuracyMeter(list(data.tasks)) for key in mask_fns}
    skipped = dict.fromkeys(mask_fns, 0)
    for start in range(0, len(data), batch_size):
        rows = np.arange(start, min(len(data), start + batch_size))
        batch = data.get_batch(rows)
        present, full = batch.present, batch.to(device, non_blocking=True)
        for key, fn in mask_fns.items():
            variant = fn(present, rows)
            mask = batch.mask(variant.mask if isinstance(variant, AsData) else variant)
            ok = mask.any(1)
            skipped[key] += int((~ok).sum())
            b = full if ok.all() else full.select(ok.to(device))
            if len(b):
                tokens = b.tokens
                if isinstance(variant, AsData):
                    counts = [t.shape[1] for t in tokens]
                    tokens = failed_as_data(tokens, variant.failed[ok].to(device), counts, variant.fill)
                    for m, (where, values) in variant.replace.items():
                        where, values = where[ok].to(device)[:, None, None], values[ok].to(device, tokens[m].dtype)
                        tokens[m] = torch.where(where, values, tokens[m])
                with autocast(device, precision):
                    logits = model(tokens, mask[ok].to(device))
                meters[key].update({k: v.float() for k, v in logits.items()}, b.labels)
    return {key: {**meters[key].compute(), "skipped": float(skipped[key])} for key in mask_fns}


def run_masked(model: torch.nn.Module, data: FeatureSet, mask_fn: MaskFn, batch_size: int = 256,
               precision: str = "fp32") -> dict[str, float]:  # fmt: skip
    """Accuracy of ``model`` with each batch's mask replaced by ``mask_fn(present, rows)``."""
    return run_masked_many(model, data, {"": mask_fn}, batch_size, precision)[""]


def subset_mask_fns(names: list[str], subsets: Sequence[tuple[str, ...]] | None = None) -> dict[str, MaskFn]:
    return {
        subset_name(s): (lambda p, rows, s=s: subset_mask(s, names, len(p))) for s in (subsets or all_subsets(names))
    }


def evaluate_subsets(
    model: torch.nn.Module, data: FeatureSet, subsets: Sequence[tuple[str, ...]] | None = None, batch_size: int = 256
) -> dict[str, dict[str, float]]:
    return run_masked_many(model, data, subset_mask_fns(data.modality_names, subsets), batch_size)


def sensor_dropout_seed(seed: int, rate: float, repeat: int) -> int:
    return seed * 1000 + int(round(rate * 100)) * 10 + repeat


def dropout_mask_fns(data: FeatureSet, rates: Sequence[float], seed: int, repeats: int) -> dict[str, MaskFn]:
    """``"rate/repeat"`` -> the seeded sensor-failure masks of the whole split at that rate."""
    present = torch.from_numpy(data.present)
    fns: dict[str, MaskFn] = {}
    for rate in rates:
        for r in range(repeats):
            masks = sensor_dropout_masks(present, rate, sensor_dropout_seed(seed, rate, r))
            fns[f"{rate:.1f}/{r}"] = lambda p, rows, m=masks: m[rows]
    return fns


def repeat_summary(runs: Mapping[str, Mapping[str, float]], rates: Sequence[float], repeats: int,
                     prefix: str = "") -> dict:  # fmt: skip
    """``{rate: metrics averaged over the repeats, and their std}`` of the runs ``f"{prefix}{rate}/{repeat}"``."""
    out = {}
    for rate in rates:
        reps = [runs[f"{prefix}{rate:.1f}/{r}"] for r in range(repeats)]
        keys = [k for k in reps[0] if k not in ("count", "skipped")]
        res = {k: float(np.mean([x[k] for x in reps])) for k in keys}
        res.update({f"{k}_std": float(np.std([x[k] for x in reps])) for k in keys})
        res["count"] = reps[0]["count"]
        out[f"{rate:.1f}"] = res
    return out


def evaluate_sensor_dropout(
    model: torch.nn.Module,
    data: FeatureSet,
    rates: Sequence[float] = DROPOUT_RATES,
    seed: int = 0,
    repeats: int = 3,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Mean (and std over ``repeats``) accuracy per dropout rate, keyed ``"0.3"`` etc."""
    runs = run_masked_many(model, data, dropout_mask_fns(data, rates, seed, repeats), batch_size)
    return repeat_summary(runs, rates, repeats)


def evaluate_models(
    models: dict[str, torch.nn.Module],
    data: dict[str, FeatureSet],
    seed: int = 0,
    repeats: int = 3,
    rates: Sequence[float] = DROPOUT_RATES,
    progress: bool = False,
    precision: str = "fp32",
) -> dict:
    """Evaluate several models (each on its own feature set ``data[name]``, on its device), one
    read of each split per model for every subset and every sensor-dropout rate and repeat."""
    results: dict = {"seed": seed, "repeats": repeats, "models": {}}
    bar = progress_bar(len(models), "evaluate", progress, unit="model")
    for name, model in models.items():
        subsets = subset_mask_fns(data[name].modality_names)
        drops = dropout_mask_fns(data[name], rates, seed, repeats)
        runs = run_masked_many(model, data[name], {**subsets, **drops}, precision=precision)
        results["models"][name] = {
            "subsets": {k: runs[k] for k in subsets},
            "sensor_dropout": repeat_summary({k: runs[k] for k in drops}, rates, repeats),
        }
        bar.update(1)
    bar.close()
    return results


def main_metric(tasks: Sequence[str]) -> str:
    return "action_top1" if "action" in tasks else f"{list(tasks)[0]}_top1"


def write_figure(plot: Callable[[dict, str, Path], Path], results: dict, metric: str, path: Path) -> Path:
    """``plot(results, metric, path)`` drawn under a temporary name beside ``path``, then renamed:
    the figure appears whole or not at all; a full or read-only disk is one named error."""
    from karmma.outputs import write_failed

    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        plot(results, metric, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, e) from e
    return path


def _csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def write_results(results: dict, out_dir: str | Path, tasks: Sequence[str]) -> dict[str, Path]:
    """JSON with everything, CSVs (per subset; per dropout rate) and the paper-style plots, each
    file written whole or not at all (:mod:`karmma.outputs`)."""
    from karmma.evaluation.plots import plot_sensor_dropout, plot_subsets
    from karmma.outputs import check_writable, write_json_atomic, write_text_atomic

    out = check_writable(out_dir, "--out")
    paths = {
        "json": out / "results.json",
        "subsets_csv": out / "subsets.csv",
        "dropout_csv": out / "sensor_dropout.csv",
    }
    write_json_atomic(paths["json"], results, sort_keys=True)
    metrics = [f"{t}_top{k}" for t in tasks for k in (1, 5)]
    rows: list[list] = [["model", "subset", *metrics, "count", "skipped"]]
    for model, r in results["models"].items():
        for subset, m in r["subsets"].items():
            rows.append([model, subset, *(f"{m[k]:.2f}" for k in metrics), int(m["count"]), int(m["skipped"])])
    write_text_atomic(paths["subsets_csv"], _csv_text(rows))
    rows = [["model", "rate", *metrics, *(f"{k}_std" for k in metrics)]]
    for model, r in results["models"].items():
        for rate, m in r["sensor_dropout"].items():
            rows.append([model, rate, *(f"{m[k]:.2f}" for k in metrics), *(f"{m[k + '_std']:.2f}" for k in metrics)])
    write_text_atomic(paths["dropout_csv"], _csv_text(rows))
    metric = main_metric(tasks)
    paths["dropout_png"] = write_figure(plot_sensor_dropout, results, metric, out / "sensor_dropout.png")
    paths["subsets_png"] = write_figure(plot_subsets, results, metric, out / "subsets.png")
    if any("within_clip" in r for r in results["models"].values()):
        from karmma.evaluation.plots import plot_within_clip

        rows = [["model", "burst_seconds", "view", "rate", *metrics, *(f"{k}_std" for k in metrics)]]
        for model, r in results["models"].items():
            for length, views in r.get("within_clip_by_length", {}).items():
                for view, table in views.items():
                    rows += [[model, length, view, rate, *(f"{m[k]:.2f}" for k in metrics),
                              *(f"{m[k + '_std']:.2f}" for k in metrics)] for rate, m in table.items()]  # fmt: skip
        paths["within_clip_csv"] = out / "within_clip.csv"
        write_text_atomic(paths["within_clip_csv"], _csv_text(rows))
        paths["within_clip_png"] = write_figure(plot_within_clip, results, metric, out / "within_clip.png")
    return paths


def format_table(results: dict, metric: str) -> str:
    """A Markdown table: one row per subset, one column per model."""
    return _table(results, metric, "subsets", "subset", str)


def format_dropout_table(results: dict, metric: str) -> str:
    """A Markdown table: one row per sensor-dropout rate, one column per model."""
    return _table(results, metric, "sensor_dropout", "sensor dropout", lambda r: f"{float(r) * 100:.0f}%")


def format_within_clip_table(results: dict, metric: str) -> str:
    """A Markdown table: one row per failure rate, a column per model and way of treating it."""
    models = [m for m, r in results["models"].items() if "within_clip" in r]
    cols = [(m, v) for m in models for v in results["models"][m]["within_clip"]]
    rates = list(results["models"][models[0]]["within_clip"]["per_token"])
    lines = [f"| time failed ({metric}) | " + " | ".join(f"{m} {v}" for m, v in cols) + " |",
             "|---|" + "---:|" * len(cols)]  # fmt: skip
    for r in rates:
        cells = " | ".join(f"{results['models'][m]['within_clip'][v][r][metric]:.1f}" for m, v in cols)
        lines.append(f"| {float(r) * 100:.0f}% | {cells} |")
    return "\n".join(lines)


def _table(results: dict, metric: str, key: str, title: str, row_name) -> str:
    models = list(results["models"])
    rows = list(next(iter(results["models"].values()))[key])
    lines = [f"| {title} ({metric}) | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for r in rows:
        cells = " | ".join(f"{results['models'][m][key][r][metric]:.1f}" for m in models)
        lines.append(f"| {row_name(r)} | {cells} |")
    return "\n".join(lines)
