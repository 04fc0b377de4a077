"""Two lanes of work (karmma.experiments.lanes): the second runs in another process with half the threads,
its logs and errors come back, and teacher/baselines trained in two lanes equal those trained one
after the other at the same thread count."""

import functools
import logging
import os
import time

import pytest
import torch

from karmma.errors import DataError
from karmma.experiments.comparison import run_comparison
from karmma.experiments.lanes import run_two_lanes
from karmma.io.checkpoint import load_model


def _where(tag: str) -> tuple[int, int]:
    logging.getLogger("karmma.test_lanes").warning("lane %s reporting", tag)
    return os.getpid(), torch.get_num_threads()


def _fail() -> None:
    raise DataError("sample s9_t1: no skeleton file; re-extract it")


def _sleep() -> None:
    time.sleep(300)


def test_second_lane_runs_elsewhere_with_half_the_threads_and_logs_here(caplog):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        caplog.set_level(logging.INFO)
        here, (pid, threads) = run_two_lanes(lambda: torch.get_num_threads(), functools.partial(_where, "b"))
        assert here == 1 and threads == 1 and pid != os.getpid()
        assert torch.get_num_threads() == 2  # restored
        assert "lane b reporting" in caplog.text  # through this process's handlers
        assert run_two_lanes(lambda: 1, functools.partial(_where, "c"), lanes=1) == (1, (os.getpid(), 2))
    finally:
        torch.set_num_threads(before)


def test_an_error_in_either_lane_reaches_the_caller():
    with pytest.raises(DataError, match="sample s9_t1: no skeleton file"):
        run_two_lanes(lambda: 1, _fail)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="here failed"):
        run_two_lanes(lambda: (_ for _ in ()).throw(ValueError("here failed")), _sleep)
    assert time.perf_counter() - t0 < 60  # the sleeping second lane was stopped, not waited for


@pytest.mark.slow
def test_two_lanes_train_the_same_models_as_one_lane(tmp_path):
    sets = ["data.synthetic.num_train=48", "data.synthetic.num_val=16", "data.synthetic.num_test=16",
            "optim.epochs=2", "optim.batch_size=16"]  # fmt: skip
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _, dirs1 = run_comparison("demo_teacher", "demo_student", tmp_path / "one", sets, repeats=1)
        torch.set_num_threads(2)  # two lanes of one thread each
        two, _, dirs2 = run_comparison("demo_teacher", "demo_student", tmp_path / "two", sets, repeats=1, lanes=2)
    finally:
        torch.set_num_threads(before)
    for name in dirs1:
        a, b = load_model(dirs1[name] / "final")[0].state_dict(), load_model(dirs2[name] / "final")[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert one["models"] == two["models"]
