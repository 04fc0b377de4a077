"""``karmma fit-recipe``: candidates tried on the validation split within a budget; the chosen
configs written as YAML that loads back to exactly the chosen runs' configs."""

import dataclasses
import json

import numpy as np
import pytest

from karmma.cli.main import main
from karmma.config import load_config
from karmma.data.store import write_store
from karmma.data.synthetic import generate
from karmma.experiments import fit_recipe
from karmma.experiments.fit_recipe import (
    CACHE,
    STUDENT_CANDIDATES,
    TEACHER_CANDIDATES,
    cache_sets,
    combined,
    data_candidates,
    image_modalities,
    run_fit_recipe,
)
from karmma.modalities import ModalitySpec
from karmma.presets import preset_path
from tests.conftest import TINY_SYNTH


def _stores(tmp_path):
    data = generate(TINY_SYNTH)
    for split in ("train", "val"):
        write_store(tmp_path / f"{split}.h5", {fs: data[split][fs] for fs in ("teacher", "student")})
    return [f"data.train={tmp_path / 'train.h5'}", f"data.val={tmp_path / 'val.h5'}", "optim.epochs=1",
            "optim.batch_size=32"]  # fmt: skip


def test_every_candidate_within_the_budget_and_the_chosen_configs_load(tmp_path, capsys):
    sets = _stores(tmp_path)
    argv = ["fit-recipe", "--out", str(tmp_path / "r"), "--budget-minutes", "30", "--no-progress"]
    assert main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "recipe.json").read_text())
    rows = report["candidates"]
    both = combined([r for r in rows if r["role"] == "teacher" and r["candidate"] != "combined"])
    tried = [n for n, _ in TEACHER_CANDIDATES] + ["combined"] * (both is not None) + [n for n, _ in STUDENT_CANDIDATES]
    assert [r["candidate"] for r in rows] == tried
    assert report["split"] == "val" and "mean over subsets" in out and "**yes**" in out
    best = max((r for r in report["candidates"] if r["role"] == "teacher"), key=lambda r: r["score"])
    assert report["chosen"]["teacher"] == best["candidate"]
    for role, config in (("teacher", "teacher"), ("student", "student")):
        row = next(r for r in report["candidates"] if r["role"] == role and r["candidate"] == report["chosen"][role])
        written = load_config(tmp_path / "r" / f"{role}.yaml")
        assert written == load_config(preset_path(config), [*sets, *row["overrides"]])
    # the students ran with the teacher-logit cache (a speed setting: the store's cache fits in memory)
    assert all(CACHE in r["overrides"] for r in rows if r["role"] == "student")
    assert load_config(tmp_path / "r" / "student.yaml").distill.cache_teacher_logits and CACHE in out
    # a second call resumes every run: nothing is trained again, the same choice
    again = run_fit_recipe(out=tmp_path / "r", overrides=sets, budget_minutes=30)
    assert again["chosen"] == report["chosen"]


def test_the_students_cache_the_teachers_logits_only_where_the_exact_cache_fits_in_memory():
    info = {"num_samples": 1000, "modalities": ["a", "b", "c"], "tasks": {"action": 100}}  # 2.8 MB dense
    student = load_config(preset_path("student"))
    assert not student.distill.cache_teacher_logits and cache_sets(student, info) == [CACHE]
    assert cache_sets(student, None) == []  # not a store: nothing known of its size
    small = dataclasses.replace(student, distill=dataclasses.replace(student.distill, cache_memory_mb=1))
    assert cache_sets(small, info) == []  # it would go to disk, as float16
    assert cache_sets(load_config(preset_path("student"), ["distill.cache_teacher_logits=true"]), info) == []


def test_a_short_budget_tries_the_first_of_each_role_only(tmp_path, capsys):
    report = run_fit_recipe(out=tmp_path / "r", overrides=_stores(tmp_path), budget_minutes=1e-4)
    assert [r["candidate"] for r in report["candidates"]] == ["base", "alpha0.5_T4"]
    assert (tmp_path / "r" / "teacher.yaml").is_file() and (tmp_path / "r" / "student.yaml").is_file()
    # the same folder with other settings: refused, in fit-recipe's terms, and nothing overwritten
    sets = [*_stores(tmp_path), "model.dropout=0.1"]
    argv = ["fit-recipe", "--out", str(tmp_path / "r"), "--budget-minutes", "1e-4", "--no-progress"]
    before = (tmp_path / "r" / "teacher.yaml").read_text()
    assert main([*argv, *(a for s in sets for a in ("--set", s))]) == 2
    assert "give fit-recipe another --out" in capsys.readouterr().err
    assert (tmp_path / "r" / "teacher.yaml").read_text() == before


def test_it_refuses_a_run_without_a_validation_split(tmp_path, capsys):
    sets = _stores(tmp_path)[:1] + ["data.val=null"]
    assert main(["fit-recipe", "--out", str(tmp_path / "r"), *(a for s in sets for a in ("--set", s))]) == 2
    assert "validation split" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_image_tokens_get_the_cnn_candidate_decided_from_the_store(tmp_path):
    sets = {"teacher": [{"name": "depth", "num_tokens": 3, "dim": 3 * 32 * 32}, {"name": "imu", "num_tokens": 8,
            "dim": 3 * 16 * 16}, {"name": "small", "num_tokens": 1, "dim": 3 * 8 * 8}]}  # fmt: skip
    meta = {"feature_sets": sets, "extra": {"clip_tokens": ["depth", "small"]}}
    assert image_modalities(meta) == ["depth"]  # imu: time-span tokens; small: under 16 x 16
    assert image_modalities({"feature_sets": sets}) == []  # a store that records no whole-clip tokens
    _stores(tmp_path)  # the synthetic store: sequences only, the fixed candidates
    assert data_candidates(tmp_path / "train.h5") == TEACHER_CANDIDATES


