"""The distillation ablation of docs/distillation.md, measured in one run: the same student
architecture without distillation (baseline-md), with KARMMA's logit distillation, and with each
option, per seed, evaluated on the *test* split (read once per model; every value was chosen
beforehand on the validation split with ``karmma sweep``), as mean ± std over seeds and as the
paired difference to baseline-md. Then the paper's training-dropout study (its Figure 5): the
teacher trained at modality-dropout rates 0, 0.25, 0.5, 0.75, each on every modality subset.

    python benchmarks/distillation.py demo --out runs/ablation_demo
    python benchmarks/distillation.py utd_mhad --features runs/utd_mhad/features --out runs/ablation_utd

(``utd_mhad`` needs the features ``karmma utd-mhad`` extracts: fit.h5, val.h5, test.h5.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from karmma.config import load_config  # noqa: E402
from karmma.data.readers.utd_mhad import SUBJECT_PATTERN  # noqa: E402
from karmma.engine.runs import run_distill, run_evaluate, run_train  # noqa: E402
from karmma.evaluation.evaluate import main_metric  # noqa: E402
from karmma.experiments.seeds import aggregate, format_summary  # noqa: E402
from karmma.experiments.sweep import run_sweep  # noqa: E402
from karmma.presets import preset_path  # noqa: E402

# name -> (teacher overrides, student overrides); "baseline-md" trains the student without a teacher
VARIANTS = {
    "baseline-md": None,
    "KD (paper)": ([], []),
    "KD + out-of-fold teacher logits": ([], ["distill.teacher_logits=out_of_fold"]),
    "KD + regularised teacher (label smoothing 0.1 + best val epoch)": (
        ["optim.label_smoothing=0.1", "optim.select=best"], []),
    "feature KD (beyond the paper)": ([], ["distill.task=feature_kd", "distill.cache_teacher_logits=false"]),
}  # fmt: skip


def data_overrides(args) -> list[str]:
    if args.pair == "demo":
        return []
    f = Path(args.features)
    return [f"data.train={f / 'fit.h5'}", f"data.val={f / 'val.h5'}", f"data.test={f / 'test.h5'}",
            f"data.group_pattern={SUBJECT_PATTERN}"]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pair", choices=["demo", "utd_mhad"])
    p.add_argument("--features", help="utd_mhad: the folder with fit.h5, val.h5 and test.h5")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=";".join(VARIANTS), help="a ;-separated subset of the variants")
    p.add_argument("--figure5", action="store_true", help="also the teacher training-dropout study")
    p.add_argument("--set", action="append", default=[], help="overrides for every run (e.g. optim.epochs=5)")
    a = p.parse_args()
    out, seeds = Path(a.out), [int(s) for s in a.seeds.split(",")]
    base = [*data_overrides(a), *a.set]
    names = [v.strip() for v in a.variants.split(";") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    t0 = time.perf_counter()
    per_seed = []
    for seed in seeds:
        res: dict = {"models": {}}
        teachers: dict[tuple, Path] = {}
        for name in names:
            spec = VARIANTS[name]
            run = out / f"seed{seed}" / "".join(c if c.isalnum() else "_" for c in name.split(" (")[0])
            if spec is None:
                cfg = load_config(preset_path(f"{a.pair}_student"), [*base, f"seed={seed}", "name=baseline-md"])
                run_train(cfg, run)
            else:
                t_sets, s_sets = spec
                key = tuple(t_sets)
                if key not in teachers:
                    teachers[key] = (
                        out / f"seed{seed}" / ("teacher" + "".join(f"_{s}" for s in t_sets)).replace("=", "")
                    )
                    run_train(load_config(preset_path(f"{a.pair}_teacher"), [*base, *t_sets, f"seed={seed}"]),
                              teachers[key])  # fmt: skip
                cfg = load_config(preset_path(f"{a.pair}_student"), [*base, *s_sets, f"seed={seed}"])
                run_distill(cfg, teachers[key], run)
            r, tasks = run_evaluate({name: run}, seed=seed, split="test")
            res["models"][name] = r["models"][name]
        per_seed.append(res)
        print(f"seed {seed} done at {time.perf_counter() - t0:.0f} s", flush=True)
    metric = main_metric(tasks)
    lines = [f"{a.pair}: test split, seeds {seeds}, {metric}", ""]
    summary = aggregate(per_seed, metric)
    lines.append(format_summary({"models": summary["models"]}, metric))
    lines += ["", "| variant − baseline-md | mean over subsets | subsets won | sensor-dropout rates won |",
              "|---|---:|---:|---:|"]  # fmt: skip
    paired = {}
    for name in names[1:]:
        two = [{"models": {"student": s["models"][name], "baseline-md": s["models"]["baseline-md"]}} for s in per_seed]
        d = aggregate(two, metric)["student_minus_baseline_md"]
        paired[name] = d
        lines.append(f"| {name} | {d['mean_over_subsets']['mean']:+.1f} ± {d['mean_over_subsets']['std']:.1f} | "
                     f"{d['subsets']['student_wins']}/{d['subsets']['of']} | "
                     f"{d['sensor_dropout']['student_wins']}/{d['sensor_dropout']['of']} |")  # fmt: skip
    report = {"pair": a.pair, "seeds": seeds, "metric": metric, "split": "test", "summary": summary,
              "paired": paired, "per_seed": per_seed}  # fmt: skip
    if a.figure5:
        fig5 = run_sweep(f"{a.pair}_teacher", {"modality_dropout.p": ["0", "0.25", "0.5", "0.75"]}, out / "figure5",
                         seeds=tuple(seeds), overrides=base, split="test")  # fmt: skip
        report["figure5"] = {k: fig5[k] for k in ("ranked", "summary")}
        lines += ["", "Teacher trained at modality-dropout rate p (Figure 5), test split:", "",
                  fig5["markdown"].split("\n\nbest on")[0]]  # fmt: skip
    lines.append(f"\n{time.perf_counter() - t0:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
