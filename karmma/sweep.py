"""``karmma sweep``: a grid of config values, each trained (or distilled from ``--teacher``) over
seeds and evaluated on the *validation* split — how alpha, T, epochs, dropout rates and teacher
regularisation are chosen without touching the test split.

Writes ``sweep.json`` (per setting: mean ± std over seeds per modality subset and sensor-dropout
rate, and the selection score) and ``sweep.md`` (the settings ranked by the score: accuracy
averaged over every modality subset, the paper's robustness view), plus ``subsets.png`` (one bar
per setting and subset: the paper's Figure 5 when the grid is ``modality_dropout.p``).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path

import numpy as np

from karmma.config import load_config
from karmma.errors import ConfigError
from karmma.evaluate import main_metric
from karmma.presets import preset_path
from karmma.runs import run_distill, run_evaluate, run_train
from karmma.seeds import aggregate, format_summary

log = logging.getLogger(__name__)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["distill.alpha=0.3,0.5", ...]`` -> ``{"distill.alpha": ["0.3", "0.5"], ...}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r}: write KEY=V1,V2,... (e.g. distill.alpha=0.3,0.5,0.7)")
        grid[key.strip()] = [v.strip() for v in values.split(",")]
    if not grid:
        raise ConfigError("give at least one --grid KEY=V1,V2,...")
    return grid


def _slug(setting: dict[str, str]) -> str:
    return "_".join(f"{k.split('.')[-1]}={v}" for k, v in setting.items()) or "base"


def run_sweep(
    config: str | Path,
    grid: dict[str, list[str]],
    out_dir: str | Path,
    teacher: str | Path | None = None,
    seeds: tuple[int, ...] = (0,),
    overrides: list[str] | None = None,
    split: str = "val",
    repeats: int = 1,
    progress: bool = False,
    resume: bool = True,
) -> dict:
    out = Path(out_dir)
    settings = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    for setting in settings:  # every config parses before anything trains
        load_config(preset_path(config), [*(overrides or []), *(f"{k}={v}" for k, v in setting.items())])
    per_seed: list[dict] = [{"models": {}} for _ in seeds]
    tasks: list[str] = []
    for setting in settings:
        name = ", ".join(f"{k}={v}" for k, v in setting.items())
        for i, seed in enumerate(seeds):
            sets = [*(overrides or []), *(f"{k}={v}" for k, v in setting.items()), f"seed={seed}"]
            cfg = load_config(preset_path(config), sets)
            run = out / _slug(setting) / f"seed{seed}"
            log.info("sweep %s, seed %d", name, seed)
            if teacher:
                run_distill(cfg, teacher, run, resume=resume, progress=progress)
            else:
                run_train(cfg, run, resume=resume, progress=progress)
            res, tasks = run_evaluate({name: run}, seed=seed, repeats=repeats, split=split, device=cfg.device)
            per_seed[i]["models"][name] = res["models"][name]
    metric = main_metric(tasks)
    summary = aggregate(per_seed, metric)
    ranked = []
    for name, r in summary["models"].items():
        scores = [float(np.mean([r["subsets"][k]["values"][i] for k in r["subsets"]])) for i in range(len(seeds))]
        ranked.append({"setting": name, "subset_mean": float(np.mean(scores)), "subset_mean_std": float(np.std(scores)),
                       "all_modalities": list(r["subsets"].values())[-1]["mean"],
                       "dropout_90": r["sensor_dropout"].get("0.9", {}).get("mean")})  # fmt: skip
    ranked.sort(key=lambda x: -x["subset_mean"])
    lines = [f"{config} over seeds {list(seeds)}, evaluated on the {split} split ({metric})", "",
             "| setting | mean over subsets | all modalities | 90% sensor dropout |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for r in ranked:
        d90 = f"{r['dropout_90']:.1f}" if r["dropout_90"] is not None else "-"
        lines.append(f"| {r['setting']} | {r['subset_mean']:.1f} ± {r['subset_mean_std']:.1f} | "
                     f"{r['all_modalities']:.1f} | {d90} |")  # fmt: skip
    verdict = (f"best on {split}: {ranked[0]['setting']}" if split == "val" else
               f"highest on {split}: {ranked[0]['setting']} (an ablation report: choose on val)")  # fmt: skip
    md = "\n".join([*lines, "", verdict, "", format_summary(summary, metric)])
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(md + "\n")
    report = {"config": str(config), "grid": grid, "seeds": list(seeds), "split": split, "metric": metric,
              "teacher": str(teacher) if teacher else None, "ranked": ranked, "summary": summary}  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(report, indent=2))
    _plot(summary, metric, out / "subsets.png")
    return {**report, "markdown": md}


def _plot(summary: dict, metric: str, path: Path) -> None:
    from karmma.plots import plot_subsets

    short = {n: re.sub(r"(^|, )[\w.]*\.(\w+=)", r"\1\2", n) for n in summary["models"]}  # p=0.25, not the key path
    means = {"models": {short[n]: {"subsets": {k: {metric: v["mean"]} for k, v in r["subsets"].items()}}
                        for n, r in summary["models"].items()}}  # fmt: skip
    plot_subsets(means, metric, path)
