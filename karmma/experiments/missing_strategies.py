"""``karmma missing-strategies``: the reviewer's comparison — the same model trained with each
missing-modality strategy, on the demo's synthetic data or on UTD-MHAD, evaluated on every modality
subset and under 0-90% sensor dropout on the test split (read once per model), mean ± std over seeds.

* ``token``: KARMMA (an absent modality's slots hold its learned tokens only),
* ``zero``: zero-filled features, projected like real ones,
* ``attn_mask``: absent slots masked out of attention and of the head average,
* ``reconstruct``: absent slots predicted from the present ones, with a reconstruction loss on
  modalities dropped in training but held by the data (:mod:`karmma.models.reconstruct`).

Every strategy trains the benchmark's teacher configuration (``demo_teacher`` or
``utd_mhad_teacher``: CE + modality dropout, the same seed, data and schedule); only
``model.missing`` differs. On UTD-MHAD the stores are those of ``karmma utd-mhad`` (extracted once,
resumable; subject 7 held out for validation). Where the machine has 2 cores the strategies train
in two lanes (:mod:`karmma.experiments.lanes`).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from karmma.config import load_config
from karmma.engine.runs import run_evaluate, run_train
from karmma.errors import ConfigError
from karmma.evaluation.evaluate import main_metric
from karmma.experiments.lanes import auto_lanes, run_two_lanes
from karmma.experiments.seeds import aggregate, format_summary, plot_means
from karmma.outputs import write_json_atomic, write_text_atomic
from karmma.presets import preset_path
from karmma.registries import MISSING

log = logging.getLogger(__name__)

STRATEGIES = ("token", "zero", "attn_mask", "reconstruct")
DATASETS = {"demo": "demo_teacher", "utd-mhad": "utd_mhad_teacher"}


def _train(jobs: list[tuple[str, list[str], str]], progress: bool) -> None:
    for preset, overrides, run_dir in jobs:
        run_train(load_config(preset_path(preset), overrides), run_dir, progress=progress)


def run_missing_strategies(
    data: str = "demo",
    out: str | Path = "runs/missing_strategies",
    seeds: tuple[int, ...] = (0, 1, 2),
    strategies: tuple[str, ...] = STRATEGIES,
    root: str | Path = "../shared/data/utd_mhad",
    epochs: int | None = None,
    repeats: int = 3,
    overrides: list[str] | None = None,
    lanes: int | None = None,
    progress: bool = False,
) -> dict:
    """Train one model per strategy and seed in ``out/seed<k>/<strategy>`` (resumed where done),
    evaluate each on the test split; write ``summary.json``, ``report.md`` and the plots."""
    if data not in DATASETS:
        raise ConfigError(f"--data {data!r}: choose one of {', '.join(DATASETS)}")
    for name in strategies:
        MISSING.get(name)  # an unknown name fails here, before any training
    out = Path(out)
    base = [*(overrides or []), *([f"optim.epochs={epochs}"] if epochs is not None else [])]
    eval_store: str | None = None
    if data == "utd-mhad":
        from karmma.experiments.utd_mhad import prepare_stores

        fit, val, test = prepare_stores(root, out / "features", progress=progress)
        base = [f"data.train={fit}", f"data.val={val}", *base]
        eval_store = str(test)
    dirs: dict[int, dict[str, str | Path]] = {seed: {s: out / f"seed{seed}" / s for s in strategies} for seed in seeds}
    jobs = [(DATASETS[data], [*base, f"seed={seed}", f"model.missing={s}", f"name={s}"], str(dirs[seed][s]))
            for seed in seeds for s in strategies]  # fmt: skip
    lanes = auto_lanes() if lanes is None else lanes
    if lanes < 2:
        _train(jobs, progress)
    else:  # alternate strategies between the lanes, so that each lane has a share of each seed
        run_two_lanes(functools.partial(_train, jobs[0::2], progress), functools.partial(_train, jobs[1::2], False))
    per_seed = []
    for seed in seeds:
        results, tasks = run_evaluate(dirs[seed], eval_store, seed=seed, repeats=repeats, progress=progress,
                                      split="test")  # fmt: skip
        per_seed.append(results)
    metric = main_metric(tasks)
    summary = aggregate(per_seed, metric)
    summary["means"] = _means(per_seed, metric)
    n = int(next(iter(per_seed[0]["models"][strategies[0]]["subsets"].values()))["count"])
    md = "\n\n".join([
        f"missing-modality strategies, {data} ({DATASETS[data]}; only model.missing differs), test split "
        f"({n} samples, read once per model); seeds {list(seeds)}",
        format_summary(summary, metric).rstrip(),
        format_means(summary["means"], metric),
    ])  # fmt: skip
    write_text_atomic(out / "report.md", md + "\n")
    write_json_atomic(out / "summary.json", {"data": data, "config": DATASETS[data], "seeds": list(seeds),
                                             "metric": metric, "split": "test", "summary": summary,
                                             "per_seed": per_seed})  # fmt: skip
    plot_means({"models": summary["models"]}, metric, out)
    return {"summary": summary, "markdown": md, "run_dirs": dirs}


def _means(per_seed: list[dict], metric: str) -> dict:
    """Per strategy: the mean over subsets and over dropout rates, each mean ± std over seeds."""
    out = {}
    for name in per_seed[0]["models"]:
        row = {}
        for part in ("subsets", "sensor_dropout"):
            values = [float(np.mean([v[metric] for v in r["models"][name][part].values()])) for r in per_seed]
            row[part] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
        out[name] = row
    return out


def format_means(means: dict, metric: str) -> str:
    lines = [f"| strategy ({metric}, mean ± std over seeds) | mean over subsets | mean over sensor-dropout rates |",
             "|---|---:|---:|"]  # fmt: skip
    for name, row in means.items():
        cells = [f"{row[p]['mean']:.1f} ± {row[p]['std']:.1f}" for p in ("subsets", "sensor_dropout")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
