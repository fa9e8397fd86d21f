"""The inference node ``csr``: forwards perception and requests to the FrameScheduler and publishes
what it returns. All decisions live in :mod:`csr_ros.core.runtime.scheduler`.

Topics (relative, so a namespace applies):
  in : <inputs>            perception (ingest.py; sensor-data QoS unless configured otherwise)
       csr/ask             csr_ros/Utterance (a question with a request_id)
       csr/instruction     std_msgs/String (the current task instruction)
  out: csr/language        csr_ros/Utterance: partials (is_final false), then one final
       csr/increments      csr_ros/StateIncrement, one per accepted perception message
       csr/status          csr_ros/CacheStatus (>= 1 Hz, transient local)
       /diagnostics        diagnostic_msgs/DiagnosticArray

The action chunks (csr/action_chunk, csr/joint_trajectory) come from the action clock, its own
node ``csr_actions`` (action_node.py) with its own executor.

Threads (declared in bringup.py): executor callbacks only call the scheduler's non-blocking
producers; the model work (``run_frame``) runs in :meth:`run_worker`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import String

from csr_ros.msg import CacheStatus, StateIncrement, Utterance
from csr_ros.nodes import conversions as conv
from csr_ros.nodes import qos
from csr_ros.nodes.ingest import Ingest
from csr_ros.nodes.parameters import load_node_config

NODE_NAME = "csr"


@dataclass(frozen=True)
class InferenceGroups:
    """Callback groups of the inference node (created in bringup.py, which documents them)."""

    perception: object
    requests: object
    status: object


class InferenceNode(Node):
    """Declares and validates its parameters on construction (``cfg``, ``inputs``); :meth:`start`
    wires it to a scheduler."""

    def __init__(self, context, cli_args: list[str] | None = None, parameter_overrides=None):
        super().__init__(NODE_NAME, context=context, cli_args=cli_args,
                         parameter_overrides=parameter_overrides)
        self.cfg, self.inputs = load_node_config(self)
        self.scheduler = None
        self.ingest: Ingest | None = None
        self.time_followers: list[Node] = []  # nodes whose use_sim_time follows this one's
        self._configured = set(self.list_parameters([], 0).names) - {"use_sim_time"}
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _on_set_parameters(self, params) -> SetParametersResult:
        """The core reads its configuration once, at start: refuse run-time changes instead of
        accepting values that would not take effect (use_sim_time stays settable)."""
        changed = sorted(p.name for p in params if p.name in self._configured)
        if changed:
            return SetParametersResult(successful=False, reason=(
                f"{', '.join(changed)}: applied at start only; restart the node to change it"))
        for p in params:
            if p.name == "use_sim_time":  # the action clock follows this node's time source
                for node in self.time_followers:
                    node.set_parameters([p])
        return SetParametersResult(successful=True)

    def now_ns(self) -> int:
        """ROS time of this node's clock (simulated time when use_sim_time is set), ns."""
        return self.get_clock().now().nanoseconds

    @property
    def use_sim_time(self) -> bool:
        return bool(self.get_parameter("use_sim_time").value)

    # ------------------------------------------------------------------ wiring
    @property
    def frame_period_s(self) -> float:
        """Control period (the model worker's frames; the action clock runs at the same rate), s."""
        return 1.0 / self.cfg.control.control_rate_hz

    def start(self, scheduler, groups: InferenceGroups) -> None:
        """Create publishers, subscriptions and timers around ``scheduler``."""
        self.scheduler, ros = scheduler, self.cfg.ros
        self.pub_language = self.create_publisher(Utterance, "csr/language", qos.LANGUAGE)
        self.pub_increments = self.create_publisher(StateIncrement, "csr/increments", qos.INCREMENTS)
        self.pub_status = self.create_publisher(CacheStatus, "csr/status", qos.STATUS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS)
        self.ingest = Ingest(self, self.inputs, scheduler.submit_increment, groups.perception,
                             ros.reject_log_throttle_s)
        self.create_subscription(Utterance, "csr/ask", self._on_ask, qos.LANGUAGE,
                                 callback_group=groups.requests)
        self.create_subscription(String, "csr/instruction", self._on_instruction, qos.LANGUAGE,
                                 callback_group=groups.requests)
        # Status must go on regardless of a paused simulated clock: steady.
        self.status_timer = self.create_timer(1.0 / ros.status_rate_hz, self.publish_status,
                                              callback_group=groups.status,
                                              clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ------------------------------------------------------------------ callbacks (executor)
    def _on_ask(self, msg: Utterance) -> None:
        try:
            refusal = self.scheduler.ask(*conv.utterance_request(msg))
            if refusal is not None:  # a clear answer on csr/language, never a silent drop
                self.pub_language.publish(conv.language_to_msg(refusal, self.now_ns()))
                self.get_logger().warning(f"request {refusal.request_id[:64]!r} {refusal.text}",
                                          throttle_duration_sec=self.cfg.ros.reject_log_throttle_s)
        except Exception as e:  # noqa: BLE001
            self.get_logger().error(f"request {msg.request_id!r} failed: {type(e).__name__}: {e}",
                                    throttle_duration_sec=5.0)

    def _on_instruction(self, msg: String) -> None:
        try:
            self.scheduler.set_instruction(msg.data)
        except Exception as e:  # noqa: BLE001
            self.get_logger().error(f"instruction failed: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    def publish_status(self) -> None:
        """csr/status + /diagnostics (ingest rejections are added to the engine's)."""
        try:
            status, now = self.scheduler.status(), self.now_ns()
            extra = self.ingest.rejected_total if self.ingest else 0
            self.pub_status.publish(conv.status_to_msg(status, now, extra))
            self.pub_diag.publish(conv.status_to_diagnostics(status, now, hardware_id=self.get_fully_qualified_name(),
                                                             extra_rejected=extra))
        except Exception as e:  # noqa: BLE001
            self.get_logger().error(f"status publish failed: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    # ------------------------------------------------------------------ the model worker
    def run_worker(self, stop: threading.Event) -> None:
        """The model thread: ``run_frame`` once per frame period until ``stop`` (bringup starts
        it). Publishes the language pieces and accepted increments each frame returns."""
        log, frame_period_s = self.get_logger(), self.frame_period_s
        next_t = time.monotonic()
        while not stop.is_set():
            try:
                outs = self.scheduler.run_frame()
                now = self.now_ns()
                for out in outs:
                    self.pub_language.publish(conv.language_to_msg(out, now))
                incs = self.scheduler.accepted_increments()
                if incs:
                    version = self.scheduler.status().state_version
                    for inc in incs:
                        self.pub_increments.publish(conv.increment_to_msg(inc, version))
            except Exception as e:  # noqa: BLE001 - the worker keeps going; the scheduler holds
                log.error(f"frame failed: {type(e).__name__}: {e}", throttle_duration_sec=5.0)
            next_t = max(next_t + frame_period_s, time.monotonic())
            stop.wait(max(0.0, next_t - time.monotonic()))
