"""The reconciler node: its own rclpy node whose executor thread does the compaction builds.

The inference side requests a build at a frame boundary (non-blocking); this node's timer calls
:meth:`csr_ros.core.reconcile.reconciler.Reconciler.run_once`, which does the pending build (if any) in
this executor's thread and hands the result over through the reconciler's mailbox. It publishes
nothing heavy (the state it builds is shared in-process; CacheStatus reports on it).
"""

from __future__ import annotations

import threading

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter

NODE_NAME = "csr_reconciler"


class ReconcilerNode(Node):
    """Timer -> ``reconciler.run_once(should_stop)``. Never raises into its executor. Follows the
    inference node's lifecycle: :meth:`bind` at its configure, :meth:`unbind` at its cleanup
    (the running build is cancelled and waited for)."""

    def __init__(self, context, reconciler, period_s: float, stop: threading.Event,
                 callback_group=None, use_sim_time: bool = False):
        # Local arguments win over the process's global ones: launch_ros renames *every* node of
        # the process with `-r __node:=csr`; this keeps the reconciler's own name.
        super().__init__(NODE_NAME, context=context,
                         cli_args=["--ros-args", "-r", f"__node:={NODE_NAME}"],
                         parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)])
        self._stop, self._group = stop, callback_group
        self._busy = threading.Lock()  # held while a tick runs
        self.reconciler = self.timer = None
        if reconciler is not None:
            self._wire(reconciler, period_s)

    def _wire(self, reconciler, period_s: float) -> None:
        self.reconciler = reconciler
        # A steady clock: builds must go on while a simulated clock is paused.
        self.timer = self.create_timer(period_s, self._tick, callback_group=self._group,
                                       clock=Clock(clock_type=ClockType.STEADY_TIME))

    def bind(self, core, cfg) -> None:
        """The inference node was configured: build for ``core.reconciler`` (if enabled)."""
        if core.reconciler is not None:
            self._wire(core.reconciler, cfg.ros.reconciler_period_s)

    def unbind(self) -> None:
        """The inference node is cleaned up: cancel a running build, wait for it, no timer."""
        reconciler, self.reconciler = self.reconciler, None
        if reconciler is not None:
            reconciler.cancel()
        with self._busy:
            if self.timer is not None:
                self.destroy_timer(self.timer)
            self.timer = None

    def _tick(self) -> None:
        with self._busy:
            reconciler = self.reconciler
            if self._stop.is_set() or reconciler is None:
                return
            self._step(reconciler)

    def _step(self, reconciler) -> None:
        try:
            if reconciler.run_once(lambda: self._stop.is_set() or self.reconciler is None):
                self.get_logger().info(
                    f"compacted state ready ({reconciler.counters.last_rebuild_ms:.0f} ms build)")
        except Exception as e:  # noqa: BLE001 - run_once handles build errors; this is a last guard
            self.get_logger().error(f"reconciler step failed: {type(e).__name__}: {e}",
                                    throttle_duration_sec=5.0)
            try:
                reconciler.abandon(e)  # failed + back-off: never stuck in "building"
            except Exception:  # noqa: BLE001 - a reconciler double without abandon()
                pass
