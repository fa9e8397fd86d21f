"""A plain worker thread for :class:`csr_ros.core.runtime.scheduler.FrameScheduler` (non-ROS use: the
``csr-ros bench multitask`` benchmark, scripts). The ROS node runs its own worker."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from csr_ros.core.model.device import set_thread_budget
from csr_ros.core.model.streams import use_hot_stream
from csr_ros.core.runtime.scheduler import FrameScheduler, LanguageOut

log = logging.getLogger("csr_ros.frame_loop")


class FrameLoop:
    """Runs :meth:`FrameScheduler.run_frame` in a plain thread (non-ROS use: bench, CLI).

    A frame starts every ``1 / control_rate_hz`` (or at once after an overrun); ``on_outputs``
    gets each frame's language pieces in the worker thread. ``hot_stream``: on a CUDA model the
    worker runs on the high-priority hot stream (:func:`csr_ros.core.model.streams.use_hot_stream`).
    """

    def __init__(self, scheduler: FrameScheduler, on_outputs: Callable[[list[LanguageOut]], None] | None = None,
                 threads: int = 0, name: str = "csr-frame-worker", hot_stream: bool = False):
        self.scheduler, self.on_outputs, self.threads = scheduler, on_outputs, threads
        self.hot_stream = hot_stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> "FrameLoop":
        self._thread.start()
        return self

    def _loop(self) -> None:
        set_thread_budget(self.threads)
        if self.hot_stream:
            use_hot_stream(getattr(self.scheduler.engine.backend, "device", "cpu"))
        period_s = self.scheduler.frame_period_ns / 1e9
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                outs = self.scheduler.run_frame()
                if self.on_outputs is not None:
                    self.on_outputs(outs)
                self._stop.wait(max(0.0, t0 + period_s - time.monotonic()))
        except BaseException as e:  # noqa: BLE001 - surfaced to the owner via .error
            self.error = e
            log.exception("frame loop died")

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
