"""Plots like the paper's: accuracy vs. run-time sensor dropout rate (Figure 4) and per subset."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_sensor_dropout(results: dict, metric: str, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["models"].items():
        rates = sorted(r["sensor_dropout"], key=float)
        xs = [float(x) * 100 for x in rates]
        ys = [r["sensor_dropout"][x][metric] for x in rates]
        err = [r["sensor_dropout"][x].get(f"{metric}_std", 0.0) for x in rates]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xlabel("run-time sensor dropout (%)")
    ax.set_ylabel(metric.replace("_", " ") + " (%)")
    ax.set_title("Robustness to missing modalities")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_subsets(results: dict, metric: str, path: str | Path) -> Path:
    models = list(results["models"])
    subsets = list(results["models"][models[0]]["subsets"])
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(subsets)), 4))
    for i, name in enumerate(models):
        ys = [results["models"][name]["subsets"][s][metric] for s in subsets]
        ax.bar([j + i * width for j in range(len(subsets))], ys, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(subsets))])
    ax.set_xticklabels(subsets, rotation=30, ha="right")
    ax.set_ylabel(metric.replace("_", " ") + " (%)")
    ax.set_title("Accuracy per available modality subset")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_within_clip(results: dict, metric: str, path: str | Path) -> Path:
    """Accuracy against the fraction of each clip its sensors fail, one panel per model, a line
    per way of treating the failure (``per_token``, ``drop_whole``, ``as_data``)."""
    models = [m for m, r in results["models"].items() if "within_clip" in r]
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], models):
        for view, table in results["models"][name]["within_clip"].items():
            rates = sorted(table, key=float)
            err = [table[x].get(f"{metric}_std", 0.0) for x in rates]
            xs, ys = [float(x) * 100 for x in rates], [table[x][metric] for x in rates]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=view)
        ax.set_title(name)
        ax.set_xlabel("time each sensor fails (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel(metric.replace("_", " ") + " (%)")
    fig.suptitle("Sensors failing inside the clip")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
