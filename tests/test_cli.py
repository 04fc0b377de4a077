import json

import pytest

from karmma.cli import main


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--repeats", "1", "--no-progress",
            "--seeds", "0,1", "--set", "data.synthetic.num_train=200", "--set", "data.synthetic.num_val=60",
            "--set", "data.synthetic.num_test=50"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in ("teacher", "student", "baseline-ce", "baseline-md"):
        assert name in out
    assert "| rgb+flow+audio |" in out and "| 90% |" in out and "student − baseline-md" in out
    assert "synthetic test split (50 samples" in out and "seeds [0, 1]" in out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["split"] == "test" and summary["seeds"] == [0, 1]
    cell = summary["summary"]["models"]["student"]["subsets"]["rgb"]
    assert len(cell["values"]) == 2 and cell["mean"] == pytest.approx(sum(cell["values"]) / 2)
    paired = summary["summary"]["student_minus_baseline_md"]
    assert paired["subsets"]["of"] == 7 and paired["sensor_dropout"]["of"] == 10
    per_seed = json.loads((tmp_path / "demo" / "seed1" / "eval" / "results.json").read_text())
    assert per_seed["split"] == "test" and per_seed["models"]["student"]["subsets"]["rgb"]["count"] == 50
    assert (tmp_path / "demo" / "sensor_dropout.png").stat().st_size > 1000
    runs = [str(tmp_path / "demo" / "seed0" / k) for k in ("teacher", "student")]
    # evaluate + cost on the demo's runs, through the CLI
    assert (
        main(
            [
                "evaluate",
                *runs,
                "--names",
                "teacher,student",
                "--out",
                str(tmp_path / "ev"),
                "--repeats",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["cost", *runs, "--names", "teacher,student", "--out", str(tmp_path / "cost"), "--repeats", "2"]) == 0
    cost = json.loads((tmp_path / "cost" / "cost.json").read_text())
    assert cost["student_vs_teacher"]["flops"] <= 0.5


def test_cli_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {epochs: 1, lr_typo: 2}\n")
    assert main(["train", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "lr_typo" in capsys.readouterr().err
    assert main(["train", "--config", "no_such_preset", "--run-dir", str(tmp_path / "r")]) == 2
    assert "presets" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.h5")]) == 2


def test_presets_listed(capsys):
    assert main(["presets"]) == 0
    assert "demo_teacher" in capsys.readouterr().out
