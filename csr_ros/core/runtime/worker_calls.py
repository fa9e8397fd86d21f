"""Calls handed to the model worker: run ``fn()`` on the thread that owns the engine, at a frame
boundary, and get the result through a :class:`concurrent.futures.Future` (no torch, no ROS).

The engine is not thread-safe; a ROS service (compact now, reset, the entity memory, the
state's text) or a closed-set scoring must not touch it from an executor thread. It queues a
call here and waits on the future; :meth:`WorkerCalls.run` (the scheduler, at the start of each
frame) runs every queued call in order.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable


class WorkerCalls:
    """A thread-safe queue of calls for one worker thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._calls: deque[tuple[Callable[[], object], Future]] = deque()

    def submit(self, fn: Callable[[], object]) -> Future:
        """Queue ``fn``; its result (or exception) goes to the returned Future."""
        fut: Future = Future()
        with self._lock:
            self._calls.append((fn, fut))
        return fut

    def run(self) -> int:
        """Run every queued call (the worker thread); returns how many ran."""
        with self._lock:
            calls, self._calls = list(self._calls), deque()
        ran = 0
        for fn, fut in calls:
            if not fut.set_running_or_notify_cancel():  # the caller gave up
                continue
            ran += 1
            try:
                fut.set_result(fn())
            except Exception as e:  # noqa: BLE001 - the caller gets it
                fut.set_exception(e)
        return ran

    def fail_all(self, why: str) -> None:
        """Fail every queued call (the worker stops)."""
        with self._lock:
            calls, self._calls = list(self._calls), deque()
        for _, fut in calls:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError(why))
