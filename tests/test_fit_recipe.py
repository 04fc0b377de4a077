"""``karmma fit-recipe``: candidates tried on the validation split within a budget; the chosen
configs written as YAML that loads back to exactly the chosen runs' configs."""

import json

from karmma.cli.main import main
from karmma.config import load_config
from karmma.data.store import write_store
from karmma.data.synthetic import generate
from karmma.experiments.fit_recipe import STUDENT_CANDIDATES, TEACHER_CANDIDATES, run_fit_recipe
from karmma.presets import preset_path
from tests.conftest import TINY_SYNTH


def _stores(tmp_path):
    data = generate(TINY_SYNTH)
    for split in ("train", "val"):
        write_store(tmp_path / f"{split}.h5", {fs: data[split][fs] for fs in ("teacher", "student")})
    return [f"data.train={tmp_path / 'train.h5'}", f"data.val={tmp_path / 'val.h5'}", "optim.epochs=2",
            "optim.batch_size=32"]  # fmt: skip


def test_every_candidate_within_the_budget_and_the_chosen_configs_load(tmp_path, capsys):
    sets = _stores(tmp_path)
    argv = ["fit-recipe", "--out", str(tmp_path / "r"), "--budget-minutes", "30", "--no-progress"]
    assert main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "recipe.json").read_text())
    assert [r["candidate"] for r in report["candidates"]] == [n for n, _ in TEACHER_CANDIDATES + STUDENT_CANDIDATES]
    assert report["split"] == "val" and "mean over subsets" in out and "**yes**" in out
    best = max((r for r in report["candidates"] if r["role"] == "teacher"), key=lambda r: r["score"])
    assert report["chosen"]["teacher"] == best["candidate"]
    for role, config in (("teacher", "teacher"), ("student", "student")):
        row = next(r for r in report["candidates"] if r["role"] == role and r["candidate"] == report["chosen"][role])
        written = load_config(tmp_path / "r" / f"{role}.yaml")
        assert written == load_config(preset_path(config), [*sets, *row["overrides"]])
    # a second call resumes every run: nothing is trained again, the same choice
    again = run_fit_recipe(out=tmp_path / "r", overrides=sets, budget_minutes=30)
    assert again["chosen"] == report["chosen"]


def test_a_short_budget_tries_the_first_of_each_role_only(tmp_path):
    report = run_fit_recipe(out=tmp_path / "r", overrides=_stores(tmp_path), budget_minutes=1e-4)
    assert [r["candidate"] for r in report["candidates"]] == ["base", "alpha0.5_T4"]
    assert (tmp_path / "r" / "teacher.yaml").is_file() and (tmp_path / "r" / "student.yaml").is_file()


def test_it_refuses_a_run_without_a_validation_split(tmp_path, capsys):
    sets = _stores(tmp_path)[:1] + ["data.val=null"]
    assert main(["fit-recipe", "--out", str(tmp_path / "r"), *(a for s in sets for a in ("--set", s))]) == 2
    assert "validation split" in capsys.readouterr().err and not (tmp_path / "r").exists()
