import json

import pytest

from karmma.cli import main


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--repeats", "1", "--no-progress",
            "--set", "data.synthetic.num_train=200", "--set", "data.synthetic.num_val=60"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in ("teacher", "student", "baseline-ce", "baseline-md"):
        assert name in out
    assert "| rgb+flow+audio |" in out and "| 90% |" in out
    results = json.loads((tmp_path / "demo" / "eval" / "results.json").read_text())
    assert len(results["models"]["student"]["subsets"]) == 7
    assert (tmp_path / "demo" / "eval" / "sensor_dropout.png").stat().st_size > 1000
    # evaluate + cost on the demo's runs, through the CLI
    runs = [str(tmp_path / "demo" / k) for k in ("teacher", "student")]
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
