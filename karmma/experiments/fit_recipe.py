"""``karmma fit-recipe``: an automatic recipe for data no recipe was tuned on — a small, fixed set
of candidate settings tried on the *validation* split only, within a time budget; writes the
chosen teacher and student configs with their validation table.

Candidates, tried in this order (the most likely first, so that a short budget still tries them):

teacher (each on top of the teacher config, ``recipe: safe`` unless it says otherwise)
    ``base``         the config as given;
    ``image_cnn``    only for a store with image tokens (each token a whole-clip 3 x S x S image,
                     S >= 16, e.g. depth motion maps): those modalities through a small CNN trained
                     from scratch (``motion_map_cnn``) rather than a temporal encoder of flat vectors.
                     An encoder serves its own modality, so it is judged there: kept when those
                     modalities *alone* score higher on validation than with ``base`` (the fused
                     score saturates first on small data: on UTD-MHAD's 108 validation clips five
                     candidates scored 100% with every sensor, while depth alone went 62 -> 75
                     with the CNN). Once kept, every later candidate is tried on top of it and
                     ``base`` is out of the choice;
    ``paper``        ``recipe=paper``: the paper's plain model, no late fusion;
    ``regularised``  fusion dropout 0.3, weight decay 0.1, input noise 0.1, time warp 0.2;
    ``dropout_0.6``  modality dropout p 0.6 (more training on lone sensors);
    ``small``        fusion width 64, one encoder layer;
    ``deep``         three encoder layers, fusion depth 3;
    ``combined``     every candidate above that beat the reference (``base``, or ``image_cnn`` where
                     kept), together (the better one's value where two set the same key); tried only
                     when two or more beat it;
student (on top of the student config with the chosen teacher's settings, distilled from it)
    ``alpha0.5_T4``, ``alpha0.3_T4``, ``alpha0.7_T2``: the distillation weight and temperature.
    Each with the teacher-logit cache (``distill.cache_teacher_logits=true``) where the student
    config has none and the dense float32 cache of the train store fits in
    ``distill.cache_memory_mb``: a speed setting, not a candidate — the frozen teacher's logits are
    computed once per sample and subset instead of 1 + M times a step (``recipe: safe`` distils
    every unimodal head), the same maths up to float rounding; on UTD-MHAD a candidate took
    170 s instead of 245 s. The chosen ``student.yaml`` keeps it.

Score (the same for every candidate): the mean of the all-modality accuracy and the accuracy
averaged over every modality subset, on the validation split — what a user gets with every
sensor, and how it degrades. One seed (``seed``). The first candidate of each role always runs;
another starts only while the budget allows one more of the longest of its role so far (a student,
distilled from a cached teacher, costs other than a teacher). Every run folder is
kept and resumed.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from karmma.config import ExperimentConfig, load_config, load_yaml
from karmma.data.store import store_info
from karmma.engine.runs import run_distill, run_evaluate, run_train
from karmma.errors import ConfigError, RunMismatchError
from karmma.evaluation.evaluate import main_metric
from karmma.modalities import subset_name
from karmma.models.motion_maps import image_side
from karmma.outputs import write_json_atomic, write_text_atomic
from karmma.presets import preset_path
from karmma.tasks.teacher_logits import fits_in_memory

log = logging.getLogger(__name__)

TEACHER_CANDIDATES: list[tuple[str, list[str]]] = [
    ("base", []),
    ("paper", ["recipe=paper"]),
    (
        "regularised",
        ["model.dropout=0.3", "optim.weight_decay=0.1", "augment.input_noise=0.1", "augment.time_warp=0.2"],
    ),  # fmt: skip
    ("dropout_0.6", ["modality_dropout.p=0.6"]),
    ("small", ["model.dim=64", "model.head_hidden=64", "model.encoder_layers=1"]),
    ("deep", ["model.encoder_layers=3", "model.depth=3"]),
]
STUDENT_CANDIDATES: list[tuple[str, list[str]]] = [
    ("alpha0.5_T4", ["distill.alpha=0.5", "distill.temperature=4.0"]),
    ("alpha0.3_T4", ["distill.alpha=0.3", "distill.temperature=4.0"]),
    ("alpha0.7_T2", ["distill.alpha=0.7", "distill.temperature=2.0"]),
]
CACHE = "distill.cache_teacher_logits=true"


def image_modalities(meta: dict, feature_set: str = "teacher") -> list[str]:
    """The store's modalities whose every token is a whole-clip 3 x S x S image (S >= 16): what
    ``motion_map_cnn`` reads. Decided from the store's own record, not from its name."""
    whole = set((meta.get("extra") or {}).get("clip_tokens") or ())
    specs = (meta.get("feature_sets") or {}).get(feature_set, [])
    return [s["name"] for s in specs if s["name"] in whole and image_side(int(s["dim"])) is not None]


