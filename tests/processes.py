"""Helpers for tests that check the latency child process comes and goes (core and ui tests)."""

from __future__ import annotations

import multiprocessing
import os

from effstudio.core.latency.isolated import PROCESS_NAME


def measuring_children() -> list[multiprocessing.Process]:
    """The live latency-measuring child processes of this process."""
    return [p for p in multiprocessing.active_children() if p.name == PROCESS_NAME]


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
