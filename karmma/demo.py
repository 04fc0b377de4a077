"""``karmma demo``: teacher -> student -> baselines -> evaluation on the embedded synthetic data.

Trains, on a 2-core CPU in a few minutes:

* ``teacher``: the KARMMA teacher (wide features, CE + modality dropout + missing-modality tokens),
* ``student``: the KARMMA student (small features, compact fusion), distilled from the teacher,
* ``baseline-ce``: the student architecture trained with cross-entropy only (no modality dropout),
* ``baseline-md``: the student architecture with CE + modality dropout + missing tokens (no KD),

then evaluates all four on every modality subset and under 0-90% sensor dropout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from karmma.evaluate import write_results
from karmma.runs import run_comparison

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    results: dict
    tasks: list[str]
    paths: dict[str, Path]
    run_dirs: dict[str, Path]


def run_demo(
    out_dir: str | Path = "runs/demo",
    epochs: int | None = None,
    overrides: list[str] | None = None,
    repeats: int = 3,
    progress: bool = False,
    resume: bool = True,
) -> DemoResult:
    out = Path(out_dir)
    extra = [*(overrides or []), *([f"optim.epochs={epochs}"] if epochs is not None else [])]
    results, tasks, dirs = run_comparison("demo_teacher", "demo_student", out, extra, repeats, progress, resume)
    paths = write_results(results, out / "eval", tasks)
    return DemoResult(results, tasks, paths, dirs)
