"""The UTD-MHAD benchmark (real data, cross-subject): teacher, KARMMA student and the paper's two
baselines on the student architecture, evaluated per modality subset and under sensor dropout,
with the cost table. ``karmma utd-mhad`` and ``benchmarks/utd_mhad.py`` run it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from karmma.checkpoint import load_model
from karmma.cost import cost_table, format_cost_table, write_cost
from karmma.evaluate import format_dropout_table, format_table, write_results
from karmma.extractors.extract import run_extract
from karmma.runs import run_comparison

log = logging.getLogger(__name__)


def run_utd_mhad_benchmark(
    root: str | Path,
    out: str | Path = "runs/utd_mhad",
    epochs: int | None = None,
    progress: bool = False,
    limit: int | None = None,
    seed: int = 0,
    repeats: int = 3,
    workers: int = 2,
) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    feats = {split: out / "features" / f"{split}.h5" for split in ("train", "test")}
    for split, path in feats.items():
        run_extract("utd_mhad", root, path, split=split, progress=progress, limit=limit, workers=workers)
    t_extract = time.perf_counter() - t0
    overrides = [f"data.train={feats['train']}", f"data.val={feats['test']}", f"seed={seed}"]
    if epochs is not None:
        overrides.append(f"optim.epochs={epochs}")
    results, tasks, dirs = run_comparison("utd_mhad_teacher", "utd_mhad_student", out, overrides, repeats, progress)
    t_train = time.perf_counter() - t0 - t_extract
    paths = write_results(results, out / "eval", tasks)
    models = {k: load_model(dirs[k])[0] for k in ("teacher", "student")}
    cost = cost_table(models, repeats=30)
    paths.update({f"cost_{k}": v for k, v in write_cost(cost, out / "cost").items()})
    metric = "action_top1"
    n_test = int(list(results["models"]["teacher"]["subsets"].values())[-1]["count"])
    md = "\n\n".join(
        [
            f"UTD-MHAD cross-subject (train: odd subjects, test: even subjects), {n_test} test clips, seed {seed}",
            format_table(results, metric),
            format_dropout_table(results, metric),
            format_cost_table(cost),
            f"extraction {t_extract:.0f} s, training and evaluation {t_train:.0f} s, "
            f"total {time.perf_counter() - t0:.0f} s",
        ]
    )
    (out / "report.md").write_text(md + "\n")
    summary = {"results": results, "cost": cost, "paths": {k: str(v) for k, v in paths.items()}, "markdown": md}
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "markdown"}, indent=2))
    return summary
