"""Core types <-> ROS messages. Pure functions: no node, no ``rclpy.init`` needed (tests call them
directly). Stamps in the core are integer nanoseconds of ROS time (``stamp_ns``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from csr_ros.msg import ActionChunk, CacheStatus, StateIncrement, Utterance

if TYPE_CHECKING:  # the core types; imported lazily so this module loads before them
    from csr_ros.core.state.ledger import Increment
    from csr_ros.core.runtime.scheduler import ChunkOut, LanguageOut, StatusOut

_NS = 1_000_000_000
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_MAX_NS = (2**31 - 1) * _NS + _NS - 1  # the int32 seconds of Time/Duration (would wrap on the wire)


def ns_to_time(stamp_ns: int) -> Time:
    """Nanoseconds -> builtin_interfaces/Time, clamped to [0, 2^31 s) (negative stamps clamp to 0,
    far-future ones to the largest Time instead of wrapping to a negative second count)."""
    stamp_ns = min(max(0, int(stamp_ns)), _MAX_NS)
    return Time(sec=stamp_ns // _NS, nanosec=stamp_ns % _NS)


def time_to_ns(t: Time) -> int:
    """builtin_interfaces/Time -> nanoseconds."""
    return int(t.sec) * _NS + int(t.nanosec)


def s_to_duration(seconds: float) -> Duration:
    """Seconds -> builtin_interfaces/Duration, rounded to the nanosecond and clamped to
    [0, 2^31 s) (NaN -> 0)."""
    seconds = float(seconds)
    ns = 0 if math.isnan(seconds) else min(round(min(max(seconds, 0.0), 2.0**31) * _NS), _MAX_NS)
    return Duration(sec=ns // _NS, nanosec=ns % _NS)


def _u(value: int, limit: int) -> int:
    """Clamp a counter into an unsigned message field."""
    return min(max(0, int(value)), limit)


def chunk_to_msg(chunk: "ChunkOut", frame_id: str = "") -> ActionChunk:
    """ChunkOut -> csr_ros/ActionChunk (``data`` row-major horizon x len(names))."""
    return ActionChunk(
        header=Header(stamp=ns_to_time(chunk.stamp_ns), frame_id=frame_id),
        observation_stamp=ns_to_time(chunk.observation_stamp_ns),
        state_version=_u(chunk.state_version, _U64),
        names=list(chunk.names),
        dt=float(chunk.dt_s),
        horizon=_u(chunk.horizon, _U32),
        data=[float(v) for v in chunk.data],
        action=chunk.action,
        valid_until=ns_to_time(chunk.valid_until_ns),
        is_hold=bool(chunk.is_hold),
    )


def chunk_to_trajectory(chunk: "ChunkOut") -> JointTrajectory | None:
    """ChunkOut -> trajectory_msgs/JointTrajectory for ros2_control's joint_trajectory_controller.

    ``header.stamp`` = chunk start (the controller replaces its trajectory at that time),
    ``points[k].time_from_start`` = k * dt_s, ``points[k].positions`` = row k of ``data``.
    Returns None for a chunk without joints (e.g. a purely symbolic action).
    """
    width = len(chunk.names)
    if width == 0 or chunk.horizon <= 0 or len(chunk.data) != chunk.horizon * width:
        return None
    points = [
        JointTrajectoryPoint(positions=[float(v) for v in chunk.data[k * width:(k + 1) * width]],
                             time_from_start=s_to_duration(k * chunk.dt_s))
        for k in range(chunk.horizon)
    ]
    return JointTrajectory(header=Header(stamp=ns_to_time(chunk.stamp_ns)),
                           joint_names=list(chunk.names), points=points)


def wire_text(text: str) -> str:
    """``text`` without NUL characters: a DDS string ends at the first NUL, so model text holding
    one would be cut silently on the wire."""
    return text.replace("\x00", "") if "\x00" in text else text


def language_to_msg(out: "LanguageOut", stamp_ns: int) -> Utterance:
    """LanguageOut -> csr_ros/Utterance (same request_id; partial deltas, then one final)."""
    return Utterance(header=Header(stamp=ns_to_time(stamp_ns)), request_id=wire_text(out.request_id),
                     text=wire_text(out.text), is_final=bool(out.is_final), context=out.context)


_WIRE_INT_MAX = {"uint32": _U32, "uint64": _U64}


def status_to_msg(status: "StatusOut", stamp_ns: int, extra_rejected: int = 0) -> CacheStatus:
    """StatusOut -> csr_ros/CacheStatus; ``extra_rejected`` adds the ingest's rejections
    (malformed messages that never reached the engine). Every field of the message definition
    (but the header) is read from the StatusOut attribute of the same name."""
    msg = CacheStatus(header=Header(stamp=ns_to_time(stamp_ns)))
    for name, kind in CacheStatus.get_fields_and_field_types().items():
        if name == "header":
            continue
        value = getattr(status, name)
        if name == "increments_rejected":
            value += extra_rejected
        if kind in _WIRE_INT_MAX:
            value = _u(value, _WIRE_INT_MAX[kind])
        setattr(msg, name, float(value) if kind == "double" else value)
    return msg


def diagnostic_level(status: "StatusOut") -> tuple[bytes, str]:
    """Health of the cached state: (DiagnosticStatus level, message). ERROR while a serving
    engine is away or the ledger's disk fails (the node holds / serves from memory meanwhile)."""
    fault = status.fault()
    if fault:
        return DiagnosticStatus.ERROR, fault
    if status.reconciler_state == CacheStatus.RECONCILER_FAILED:
        return DiagnosticStatus.WARN, "reconciler failed: compaction falls back to synchronous eviction"
    if status.cached_tokens >= status.budget_tokens:
        return DiagnosticStatus.WARN, "cached state at its token budget"
    return DiagnosticStatus.OK, "ok"


def status_to_diagnostics(status: "StatusOut", stamp_ns: int, name: str = "csr: cached state",
                          hardware_id: str = "", extra_rejected: int = 0) -> DiagnosticArray:
    """StatusOut -> diagnostic_msgs/DiagnosticArray with one status (every gauge and counter of
    :meth:`StatusOut.report` as key/values; times in ms with one decimal)."""
    level, message = diagnostic_level(status)
    fields = status.report()
    fields["increments_rejected"] = status.increments_rejected + extra_rejected
    text = {k: f"{v:.1f}" if isinstance(v, float) else str(v) for k, v in fields.items()}
    item = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in text.items()])
    return DiagnosticArray(header=Header(stamp=ns_to_time(stamp_ns)), status=[item])


def increment_to_msg(inc: "Increment", state_version: int, frame_id: str = "") -> StateIncrement:
    """An accepted core Increment -> csr_ros/StateIncrement (stamp = the source message's)."""
    return StateIncrement(header=Header(stamp=ns_to_time(inc.stamp_ns), frame_id=frame_id),
                          source=wire_text(inc.source), sequence=_u(inc.seq, _U64), text=wire_text(inc.text),
                          num_tokens=_u(inc.num_tokens, _U32),
                          state_version=_u(state_version, _U64))


def utterance_request(msg: Utterance) -> tuple[str, str]:
    """A request Utterance -> (request_id, question text)."""
    return msg.request_id, msg.text
