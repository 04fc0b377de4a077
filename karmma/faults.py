"""Fault injection for the reliability tests: ``KARMMA_FAULT=name[@N][:action]`` acts the N-th time
(default 1st) ``fault_point(name)`` is reached. Actions: ``kill`` (default: SIGKILL the process),
``interrupt`` (raise KeyboardInterrupt, as Ctrl-C does) and ``term`` (send itself SIGTERM). Inert
unless that variable is set."""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("KARMMA_FAULT")
    if not spec:
        return
    spec, _, action = spec.partition(":")
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        if action == "interrupt":
            _counts.pop(name)
            raise KeyboardInterrupt
        if action == "term":  # SIGTERM to itself, as a scheduler or `kill` stops a process
            os.kill(os.getpid(), signal.SIGTERM)
            return
        os.kill(os.getpid(), signal.SIGKILL)
