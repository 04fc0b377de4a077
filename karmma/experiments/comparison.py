"""The paper's four-model comparison (teacher, KARMMA student, baseline-ce, baseline-md) from two
configs: what ``karmma demo`` and ``karmma utd-mhad`` run per seed."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from karmma.config import ExperimentConfig, load_config
from karmma.engine.runs import run_distill, run_evaluate, run_train
from karmma.experiments.lanes import run_two_lanes
from karmma.presets import preset_path
from karmma.progress import stderr_is_terminal

log = logging.getLogger(__name__)

COMPARISON = ("teacher", "student", "baseline-ce", "baseline-md")


def _train_runs(runs: list[tuple[ExperimentConfig, Path]], resume: bool, progress: bool) -> None:
    log.info("baselines: the student architecture without distillation")
    for cfg, run_dir in runs:
        run_train(cfg, run_dir, resume=resume, progress=progress)


def run_comparison(
    teacher_config: str | Path,
    student_config: str | Path,
    out_dir: str | Path,
    overrides: list[str] | None = None,
    repeats: int = 3,
    progress: bool = False,
    resume: bool = True,
    eval_store: str | Path | None = None,
    eval_split: str = "val",
    lanes: int = 1,
    bursts: tuple[float, ...] = (),
    raw_root: str | Path | None = None,
) -> tuple[dict, list[str], dict[str, Path]]:
    """Train and evaluate the four models of the paper's comparison, in ``out_dir/<name>``:

    * ``teacher``: CE + modality dropout + missing-modality tokens (``teacher_config``),
    * ``student``: the KARMMA student distilled from it (``student_config``),
    * ``baseline-ce``: the student architecture with CE only (no KD, no modality dropout),
    * ``baseline-md``: the student architecture with CE + modality dropout + missing tokens (no KD).

    ``overrides`` (``key=value``) apply to every config. The models are evaluated on
    ``eval_store`` (e.g. the test split, read once at the end) or else on ``eval_split`` of their
    own data (``val``, or ``test`` for the final report).
    ``lanes=2`` trains the baselines in a second process while teacher and student train here
    (:func:`karmma.experiments.lanes.run_two_lanes`, the threads split between the two).
    ``bursts`` (mean burst lengths, s): also the within-clip failure tables (:mod:`karmma.evaluation.bursts`),
    whole-clip summaries recomputed from the raw data at ``raw_root`` where given.
    Returns (results, tasks, run folders).
    """
    out = Path(out_dir)
    base = list(overrides or [])
    dirs = {k: out / k for k in COMPARISON}
    teacher_cfg = load_config(preset_path(teacher_config), base)

    def student(*extra: str) -> ExperimentConfig:
        return load_config(preset_path(student_config), [*base, *extra])

    baselines = [(student("modality_dropout.kind=none", "name=baseline-ce"), dirs["baseline-ce"]),
                 (student("name=baseline-md"), dirs["baseline-md"])]  # fmt: skip

    def teacher_then_student() -> None:
        log.info("stage 1: teacher")
        run_train(teacher_cfg, dirs["teacher"], resume=resume, progress=progress)
        log.info("stage 2: student distilled from the teacher")
        run_distill(student(), dirs["teacher"], dirs["student"], resume=resume, progress=progress)

    # The baselines need no teacher: with lanes=2 they train in a second process meanwhile
    # (karmma.experiments.lanes); a second lane draws no progress bar on a terminal, only log lines elsewhere.
    side_progress = progress and (lanes < 2 or not stderr_is_terminal())
    run_two_lanes(teacher_then_student, functools.partial(_train_runs, baselines, resume, side_progress), lanes)
    eval_at = str(eval_store) if eval_store else None
    results, tasks = run_evaluate(dirs, eval_at, seed=teacher_cfg.seed, repeats=repeats, progress=progress,
                                  split="test" if eval_at else eval_split, bursts=bursts,
                                  raw_root=raw_root)  # fmt: skip
    return results, tasks, dirs
