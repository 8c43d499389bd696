"""The keeper's evaluations run below the job runner's other threads: the evaluation thread and
the threads torch starts for its work (OpenMP) are reniced, the runner's own threads are not."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch
from essaim.coordinator.jobrunner import EVAL_NICE, evaluation_executor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="a thread's own priority is a Linux feature (elsewhere it is left alone)")


def _nice_of_threads() -> dict[int, int]:
    return {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}


def test_evaluations_and_their_torch_threads_run_at_a_lower_priority() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    before = set(_nice_of_threads())
    threads = torch.get_num_threads()
    x = torch.randn(600, 600)

    def evaluate() -> tuple[int, int]:
        torch.set_num_threads(max(threads, 2))
        for _ in range(5):
            x @ x  # an evaluation's work: torch starts its worker threads for this thread here
        return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0)

    with evaluation_executor() as pool:
        tid, nice = pool.submit(evaluate).result(timeout=60)
        now = _nice_of_threads()
    torch.set_num_threads(threads)
    assert nice == min(base + EVAL_NICE, 19)
    started = {t: n for t, n in now.items() if t not in before}
    assert started.get(tid) == nice
    assert any(t != tid and n == nice for t, n in started.items()), started  # torch's workers inherited it
    assert os.getpriority(os.PRIO_PROCESS, 0) == base and all(now[t] == base for t in before if t in now)