def test_combined_takes_every_candidate_that_beat_base_the_best_value_last():
    row = lambda name, s, sets: {"candidate": name, "score": s, "overrides": sets}  # noqa: E731
    rows = [row("base", 50, []), row("paper", 49, ["recipe=paper"]), row("small", 52, ["model.dim=64", "x=1"]),
            row("deep", 55, ["model.dim=256", "model.depth=3"])]  # fmt: skip
    assert combined(rows) == ["x=1", "model.dim=256", "model.depth=3"]
    assert combined(rows[:3]) is None  # one better than base: nothing to combine


def _image_stores(tmp_path):
    """The tiny synthetic stores with rgb replaced by one whole-clip 3 x 16 x 16 image per clip."""
    data, rng = generate(TINY_SYNTH), np.random.default_rng(0)
    for split in ("train", "val"):
        sets = {}
        for fs in ("teacher", "student"):
            d = data[split][fs]
            specs = [ModalitySpec("rgb", 1, 3 * 16 * 16) if s.name == "rgb" else s for s in d.specs]
            image = rng.standard_normal((len(d), 1, 3 * 16 * 16)).astype(np.float32)
            features = {**d.features, "rgb": image * d.present[:, :1, None]}
            sets[fs] = dataclasses.replace(d, specs=specs, features=features, clip_tokens=("rgb",), checksums=None)
        write_store(tmp_path / f"{split}.h5", sets)
    return [f"data.train={tmp_path / 'train.h5'}", f"data.val={tmp_path / 'val.h5'}", "optim.epochs=1",
            "optim.batch_size=32"]  # fmt: skip


@pytest.mark.parametrize("kept", [True, False])
def test_the_image_cnn_is_judged_on_its_modality_alone_and_what_follows_builds_on_it(tmp_path, monkeypatch, kept):
    sets = _image_stores(tmp_path)
    monkeypatch.setattr(fit_recipe, "TEACHER_CANDIDATES", [*TEACHER_CANDIDATES[:2], ("small", ["model.dim=64"])])
    monkeypatch.setattr(fit_recipe, "STUDENT_CANDIDATES", STUDENT_CANDIDATES[:1])
    alone = iter([50.0, 60.0 if kept else 40.0, 45.0, 45.0, 45.0])  # base, image_cnn, then the rest
    monkeypatch.setattr(fit_recipe, "alone", lambda *a: next(alone))
    report = run_fit_recipe(out=tmp_path / "r", overrides=sets, budget_minutes=30)
    cnn = ["model.encoders.rgb=motion_map_cnn"]
    rows = {r["candidate"]: r for r in report["candidates"] if r["role"] == "teacher"}
    assert list(rows)[:4] == ["base", "image_cnn", "paper", "small"]
    assert rows["image_cnn"]["overrides"] == cnn and rows["image_cnn"]["kept"] is kept
    assert rows["paper"]["overrides"] == ([*cnn, "recipe=paper"] if kept else ["recipe=paper"])
    assert report["reference"] == ("image_cnn" if kept else "base")
    chosen = rows[report["chosen"]["teacher"]]
    if kept:  # base is out of the choice, and the student is distilled with the CNN too
        assert chosen["candidate"] != "base" and set(cnn) <= set(chosen["overrides"])
        assert load_config(tmp_path / "r" / "student.yaml").model.encoders["rgb"] == "motion_map_cnn"
    else:
        assert chosen["score"] == max(r["score"] for r in rows.values())
    md = (tmp_path / "r" / "recipe.md").read_text()
    assert "judged on the image modalities alone" in md and ("| small + image_cnn |" in md) is kept


def test_each_role_is_budgeted_by_its_own_longest_candidate(tmp_path, monkeypatch):
    """Teachers of 600 s do not keep out students of 100 s: 30 minutes hold two teachers and all
    three students (with the longest candidate of either role as the estimate, one student)."""
    from types import SimpleNamespace

    clock = [0.0]

    def spend(seconds):
        def run(*args, **kwargs):
            clock[0] += seconds

        return run

    def evaluate(runs, **kwargs):
        subsets = {"rgb": {"action_top1": 50.0}, "rgb+audio": {"action_top1": 60.0}}
        return {"models": {name: {"subsets": subsets} for name in runs}}, ["action"]

    monkeypatch.setattr(fit_recipe, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(fit_recipe, "TEACHER_CANDIDATES", TEACHER_CANDIDATES[:2])
    monkeypatch.setattr(fit_recipe, "run_train", spend(600.0))
    monkeypatch.setattr(fit_recipe, "run_distill", spend(100.0))
    monkeypatch.setattr(fit_recipe, "run_evaluate", evaluate)
    report = run_fit_recipe(out=tmp_path / "r", overrides=_stores(tmp_path), budget_minutes=30)
    assert [r["candidate"] for r in report["candidates"]] == ["base", "paper", *(n for n, _ in STUDENT_CANDIDATES)]
    assert report["seconds"] == 1500.0
