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
    """Timer -> ``reconciler.run_once(should_stop)``. Never raises into its executor."""

    def __init__(self, context, reconciler, period_s: float, stop: threading.Event,
                 callback_group=None, use_sim_time: bool = False):
        # Local arguments win over the process's global ones: launch_ros renames *every* node of
        # the process with `-r __node:=csr`; this keeps the reconciler's own name.
        super().__init__(NODE_NAME, context=context,
                         cli_args=["--ros-args", "-r", f"__node:={NODE_NAME}"],
                         parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)])
        self.reconciler, self._stop = reconciler, stop
        # A steady clock: builds must go on while a simulated clock is paused.
        self.timer = self.create_timer(period_s, self._tick, callback_group=callback_group,
                                       clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _tick(self) -> None:
        if self._stop.is_set():
            return
        try:
            if self.reconciler.run_once(self._stop.is_set):
                self.get_logger().info(
                    f"compacted state ready ({self.reconciler.counters.last_rebuild_ms:.0f} ms build)")
        except Exception as e:  # noqa: BLE001 - run_once handles build errors; this is a last guard
            self.get_logger().error(f"reconciler step failed: {type(e).__name__}: {e}",
                                    throttle_duration_sec=5.0)
            try:
                self.reconciler.abandon(e)  # failed + back-off: never stuck in "building"
            except Exception:  # noqa: BLE001 - a reconciler double without abandon()
                pass
