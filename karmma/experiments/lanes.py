"""Two lanes of work at once: one callable in a second (spawned) process while this process runs
another, the CPU threads split between them.

Small models on a few CPU cores use extra threads poorly: on UTD-MHAD (2 cores) one training with
2 threads took 113 s and with 1 thread 159 s, and two 1-thread trainings side by side took 160 s
each — two trainings in 160 s instead of 226 s. ``karmma utd-mhad`` runs teacher -> student in one
lane and the two baselines in the other. Each lane's results depend only on its own thread count,
so a run is reproducible; another thread count changes the rounding, which over a training run
can move single accuracies by about a point.

The second process logs through this process's handlers (a queue), so ``-v`` and the progress
lines cover both lanes; on a terminal only this process draws progress bars.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

A = TypeVar("A")
B = TypeVar("B")
_LEVELS = ("", "karmma", "karmma.progress")  # logger levels the second process copies


def auto_lanes() -> int:
    """2 where the machine has at least 2 cores and no process group is running, else 1."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return 2 if (os.cpu_count() or 1) >= 2 and not distributed else 1


def _init_lane(queue, levels: dict[str, int], threads: int) -> None:
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    torch.set_num_threads(threads)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_two_lanes(here: Callable[[], A], beside: Callable[[], B], lanes: int = 2) -> tuple[A, B]:
    """``(here(), beside())``. With ``lanes=2``, ``beside`` (picklable: a module-level function or a
    ``functools.partial`` of one) runs in a second process while this one runs ``here``, each with
    half of this process's threads. An error in ``beside`` is raised here once ``here`` is done;
    an error or interrupt in ``here`` stops ``beside`` (its runs resume from their checkpoints).
    With ``lanes=1``, one after the other in this process."""
    if lanes < 2:
        return here(), beside()
    threads = max(1, torch.get_num_threads() // 2)
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    # The second lane's records go where this process's would (Python's last resort if nothing is set up).
    handlers = logging.getLogger().handlers or [h for h in (logging.lastResort,) if h]
    listener = logging.handlers.QueueListener(queue, *handlers, respect_handler_level=True)
    levels = {name: logging.getLogger(name or None).level for name in _LEVELS}
    listener.start()
    pool = spawn.Pool(1, _init_lane, (queue, levels, threads))
    try:
        log.info("two lanes, %d thread(s) each: %s here, %s in a second process", threads,
                 getattr(here, "__name__", "work"), getattr(beside, "func", beside).__name__)  # fmt: skip
        pending = pool.apply_async(beside)
        with _threads(threads):
            first = here()
        second = pending.get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()
        listener.stop()
    return first, second
