"""Perception ingest: one subscription per configured input -> serializer -> scheduler increment.

:class:`InputGate` holds the per-input decisions (throttle by ``min_period_s``, serialize,
count, throttle the rejection log) and needs no rclpy; :class:`Ingest` only creates the
subscriptions and forwards messages. Nothing here raises into the executor: a malformed message
is rejected (counted, logged at most once per ``log_throttle_s`` per input), any other error is
counted and logged the same way.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Sequence

from csr_ros.core.state.ledger import Fact
from csr_ros.nodes.parameters import InputSpec
from csr_ros.nodes.input_filter import InputCounters, InputFilter
from csr_ros.nodes.serializers import Rejected, build_serializer

SubmitFn = Callable[[str, int, str, Sequence[Fact]], None]
"""``submit(source, stamp_ns, text, facts)``: the scheduler's thread-safe increment producer."""
LogFn = Callable[[str], None]


class InputGate:
    """Throttle, serialize, forward and count the messages of one input (thread-safe): the
    shared :class:`~csr_ros.nodes.input_filter.InputFilter` decision plus forwarding and
    throttled logging."""

    def __init__(self, spec: InputSpec, submit: SubmitFn, warn: LogFn, log_throttle_s: float = 5.0):
        self.spec = spec
        self.filter = InputFilter(build_serializer(spec.name, spec.serializer, spec.options),
                                  int(spec.min_period_s * 1e9))
        self._submit, self._warn = submit, warn
        self._log_period_ns = int(log_throttle_s * 1e9)
        self._last_log_ns: int | None = None
        self._unlogged = 0
        self._lock = threading.Lock()

    @property
    def counters(self) -> InputCounters:
        return self.filter.counters

    def offer(self, msg: Any, now_ns: int) -> str:
        """Handle one message received at ``now_ns`` (node clock). Returns what happened:
        "accepted", "throttled", "unchanged" or "rejected". Never raises."""
        with self._lock:
            stamp_ns = message_stamp_ns(msg) or now_ns
            try:
                outcome, obs = self.filter.offer(msg, stamp_ns, now_ns)
                if obs is None:
                    return outcome
                self._submit(self.spec.topic, stamp_ns, obs.text, obs.facts)
            except Rejected:
                self._log_reject(now_ns)
                return "rejected"
            except Exception as e:  # noqa: BLE001 - never raise into the executor
                self.counters.rejected += 1
                self.counters.last_reject_reason = f"could not forward a message: {type(e).__name__}: {e}"
                self._log_reject(now_ns)
                return "rejected"
            self.filter.commit(now_ns)
            return "accepted"

    def _log_reject(self, now_ns: int) -> None:
        reason = self.counters.last_reject_reason
        last = self._last_log_ns
        if last is not None and 0 <= now_ns - last < self._log_period_ns:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
        self._warn(f"input {self.spec.name} ({self.spec.topic}) {reason}{more}; "
                   f"{self.counters.rejected} rejected so far")
        self._last_log_ns, self._unlogged = now_ns, 0


def message_stamp_ns(msg: Any) -> int:
    """``header.stamp`` in ns, or 0 when the message has no header (or an unset stamp)."""
    header = getattr(msg, "header", None)
    if header is None:
        return 0
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def message_class(msg_type: str) -> type:
    """``"sensor_msgs/msg/JointState"`` -> the message class."""
    pkg, sub, name = msg_type.split("/")
    return getattr(importlib.import_module(f"{pkg}.{sub}"), name)


class Ingest:
    """The perception subscriptions of a node (one per input, in ``callback_group``)."""

    def __init__(self, node, specs: Sequence[InputSpec], submit: SubmitFn, callback_group,
                 log_throttle_s: float = 5.0):
        from csr_ros.nodes import qos

        logger = node.get_logger()
        self.gates = [InputGate(s, submit, logger.warning, log_throttle_s) for s in specs]
        clock = node.get_clock()
        self.subscriptions = []
        for gate in self.gates:
            profile = qos.PERCEPTION_RELIABLE if gate.spec.qos == "reliable" else qos.PERCEPTION
            self.subscriptions.append(node.create_subscription(
                message_class(gate.spec.msg_type), gate.spec.topic,
                lambda msg, g=gate: g.offer(msg, clock.now().nanoseconds),
                profile, callback_group=callback_group))

    @property
    def rejected_total(self) -> int:
        """Messages rejected by all inputs since start."""
        return sum(g.counters.rejected for g in self.gates)

    @property
    def accepted_total(self) -> int:
        return sum(g.counters.accepted for g in self.gates)