def data_candidates(train_store: str | Path | None) -> list[tuple[str, list[str]]]:
    """The teacher candidates for this store: ``image_cnn`` after ``base`` when it has image tokens."""
    return candidates_for(image_modalities(store_info(train_store)) if train_store else [])


def candidates_for(images: list[str]) -> list[tuple[str, list[str]]]:
    """The teacher candidates, with ``image_cnn`` for the modalities ``images`` where there are any."""
    if not images:
        return list(TEACHER_CANDIDATES)
    return [TEACHER_CANDIDATES[0], ("image_cnn", [f"model.encoders.{m}=motion_map_cnn" for m in images]),
            *TEACHER_CANDIDATES[1:]]  # fmt: skip


def cache_sets(student: ExperimentConfig, info: dict | None) -> list[str]:
    """The student candidates' speed setting: the teacher-logit cache, where ``student`` has none
    (nor out-of-fold logits) and the dense float32 cache of the store ``info`` describes fits in
    memory (so that it is exact)."""
    d = student.distill
    if info is None or d.cache_teacher_logits or d.teacher_logits != "teacher":
        return []
    n, m = int(info.get("num_samples", 0)), len(info.get("modalities", ()))
    return [CACHE] if fits_in_memory(n, m, info.get("tasks", {}), d.cache_memory_mb) else []


def alone(subsets: dict, metric: str, modalities: list[str]) -> float:
    """The mean accuracy of ``modalities``, each alone (its one-modality subset)."""
    return float(np.mean([subsets[subset_name((m,))][metric] for m in modalities]))


def combined(rows: list[dict], reference: str = "base") -> list[str] | None:
    """The overrides of every teacher candidate that beat the ``reference`` candidate, applied from
    the least to the most useful (the best one's value wins a shared key); None unless two or more
    beat it."""
    ref = next(r for r in rows if r["candidate"] == reference)
    better = sorted((r for r in rows if r["score"] > ref["score"] and r["overrides"] != ref["overrides"]),
                    key=lambda r: r["score"])  # fmt: skip
    if len(better) < 2:
        return None
    sets: dict[str, str] = {}
    for r in better:
        for item in r["overrides"]:
            key = item.split("=", 1)[0]
            sets.pop(key, None)
            sets[key] = item
    return list(sets.values())


def score(subsets: dict, metric: str) -> tuple[float, float, float]:
    """(score, all-modality accuracy, mean over subsets) of one model's per-subset results."""
    values = [v[metric] for v in subsets.values()]
    full, mean = float(values[-1]), float(np.mean(values))
    return (full + mean) / 2.0, full, mean


@contextmanager
def other_out(out: Path) -> Iterator[None]:
    """A candidate's run folder that holds another run (other ``--set`` values, or a karmma whose
    rule built the candidate otherwise): say so in fit-recipe's terms."""
    try:
        yield
    except RunMismatchError as e:
        raise RunMismatchError(f"{e}. fit-recipe resumes the candidates in {out}, and this one was tried there with "
                              "other settings (other --set values or an earlier karmma): give fit-recipe another "
                              "--out") from e  # fmt: skip


