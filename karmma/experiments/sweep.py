"""``karmma sweep``: a grid of config values, each trained (or distilled from ``--teacher``) over
seeds and evaluated on the *validation* split — how alpha, T, epochs, dropout rates and teacher
regularisation are chosen without touching the test split.

Writes ``sweep.json`` (per setting: mean ± std over seeds per modality subset and sensor-dropout
rate, and the selection score) and ``sweep.md`` (the settings ranked by the score: accuracy
averaged over every modality subset, the paper's robustness view), plus ``subsets.png`` (one bar
per setting and subset: the paper's Figure 5 when the grid is ``modality_dropout.p``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import re
from pathlib import Path

import numpy as np

from karmma.config import load_config
from karmma.engine.runs import run_distill, run_evaluate, run_train
from karmma.errors import ConfigError
from karmma.evaluation.evaluate import main_metric
from karmma.experiments.seeds import aggregate, format_summary
from karmma.outputs import write_json_atomic, write_text_atomic
from karmma.presets import preset_path

log = logging.getLogger(__name__)


MAX_SETTINGS = 10_000  # a sweep trains each setting over each seed: more is a typo, not a plan


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["distill.alpha=0.3,0.5", ...]`` -> ``{"distill.alpha": ["0.3", "0.5"], ...}``. A key given
    twice, a repeated or empty value, and ``seed`` (trained over by ``--seeds``) are refused."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r}: write KEY=V1,V2,... (e.g. distill.alpha=0.3,0.5,0.7)")
        if key == "seed":
            raise ConfigError(f"--grid {item!r}: the seed is not a grid key — every setting is trained with each "
                              f"seed of --seeds; write --seeds {values.strip()}")  # fmt: skip
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; give its values once: --grid {key}=V1,V2,...")
        grid[key] = [v.strip() for v in values.split(",")]
        if "" in grid[key]:
            raise ConfigError(f"--grid {item!r}: an empty value; write KEY=V1,V2,... without empty entries")
        repeated = sorted({v for v in grid[key] if grid[key].count(v) > 1})
        if repeated:
            raise ConfigError(f"--grid {item!r}: the value(s) {', '.join(repeated)} repeated; give each value once")
    if not grid:
        raise ConfigError("give at least one --grid KEY=V1,V2,...")
    total = math.prod(len(v) for v in grid.values())
    if total > MAX_SETTINGS:
        raise ConfigError(f"the grid has {total:,} settings (the product of its value counts), over {MAX_SETTINGS:,}: "
                          "each is trained over every seed; sweep fewer keys or values at a time")  # fmt: skip
    return grid


def _slug(setting: dict[str, str]) -> str:
    """A folder name for a setting: ``key=value`` pairs joined by ``_``, anything but letters,
    digits and ``._=+-`` (and ``..``) replaced by ``-``: no path separator, never ``.`` or ``..``. A
    name so changed, or cut for length, ends with a hash of the setting."""
    text = "_".join(f"{k.split('.')[-1]}={v}" for k, v in setting.items()) or "base"
    slug = re.sub(r"[^A-Za-z0-9._=+-]|\.{2,}", "-", text)
    slug = re.sub(r"-{2,}", "-", slug).strip(".-") or "setting"
    if len(slug) > 80 or slug != text:
        slug = f"{slug[:64]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return slug


def run_folders(out: Path, settings: list[dict[str, str]]) -> list[Path]:
    """One distinct folder under ``out`` per setting (:func:`_slug`), checked to stay inside it."""
    root, seen, folders = out.resolve(), set(), []
    for setting in settings:
        slug = base = _slug(setting)
        n = 1
        while slug.lower() in seen:  # two settings that slug alike (or differ only in case)
            n += 1
            slug = f"{base}-{n}"
        seen.add(slug.lower())
        folder = out / slug
        if folder.resolve().parent != root:
            raise ConfigError(f"--grid {setting}: its run folder {folder} would lie outside --out {out}")
        folders.append(folder)
    return folders


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
    from karmma.outputs import check_writable

    out = Path(out_dir)
    if "seed" in grid:
        raise ConfigError("the seed is not a grid key; every setting is trained with each seed of --seeds")
    if not seeds or len(set(seeds)) != len(seeds) or repeats < 1:
        raise ConfigError(f"seeds {list(seeds)} and repeats {repeats}: distinct seeds, at least one, repeats >= 1")
    settings = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    for setting in settings:  # every config parses before anything trains
        load_config(preset_path(config), [*(overrides or []), *(f"{k}={v}" for k, v in setting.items())])
    folders = run_folders(out, settings)
    check_writable(out, "--out")  # before the first run trains
    per_seed: list[dict] = [{"models": {}} for _ in seeds]
    tasks: list[str] = []
    runs: dict[str, str] = {}  # setting -> its run folder
    for setting, folder in zip(settings, folders):
        name = ", ".join(f"{k}={v}" for k, v in setting.items())
        runs[name] = str(folder)
        for i, seed in enumerate(seeds):
            sets = [*(overrides or []), *(f"{k}={v}" for k, v in setting.items()), f"seed={seed}"]
            cfg = load_config(preset_path(config), sets)
            run = folder / f"seed{seed}"
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
    report = {"config": str(config), "grid": grid, "seeds": list(seeds), "split": split, "metric": metric,
              "teacher": str(teacher) if teacher else None, "ranked": ranked, "summary": summary,
              "runs": runs}  # fmt: skip
    write_text_atomic(out / "sweep.md", md + "\n")
    write_json_atomic(out / "sweep.json", report)
    _plot(summary, metric, out / "subsets.png")
    return {**report, "markdown": md}


def _plot(summary: dict, metric: str, path: Path) -> None:
    from karmma.evaluation.evaluate import write_figure
    from karmma.evaluation.plots import plot_subsets

    short = {n: re.sub(r"(^|, )[\w.]*\.(\w+=)", r"\1\2", n) for n in summary["models"]}  # p=0.25, not the key path
    means = {"models": {short[n]: {"subsets": {k: {metric: v["mean"]} for k, v in r["subsets"].items()}}
                        for n, r in summary["models"].items()}}  # fmt: skip
    write_figure(plot_subsets, means, metric, path)
