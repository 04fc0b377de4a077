"""The experiment commands of the ``karmma`` CLI — ``demo``, ``sweep``, ``utd-mhad``,
``missing-strategies``, ``fit-recipe``: multi-seed
runs that print mean ± std tables (the core commands are in :mod:`karmma.cli`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from karmma.cli.args import positive_int, seed_list


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress


def cmd_demo(args: argparse.Namespace) -> int:
    from karmma.experiments.demo import run_demo

    t0 = time.perf_counter()
    seeds = args.seeds
    print(f"karmma demo: teacher -> student -> baselines -> evaluation on the embedded synthetic data, seeds {seeds}")
    res = run_demo(
        args.out,
        epochs=args.epochs,
        overrides=args.set,
        repeats=args.repeats,
        progress=_progress(args),
        resume=not args.no_resume,
        seeds=seeds,
        configs=(args.teacher_config, args.student_config),
    )
    print()
    print(res.markdown)
    print()
    for k, p in res.paths.items():
        print(f"{k:12s} {p}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from karmma.experiments.sweep import parse_grid, run_sweep
    from karmma.paths import no_dangling_link

    out = no_dangling_link(args.out, "--out")
    report = run_sweep(args.config, parse_grid(args.grid), out, teacher=args.teacher, seeds=args.seeds,
                       overrides=args.set, split=args.split, repeats=args.repeats, progress=_progress(args),
                       resume=not args.no_resume)  # fmt: skip
    print(report["markdown"])
    print(f"\nsweep: {Path(args.out) / 'sweep.md'}")
    return 0


def cmd_utd(args: argparse.Namespace) -> int:
    from karmma.experiments.utd_mhad import run_utd_mhad_benchmark

    report = run_utd_mhad_benchmark(args.root, args.out, seeds=args.seeds, epochs=args.epochs, progress=_progress(args),
                                    limit=args.limit, repeats=args.repeats, val_subject=args.val_subject,
                                    overrides=args.set, lanes=args.lanes,
                                    configs=(args.teacher_config, args.student_config))  # fmt: skip
    print(report["markdown"])
    return 0


def cmd_missing_strategies(args: argparse.Namespace) -> int:
    from karmma.experiments.missing_strategies import run_missing_strategies

    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    report = run_missing_strategies(args.data, args.out, seeds=args.seeds, strategies=strategies, root=args.root,
                                    epochs=args.epochs, repeats=args.repeats, overrides=args.set, lanes=args.lanes,
                                    progress=_progress(args))  # fmt: skip
    print(report["markdown"])
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


def cmd_fit_recipe(args: argparse.Namespace) -> int:
    from karmma.experiments.fit_recipe import run_fit_recipe

    report = run_fit_recipe(args.teacher_config, args.student_config, args.out, overrides=args.set,
                            budget_minutes=args.budget_minutes, seed=args.seed, progress=_progress(args))  # fmt: skip
    print(report["markdown"])
    print(f"\nconfigs: {Path(args.out) / 'teacher.yaml'}, {Path(args.out) / 'student.yaml'}")
    return 0


def add_experiment_commands(sub) -> None:
    sp = sub.add_parser("demo", help="teacher -> student -> baselines -> evaluation on the embedded data")
    sp.add_argument("--out", default="runs/demo")
    sp.add_argument("--epochs", type=int, default=None, help="override the presets' epochs")
    sp.add_argument("--repeats", type=positive_int, default=3, help="sensor-dropout repeats per rate (>= 1)")
    sp.add_argument("--seeds", type=seed_list, default=(0, 1, 2), help="training seeds, e.g. 0,1,2 (mean ± std)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--no-resume", action="store_true", help="start over even if runs exist")
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--teacher-config", default="demo_teacher", help="the teacher's preset or YAML")
    sp.add_argument("--student-config", default="demo_student", help="the student's (and baselines')")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("sweep", help="a grid of config values over seeds, ranked on the validation split")
    sp.add_argument("--config", required=True, help="preset name or YAML file")
    sp.add_argument("--teacher", help="distil from this teacher run (else train with cross-entropy)")
    sp.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="repeat for a grid")
    sp.add_argument("--seeds", type=seed_list, default=(0,), help="training seeds, e.g. 0,1,2")
    sp.add_argument("--split", default="val", choices=["val", "test"], help="val: choose; test: report an ablation")
    sp.add_argument("--repeats", type=positive_int, default=1, help="sensor-dropout repeats per rate (>= 1)")
    sp.add_argument("--out", default="runs/sweep")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--no-resume", action="store_true")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("utd-mhad", help="the UTD-MHAD benchmark: teacher, student, baselines over seeds, cost")
    sp.add_argument("--root", default="../shared/data/utd_mhad")
    sp.add_argument("--out", default="runs/utd_mhad")
    sp.add_argument("--seeds", type=seed_list, default=(0, 1, 2), help="training seeds, e.g. 0,1,2 (mean ± std)")
    sp.add_argument("--epochs", type=int, default=None)
    sp.add_argument("--limit", type=int, default=None, help="only the first N clips per split (smoke tests)")
    sp.add_argument("--val-subject", type=int, default=7, help="the training subject held out for validation")
    sp.add_argument("--repeats", type=positive_int, default=3, help="sensor-dropout repeats per rate (>= 1)")
    sp.add_argument("--lanes", type=int, choices=(1, 2), default=None,
                    help="2: train the baselines in a second process beside teacher -> student, the CPU threads split "
                         "between them (default: 2 on a machine with 2 or more cores)")  # fmt: skip
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of every config")
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--teacher-config", default="utd_mhad_teacher", help="the teacher's preset or YAML")
    sp.add_argument("--student-config", default="utd_mhad_student", help="the student's (and baselines')")
    sp.set_defaults(func=cmd_utd)

    sp = sub.add_parser("missing-strategies", help="the same model with each missing-modality strategy, over seeds")
    sp.add_argument("--data", choices=("demo", "utd-mhad"), default="demo")
    sp.add_argument("--root", default="../shared/data/utd_mhad", help="the UTD-MHAD folder (--data utd-mhad)")
    sp.add_argument("--out", default="runs/missing_strategies")
    sp.add_argument("--strategies", default="token,zero,attn_mask,reconstruct", help="registered names, a,b,...")
    sp.add_argument("--seeds", type=seed_list, default=(0, 1, 2), help="training seeds, e.g. 0,1,2 (mean ± std)")
    sp.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    sp.add_argument("--repeats", type=positive_int, default=3, help="sensor-dropout repeats per rate (>= 1)")
    sp.add_argument("--lanes", type=int, choices=(1, 2), default=None, help="2: two trainings at once (2+ cores)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of every config")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_missing_strategies)

    sp = sub.add_parser("fit-recipe", help="try a few candidate settings on the validation split, within a budget")
    sp.add_argument("--teacher-config", default="teacher", help="the teacher's preset or YAML (default: teacher)")
    sp.add_argument("--student-config", default="student", help="the student's preset or YAML (default: student)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="e.g. data.train=train.h5 and data.val=val.h5, for both configs")  # fmt: skip
    sp.add_argument("--budget-minutes", type=float, default=30.0, help="wall-clock budget (default 30)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default="runs/recipe")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_fit_recipe)