def merged_yaml(config: str | Path, overrides: list[str]) -> dict[str, Any]:
    """The config file's keys with ``overrides`` applied, as :func:`karmma.config.load_config` applies them."""
    data = copy.deepcopy(load_yaml(preset_path(config)))
    for item in overrides:
        key, raw = item.split("=", 1)
        node, parts = data, key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def run_fit_recipe(
    teacher_config: str | Path = "teacher",
    student_config: str | Path = "student",
    out: str | Path = "runs/recipe",
    overrides: list[str] | None = None,
    budget_minutes: float = 30.0,
    seed: int = 0,
    repeats: int = 1,
    progress: bool = False,
) -> dict:
    """Try the candidates (module docstring) on the validation split within ``budget_minutes``;
    write ``teacher.yaml``, ``student.yaml``, ``recipe.md`` and ``recipe.json`` in ``out``."""
    if not budget_minutes > 0:
        raise ConfigError(f"--budget-minutes {budget_minutes}: give a positive number of minutes")
    out, base = Path(out), [*(overrides or []), f"seed={seed}"]
    given = load_config(preset_path(teacher_config), base).data
    info = store_info(given.train) if given.kind == "store" and given.train else None
    images = image_modalities(info) if info else []
    teacher_cands = candidates_for(images)
    for config, cands in ((teacher_config, teacher_cands), (student_config, STUDENT_CANDIDATES)):
        for _, sets in cands:  # every candidate parses (and has its data) before anything trains
            cfg = load_config(preset_path(config), [*base, *sets])
            if cfg.data.kind == "store" and not (cfg.data.val or cfg.data.val_fraction):
                raise ConfigError("fit-recipe chooses on a validation split: give data.val (a store) or "
                                  "data.val_fraction")  # fmt: skip
    t0, metric = time.perf_counter(), "action_top1"
    longest = {"teacher": 0.0, "student": 0.0}  # seconds of the longest training of each role
    rows: list[dict[str, Any]] = []

    def affordable(role: str, name: str) -> bool:  # the first of each role (none timed yet) always runs
        left = budget_minutes * 60 - (time.perf_counter() - t0)
        if longest[role] and left < longest[role]:
            log.warning("fit-recipe: %s %s not tried: %.0f s of the budget left, the longest %s took %.0f s",
                        role, name, left, role, longest[role])  # fmt: skip
            return False
        return True

    def evaluate(role: str, name: str, run: Path, sets: list[str], seconds: float) -> None:
        nonlocal metric
        res, tasks = run_evaluate({name: run}, seed=seed, repeats=repeats, split="val")
        metric = main_metric(tasks)
        subsets = res["models"][name]["subsets"]
        s, full, mean = score(subsets, metric)
        rows.append({"role": role, "candidate": name, "overrides": sets, "score": s, "all_modalities": full,
                     "subset_mean": mean, "seconds": seconds, "run": str(run)})  # fmt: skip
        if images and role == "teacher":
            rows[-1]["images_alone"] = alone(subsets, metric, images)
        log.info("fit-recipe: %s %s: score %.1f (all %.1f, subsets %.1f) in %.0f s", role, name, s, full, mean, seconds)

    def train(name: str, sets: list[str]) -> None:
        a = time.perf_counter()
        with other_out(out):
            run_train(load_config(preset_path(teacher_config), [*base, *sets]), out / "teacher" / name,
                      progress=progress)  # fmt: skip
        longest["teacher"] = max(longest["teacher"], time.perf_counter() - a)
        evaluate("teacher", name, out / "teacher" / name, sets, time.perf_counter() - a)

    reference: dict[str, Any] | None = None  # the row every later candidate builds on: base, or image_cnn if kept
    for name, sets in teacher_cands:
        if not affordable("teacher", name):
            break
        train(name, [*(reference["overrides"] if reference else []), *sets])  # base's overrides are none
        if name == "base":
            reference = rows[-1]
        elif name == "image_cnn":
            assert reference is not None
            kept = rows[-1]["images_alone"] > reference["images_alone"]
            log.info("fit-recipe: image_cnn %s: %s alone %.1f against %.1f with base", "kept" if kept else "not kept",
                     "+".join(images), rows[-1]["images_alone"], reference["images_alone"])  # fmt: skip
            rows[-1]["kept"] = kept
            reference = rows[-1] if kept else reference
    assert reference is not None
    eligible = [r for r in rows if set(reference["overrides"]) <= set(r["overrides"])]
    both = combined(eligible, reference["candidate"])
    if both is not None and affordable("teacher", "combined"):
        train("combined", both)
        eligible.append(rows[-1])
    best_t = max(eligible, key=lambda r: r["score"])
    fast = cache_sets(load_config(preset_path(student_config), [*base, *best_t["overrides"]]), info)
    for name, sets in STUDENT_CANDIDATES:
        if not affordable("student", name):
            break
        a, run = time.perf_counter(), out / "student" / name
        every = [*best_t["overrides"], *sets, *fast]
        cfg = load_config(preset_path(student_config), [*base, *every])
        with other_out(out):
            run_distill(cfg, best_t["run"], run, progress=progress)
        longest["student"] = max(longest["student"], time.perf_counter() - a)
        evaluate("student", name, run, every, time.perf_counter() - a)
    students = [r for r in rows if r["role"] == "student"]
    chosen = {"teacher": best_t, "student": max(students, key=lambda r: r["score"])}
    for role, config in (("teacher", teacher_config), ("student", student_config)):
        data = merged_yaml(config, [*(overrides or []), *chosen[role]["overrides"]])
        head = f"# karmma fit-recipe's choice on the validation split: {role} {chosen[role]['candidate']}\n"
        write_text_atomic(out / f"{role}.yaml", head + yaml.safe_dump(data, sort_keys=False))
    md = format_recipe(rows, chosen, metric, time.perf_counter() - t0, budget_minutes)
    report = {"metric": metric, "split": "val", "seed": seed, "budget_minutes": budget_minutes,
              "seconds": time.perf_counter() - t0, "candidates": rows, "reference": reference["candidate"],
              "chosen": {k: v["candidate"] for k, v in chosen.items()}}  # fmt: skip
    write_text_atomic(out / "recipe.md", md + "\n")
    write_json_atomic(out / "recipe.json", report)
    return {**report, "markdown": md}


