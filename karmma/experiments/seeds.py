"""Results over several seeds: mean ± std per model, modality subset and sensor-dropout rate, and
the paired comparison the paper's claim rests on — the KARMMA student minus the same student
trained without distillation (``baseline-md``), seed by seed, with the count of cells where the
student wins. Used by the demo and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mean_std(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def aggregate(per_seed: list[dict], metric: str) -> dict:
    """Mean/std over seeds per model, subset and dropout rate, and the paired student - baseline-md."""
    first = per_seed[0]["models"]
    out: dict = {"models": {}}
    for name, r in first.items():
        out["models"][name] = {
            part: {key: mean_std([s["models"][name][part][key][metric] for s in per_seed]) for key in r[part]}
            for part in ("subsets", "sensor_dropout")
        }
        if "within_clip" in r:  # {view: {rate: mean ± std over seeds}} (karmma.evaluation.bursts)
            out["models"][name]["within_clip"] = {
                view: {rate: mean_std([s["models"][name]["within_clip"][view][rate][metric] for s in per_seed])
                       for rate in table} for view, table in r["within_clip"].items()
            }  # fmt: skip
    if {"student", "baseline-md"} <= set(first):
        paired: dict = {}
        for part in ("subsets", "sensor_dropout"):
            rows = {}
            for key in first["student"][part]:
                d = [s["models"]["student"][part][key][metric] - s["models"]["baseline-md"][part][key][metric]
                     for s in per_seed]  # fmt: skip
                rows[key] = mean_std(d)
            paired[part] = {"rows": rows, "student_wins": sum(v["mean"] > 0 for v in rows.values()), "of": len(rows)}
        per_subset = [v["values"] for v in paired["subsets"]["rows"].values()]  # (subsets, seeds)
        paired["mean_over_subsets"] = mean_std(np.mean(per_subset, axis=0))
        out["student_minus_baseline_md"] = paired
    return out


WITHIN_CLIP_MODELS = ("teacher", "student", "baseline-md")


def format_within_clip(summary: dict, metric: str, models: tuple[str, ...] = WITHIN_CLIP_MODELS) -> str:
    """Markdown: per failure rate, each model's three ways of treating a sensor failing inside
    the clip (mean ± std over seeds); empty when the results have none."""
    have = [m for m in models if "within_clip" in summary["models"].get(m, {})]
    if not have:
        return ""
    views = list(summary["models"][have[0]]["within_clip"])
    cols = [(m, v) for m in have for v in views]
    lines = [f"| time each sensor fails ({metric}, mean ± std over seeds) | " + " | ".join(f"{m} {v}" for m, v in cols)
             + " |", "|---|" + "---:|" * len(cols)]  # fmt: skip
    for rate in summary["models"][have[0]]["within_clip"][views[0]]:
        cells = [summary["models"][m]["within_clip"][v][rate] for m, v in cols]
        lines.append(
            f"| {float(rate) * 100:.0f}% | " + " | ".join(f"{c['mean']:.1f} ± {c['std']:.1f}" for c in cells) + " |"
        )
    return "\n".join(lines)


def format_summary(summary: dict, metric: str) -> str:
    models = list(summary["models"])
    lines = []
    for part, title in (("subsets", "subset"), ("sensor_dropout", "sensor dropout")):
        keys = list(summary["models"][models[0]][part])
        lines += [f"| {title} ({metric}, mean ± std over seeds) | " + " | ".join(models) + " |",
                  "|---|" + "---:|" * len(models)]  # fmt: skip
        for k in keys:
            label = f"{float(k) * 100:.0f}%" if part == "sensor_dropout" else k
            cells = [f"{summary['models'][m][part][k]['mean']:.1f} ± {summary['models'][m][part][k]['std']:.1f}"
                     for m in models]  # fmt: skip
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    paired = summary.get("student_minus_baseline_md")
    if paired:
        lines += ["| student − baseline-md | subsets | sensor dropout |", "|---|---:|---:|"]
        lines.append(f"| cells where the student wins | {paired['subsets']['student_wins']}/{paired['subsets']['of']} "
                     f"| {paired['sensor_dropout']['student_wins']}/{paired['sensor_dropout']['of']} |")  # fmt: skip
        m = paired["mean_over_subsets"]
        lines.append(f"| mean over subsets | {m['mean']:+.1f} ± {m['std']:.1f} | |")
    return "\n".join(lines)


def plot_means(summary: dict, metric: str, out: Path) -> None:
    """The paper-style plots of the means over seeds (``sensor_dropout.png``, ``subsets.png``)."""
    from karmma.evaluation.plots import plot_sensor_dropout, plot_subsets

    means = {"models": {name: {part: {k: {metric: v["mean"]} for k, v in r[part].items()}
                               for part in ("subsets", "sensor_dropout")}
                        for name, r in summary["models"].items()}}  # fmt: skip
    plot_sensor_dropout(means, metric, out / "sensor_dropout.png")
    plot_subsets(means, metric, out / "subsets.png")
    within = {name: r["within_clip"] for name, r in summary["models"].items() if name in WITHIN_CLIP_MODELS
              and "within_clip" in r}  # fmt: skip
    if within:  # the within-clip failure curves (karmma.evaluation.bursts): mean and std over seeds
        from karmma.evaluation.plots import plot_within_clip

        curves = {name: {"within_clip": {view: {k: {metric: v["mean"], f"{metric}_std": v["std"]} for k, v in t.items()}
                                         for view, t in w.items()}} for name, w in within.items()}  # fmt: skip
        plot_within_clip({"models": curves}, metric, out / "within_clip.png")
