"""The UTD-MHAD benchmark (real data, cross-subject; Chen, Jafari & Kehtarnavaz, ICIP 2015).

1. Extract once (resumable): three-view depth motion maps (for the models' CNN), flow-on-depth
   images through frozen ImageNet EfficientNet-Lite backbones (Lite2 teacher, Lite0 student),
   inertial and skeleton as raw resampled signals for the models' trainable encoders.
2. Split: odd subjects train, even subjects test. One training subject (``val_subject``, default
   7) is held out as the validation split; every choice is made there. The test split is read once
   per model, for the report.
3. For each seed: teacher, KARMMA student (distilled), baseline-ce and baseline-md (the student
   architecture without distillation), evaluated on every modality subset and under 0-90% sensor
   dropout. Teacher -> student and the two baselines train side by side in two processes where
   the machine has 2 cores or more (``lanes``, :mod:`karmma.experiments.lanes`).
4. ``summary.json``: per model, subset and dropout rate the mean, std and per-seed values; the
   paired student - baseline-md differences; the full-pipeline cost table; per seed, each model's
   late-fusion weights where it fitted them (``model.fusion_weights``). ``report.md``: tables.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from karmma.data.readers.utd_mhad import SUBJECT_PATTERN
from karmma.data.splits import sample_groups
from karmma.data.store import open_store, store_info, write_store
from karmma.evaluation.evaluate import main_metric
from karmma.experiments.comparison import run_comparison
from karmma.experiments.lanes import auto_lanes
from karmma.experiments.seeds import aggregate, format_summary, format_within_clip, plot_means
from karmma.extractors.extract import SIZES, run_extract
from karmma.io.checkpoint import load_model
from karmma.registries import EXTRACTORS

log = logging.getLogger(__name__)

ENCODER = "efficientnet"  # the extractor family the benchmark extracts with, and its cost table counts

MODALITIES = ("depth", "flow", "inertial", "skeleton")
BURSTS = (0.5,)  # sensors failing inside the clip: the mean burst length (s) of the within-clip table


def split_validation(train: Path, out_dir: Path, val_subject: int) -> tuple[Path, Path]:
    """``fit.h5`` (training subjects but one) and ``val.h5`` (that subject), both feature sets."""
    fit, val = out_dir / "fit.h5", out_dir / "val.h5"
    if fit.is_file() and val.is_file():
        return fit, val
    sets = {fs: open_store(train, fs) for fs in SIZES}
    ids = sets["teacher"].ids
    is_val = np.array([int(g) == val_subject for g in sample_groups(ids, SUBJECT_PATTERN)])
    if not is_val.any() or is_val.all():
        raise ValueError(f"validation subject {val_subject} must be one of the training subjects, not all of them")
    # the train split's provenance (reader, split, extractor family): the raw clips stay findable
    kept = ("dataset", "reader", "split", "encoder")
    extra = {k: v for k, v in store_info(train).get("extra", {}).items() if k in kept}
    write_store(val, {k: v.subset(np.flatnonzero(is_val)) for k, v in sets.items()}, extra=extra)
    write_store(fit, {k: v.subset(np.flatnonzero(~is_val)) for k, v in sets.items()}, extra=extra)
    return fit, val


def prepare_stores(root: str | Path, features: Path, val_subject: int = 7, progress: bool = False,
                   limit: int | None = None) -> tuple[Path, Path, Path]:  # fmt: skip
    """Extract (resumable) and split: the ``fit``, ``val`` and ``test`` stores in ``features``."""
    feats = {split: features / f"{split}.h5" for split in ("train", "test")}
    for split, path in feats.items():
        run_extract("utd_mhad", root, path, split=split, encoder=ENCODER, modalities=MODALITIES,
                    progress=progress, limit=limit)  # fmt: skip
    fit, val = split_validation(feats["train"], features, val_subject)
    return fit, val, feats["test"]


def run_utd_mhad_benchmark(
    root: str | Path,
    out: str | Path = "runs/utd_mhad",
    seeds: tuple[int, ...] = (0, 1, 2),
    epochs: int | None = None,
    progress: bool = False,
    limit: int | None = None,
    repeats: int = 3,
    val_subject: int = 7,
    overrides: list[str] | None = None,
    lanes: int | None = None,
    configs: tuple[str, str] = ("utd_mhad_teacher", "utd_mhad_student"),
) -> dict:
    from karmma.data.readers.base import get_reader
    from karmma.evaluation.pipeline_cost import format_pipeline_cost, pipeline_cost_table

    out = Path(out)
    lanes = auto_lanes() if lanes is None else lanes
    t0 = time.perf_counter()
    fit, val, test = prepare_stores(root, out / "features", val_subject, progress, limit)
    feats = {"test": test}
    t_extract = time.perf_counter() - t0
    per_seed, dirs = [], {}
    for seed in seeds:
        sets = [f"data.train={fit}", f"data.val={val}", f"seed={seed}", *(overrides or [])]
        sets += [f"optim.epochs={epochs}"] if epochs is not None else []
        results, tasks, dirs = run_comparison(*configs, out / f"seed{seed}", sets,
                                              repeats, progress, eval_store=feats["test"], lanes=lanes,
                                              bursts=BURSTS, raw_root=root)  # fmt: skip
        results["fusion_weights"] = {k: _fitted_weights(d) for k, d in dirs.items()}
        per_seed.append(results)
    t_train = time.perf_counter() - t0 - t_extract
    metric = main_metric(tasks)
    summary = aggregate(per_seed, metric)
    reader = get_reader("utd_mhad")
    pipelines = {
        k: (load_model(dirs[k])[0], EXTRACTORS.get(ENCODER)({m: reader.modalities[m] for m in MODALITIES}, k))
        for k in ("teacher", "student")
    }
    cost = pipeline_cost_table(pipelines)
    n_test = int(list(per_seed[0]["models"]["teacher"]["subsets"].values())[-1]["count"])
    md = "\n\n".join(part for part in [
        f"UTD-MHAD cross-subject: train odd subjects except s{val_subject} (validation), test even subjects "
        f"({n_test} clips, read once per model); seeds {list(seeds)}",
        format_summary(summary, metric),
        format_within_clip(summary, metric),
        format_pipeline_cost(cost),
        format_fusion_weights(per_seed),
        f"extraction {t_extract:.0f} s, training and evaluation {t_train:.0f} s, "
        f"total {time.perf_counter() - t0:.0f} s",
    ] if part)  # fmt: skip
    (out / "report.md").write_text(md + "\n")
    plot_means(summary, metric, out)
    full = {"protocol": {"val_subject": val_subject, "seeds": list(seeds), "metric": metric, "test_clips": n_test,
                         "lanes": lanes, "configs": list(configs)},
            "summary": summary, "per_seed": per_seed, "cost": cost,
            "seconds": {"extraction": t_extract, "training_and_evaluation": t_train}}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(full, indent=2))
    return {**full, "markdown": md}


def _fitted_weights(run_dir: Path) -> dict[str, float]:
    meta = json.loads((run_dir / "final" / "model.json").read_text())  # (written with sorted keys)
    weights = meta.get("fusion_weights", {})
    return {k: weights[k] for k in ["fused", "heads", *(s["name"] for s in meta["specs"])] if k in weights}


def format_fusion_weights(per_seed: list[dict]) -> str:
    """Markdown: each model's fitted late-fusion weights, mean over seeds ("" where none fitted)."""
    models = {k: [r["fusion_weights"][k] for r in per_seed] for k in per_seed[0].get("fusion_weights", {})}
    models = {k: v for k, v in models.items() if all(v)}
    if not models:
        return ""
    names = list(next(iter(models.values()))[0])
    head = "late-fusion weights fitted on the validation subject (shared row, mean over seeds)"
    lines = [f"| {head} | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]  # fmt: skip
    for k, v in models.items():
        lines.append(f"| {k} | " + " | ".join(f"{np.mean([w[n] for w in v]):.2f}" for n in names) + " |")
    lines.append(
        "\nWith model.fusion_weights=per_subset (the presets), each modality subset also has a row of its own, "
        "drawn toward this one: fusion_weights_per_subset in each run's final/model.json."
    )
    return "\n".join(lines)
