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

from karmma.config import ExperimentConfig, load_config
from karmma.evaluate import write_results
from karmma.presets import preset_path
from karmma.runs import run_distill, run_evaluate, run_train

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    results: dict
    tasks: list[str]
    paths: dict[str, Path]
    run_dirs: dict[str, Path]


def demo_configs(epochs: int | None = None, overrides: list[str] | None = None) -> tuple[ExperimentConfig, ExperimentConfig]:
    extra = [*(overrides or []), *([f"optim.epochs={epochs}"] if epochs is not None else [])]
    return load_config(preset_path("demo_teacher"), extra), load_config(preset_path("demo_student"), extra)


def run_demo(
    out_dir: str | Path = "runs/demo",
    epochs: int | None = None,
    overrides: list[str] | None = None,
    repeats: int = 3,
    progress: bool = False,
    resume: bool = True,
) -> DemoResult:
    out = Path(out_dir)
    teacher_cfg, student_cfg = demo_configs(epochs, overrides)
    dirs = {k: out / k for k in ("teacher", "student", "baseline-ce", "baseline-md")}
    log.info("stage 1: teacher")
    run_train(teacher_cfg, dirs["teacher"], resume=resume, progress=progress)
    log.info("stage 2: student distilled from the teacher")
    run_distill(student_cfg, dirs["teacher"], dirs["student"], resume=resume, progress=progress)
    log.info("baselines: student architecture without distillation")
    base = [*(overrides or []), *([f"optim.epochs={epochs}"] if epochs is not None else [])]
    ce_cfg = load_config(preset_path("demo_student"), [*base, "modality_dropout.kind=none", "name=baseline-ce"])
    run_train(ce_cfg, dirs["baseline-ce"], resume=resume, progress=progress)
    md_cfg = load_config(preset_path("demo_student"), [*base, "name=baseline-md"])
    run_train(md_cfg, dirs["baseline-md"], resume=resume, progress=progress)
    results, tasks = run_evaluate(dirs, seed=teacher_cfg.seed, repeats=repeats, progress=progress)
    paths = write_results(results, out / "eval", tasks)
    return DemoResult(results, tasks, paths, dirs)
