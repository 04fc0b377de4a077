"""A preset tuned for a full data set, run on a handful of samples: its warm-up is clamped to a
fifth of the run (it would never reach its learning rate), and the user is told why."""

import json
import logging

from karmma.engine.train import lr_at, warmup_steps
from tests.hostile import cli, store_args, synthetic_store


def test_warmup_is_clamped_to_a_fifth_of_the_run_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert warmup_steps(50, 1100, 323, 32) == 50  # a full run: as asked, no word
        assert not caplog.records
        assert warmup_steps(500, 20, 16, 256) == 4
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "optim.warmup_steps=500" in text and "over 4" in text
    assert "optim.batch_size=256 is larger than the 16 training samples" in text
    assert lr_at(3, 20, 1.0, 4) == 1.0 and lr_at(0, 20, 1.0, 4) == 0.25


def test_the_epic_schedule_learns_on_sixteen_samples(tmp_path, capsys, caplog):
    store = synthetic_store(tmp_path / "small.h5", num_train=16, num_val=8)
    with caplog.at_level(logging.WARNING):
        rc, _, err = cli(capsys, "train", "--config", "demo_teacher", "--run-dir", tmp_path / "run",
                         "--set", "optim.epochs=30", "--set", "optim.batch_size=256", "--set", "optim.warmup_steps=500",
                         "--set", "optim.lr=0.001", "--no-progress", *store_args(store))  # fmt: skip
    assert rc == 0, err
    assert "warming up over 6" in caplog.text and "larger than the 16 training samples" in caplog.text
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]  # with 500 warm-up steps it stayed flat