def format_recipe(rows: list[dict], chosen: dict, metric: str, seconds: float, budget: float) -> str:
    lines = [f"fit-recipe on the validation split ({metric}; score = mean of all modalities and of the mean over "
             f"subsets), {seconds / 60:.1f} of {budget:g} minutes", "",
             "| role | candidate | score | all modalities | mean over subsets | seconds | chosen |",
             "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    cnn = next((set(r["overrides"]) for r in rows if r["candidate"] == "image_cnn" and r["kept"]), None)
    for r in rows:
        mark = "**yes**" if chosen.get(r["role"]) is r else ""
        on = " + image_cnn" if cnn and r["role"] == "teacher" and r["candidate"] != "image_cnn" and cnn <= set(
            r["overrides"]) else ""  # fmt: skip
        lines.append(f"| {r['role']} | {r['candidate']}{on} | {r['score']:.1f} | {r['all_modalities']:.1f} | "
                     f"{r['subset_mean']:.1f} | {r['seconds']:.0f} | {mark} |")  # fmt: skip
    base = next((r for r in rows if r["candidate"] == "base"), None)
    for r in rows:
        if r["candidate"] == "image_cnn" and base is not None:
            verdict = "kept: every later teacher candidate is tried with it" if r["kept"] else "not kept"
            lines += ["", f"image_cnn, judged on the image modalities alone: {r['images_alone']:.1f} against "
                      f"{base['images_alone']:.1f} with base, {verdict}"]  # fmt: skip
    if any(CACHE in r["overrides"] for r in rows if r["role"] == "student"):
        lines += ["", f"students with {CACHE}: the teacher's logits computed once (speed; the same maths)"]
    return "\n".join(lines)
