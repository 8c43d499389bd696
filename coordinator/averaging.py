"""The job's averaging peer: the coordinator's full hivemind peer that takes part in every round.

Almost every volunteer sits behind a home NAT: it can dial out, nobody can dial in. hivemind runs
such a peer in client mode, and a client-mode averager only joins groups led by a peer that accepts
connections. This peer is that one: public, in every gradient round of the job with weight 0 (it
brings no samples), it reduces the parts the NAT-ed volunteers send it and sends the average back,
then applies the outer step itself, so it always holds the swarm's state. That state is what the
checkpoint keeper saves and evaluates and what newcomers download (instead of whichever volunteer
claims the newest epoch).

    loop = AveragingLoop(optimizer)     # the keeper's optimizer (build_auxiliary_optimizer)
    loop.start()
    saved = loop.submit(keeper.save)    # runs between two steps, on the loop's thread
    loop.new_rounds()                   # RoundOutcomes since the last call, for metrics and ledger
    loop.stop()

Everything that reads or replaces the state runs on this loop's thread, between two of hivemind's
steps (:meth:`submit`), so a checkpoint never sees a round half-applied and the job runner's own
loop (monitor, bans, store) never waits for a round. Used by :mod:`essaim.coordinator.jobrunner`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

logger = logging.getLogger(__name__)

ASSIST_EVERY_S = 0.1
QUIET_LOG_S = 10.0  # with no new epoch for this long, the averaging peer says what it sees
ERROR_BACKOFF_S = 2.0


class AveragingLoop:
    """Calls ``optimizer.assist()`` every ``ASSIST_EVERY_S`` seconds on a thread of its own."""

    def __init__(self, optimizer: Any, *, every_s: float = ASSIST_EVERY_S) -> None:
        self.optimizer = optimizer
        self.every_s = every_s
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._tasks: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="essaim-averaging-peer", daemon=True)
        self._seen = self._noted()
        self.last_error = ""

    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        """Take part in no round (the job is paused); :meth:`resume` undoes it. Tasks still run."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the current step; tasks not run yet are cancelled."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        while True:
            try:
                _, _, future = self._tasks.get_nowait()
            except queue.Empty:
                return
            future.cancel()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on the loop's thread between two steps (at once when it is not running)."""
        future: Future[Any] = Future()
        if not self._thread.is_alive():
            _run_task(fn, args, future)
        else:
            self._tasks.put((fn, args, future))
        return future

    def new_rounds(self) -> list[Any]:
        """The rounds this peer took part in (or failed to) since the last call, oldest first."""
        noted = self._noted()
        fresh = noted - self._seen
        self._seen = noted
        if fresh <= 0:
            return []
        rounds = self.optimizer.rounds
        return rounds[-fresh:] if fresh < len(rounds) else rounds

    def _noted(self) -> int:
        return int(getattr(self.optimizer.hv, "rounds_noted", 0))

    def _run(self) -> None:
        moved_at = time.monotonic()
        while not self._stop.wait(self.every_s):
            self._run_tasks()
            if self._paused.is_set():
                continue
            try:
                if self.optimizer.assist():
                    logger.info("the swarm reached epoch %d", self.optimizer.local_epoch)
                    moved_at = time.monotonic()
                elif time.monotonic() - moved_at > QUIET_LOG_S:
                    logger.info("averaging peer waiting: %s", self.optimizer.describe_swarm())
                    moved_at = time.monotonic()
                self.last_error = ""
            except Exception as exc:  # hivemind raises many kinds; a bad round must not end the job
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("averaging peer: %s", self.last_error)
                self._stop.wait(ERROR_BACKOFF_S)
        logger.info("averaging peer stopped at epoch %d", self.optimizer.local_epoch)

    def _run_tasks(self) -> None:
        while True:
            try:
                fn, args, future = self._tasks.get_nowait()
            except queue.Empty:
                return
            _run_task(fn, args, future)


def _run_task(fn: Callable[..., Any], args: tuple[Any, ...], future: Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args))
    except BaseException as exc:
        future.set_exception(exc)
