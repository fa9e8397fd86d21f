"""Core types -> messages, without rclpy.init (and through real serialization for the round trip)."""

from __future__ import annotations

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.serialization import deserialize_message, serialize_message
from trajectory_msgs.msg import JointTrajectory

from csr_ros.core.state.ledger import Fact, Increment
from csr_ros.core.runtime.engine import EngineCounters
from csr_ros.core.runtime.outputs import SchedulerCounters
from csr_ros.core.runtime.scheduler import ChunkOut, LanguageOut, StatusOut
from csr_ros.msg import ActionChunk, CacheStatus, StateIncrement, Utterance
from csr_ros.nodes import conversions as conv

pytestmark = pytest.mark.nodes

S = 1_000_000_000
CHUNK = ChunkOut(stamp_ns=12 * S + 5, observation_stamp_ns=11 * S + 999_999_999, state_version=3,
                 names=("shoulder", "elbow"), dt_s=0.1, horizon=3,
                 data=(0.0, 1.0, 0.1, 1.1, 0.2, 1.2), action="pick", valid_until_ns=12 * S + 300_000_005,
                 is_hold=False)
STATUS = StatusOut(state_version=2, cached_tokens=300, budget_tokens=384, reconciler_state="building",
                   last_ttft_ms=12.5, last_rebuild_ms=80.25,
                   engine=EngineCounters(increments_total=40, increments_rejected=1, swaps=1, sync_evictions=1),
                   scheduler=SchedulerCounters(frame_overruns=4))


def _roundtrip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


def test_time_conversions():
    assert (conv.ns_to_time(12 * S + 5).sec, conv.ns_to_time(12 * S + 5).nanosec) == (12, 5)
    assert conv.time_to_ns(conv.ns_to_time(1_764_140_000 * S + 123)) == 1_764_140_000 * S + 123
    assert conv.ns_to_time(-5).sec == 0
    d = conv.s_to_duration(2.5000000004)
    assert (d.sec, d.nanosec) == (2, 500_000_000)


def test_chunk_to_action_chunk():
    msg = _roundtrip(conv.chunk_to_msg(CHUNK, frame_id="base"))
    assert isinstance(msg, ActionChunk)
    assert conv.time_to_ns(msg.header.stamp) == CHUNK.stamp_ns and msg.header.frame_id == "base"
    assert conv.time_to_ns(msg.observation_stamp) == CHUNK.observation_stamp_ns
    assert conv.time_to_ns(msg.valid_until) == CHUNK.valid_until_ns
    assert (list(msg.names), msg.horizon, list(msg.data)) == (list(CHUNK.names), 3, list(CHUNK.data))
    assert (msg.dt, msg.action, msg.is_hold, msg.state_version) == (0.1, "pick", False, 3)


def test_chunk_to_joint_trajectory_stamps_and_times():
    traj = _roundtrip(conv.chunk_to_trajectory(CHUNK))
    assert isinstance(traj, JointTrajectory)
    assert conv.time_to_ns(traj.header.stamp) == CHUNK.stamp_ns       # chunk start
    assert list(traj.joint_names) == ["shoulder", "elbow"]
    assert [list(p.positions) for p in traj.points] == [[0.0, 1.0], [0.1, 1.1], [0.2, 1.2]]
    assert [conv.time_to_ns(p.time_from_start) for p in traj.points] == [0, 100_000_000, 200_000_000]


def test_symbolic_or_inconsistent_chunk_has_no_trajectory():
    import dataclasses

    assert conv.chunk_to_trajectory(dataclasses.replace(CHUNK, names=(), data=())) is None
    assert conv.chunk_to_trajectory(dataclasses.replace(CHUNK, data=(1.0,))) is None


def test_language_to_utterance():
    msg = _roundtrip(conv.language_to_msg(LanguageOut("r-1", "the mug", False, "free"), 5 * S))
    assert isinstance(msg, Utterance)
    assert (msg.request_id, msg.text, msg.is_final, msg.context) == ("r-1", "the mug", False, "free")
    assert conv.utterance_request(Utterance(request_id="q", text="where?")) == ("q", "where?")


def test_status_to_cache_status_adds_ingest_rejections():
    msg = _roundtrip(conv.status_to_msg(STATUS, 7 * S, extra_rejected=5))
    assert isinstance(msg, CacheStatus)
    assert (msg.state_version, msg.cached_tokens, msg.budget_tokens, msg.increments_total) == (2, 300, 384, 40)
    assert (msg.increments_rejected, msg.evictions, msg.reconciler_state) == (6, 2, "building")
    assert (msg.last_ttft_ms, msg.last_rebuild_ms, msg.frame_overruns, msg.sync_fallbacks) == (12.5, 80.25, 4, 1)


def test_status_to_diagnostics_levels():
    import dataclasses

    arr = _roundtrip(conv.status_to_diagnostics(STATUS, 7 * S, hardware_id="/csr", extra_rejected=5))
    (item,) = arr.status
    values = {kv.key: kv.value for kv in item.values}
    assert item.level == DiagnosticStatus.OK and item.hardware_id == "/csr"
    assert values["increments_rejected"] == "6" and values["reconciler_state"] == "building"
    failed = conv.status_to_diagnostics(dataclasses.replace(STATUS, reconciler_state="failed"), 0)
    assert failed.status[0].level == DiagnosticStatus.WARN


def test_a_server_away_or_a_failing_disk_is_an_error_on_diagnostics():
    import dataclasses

    from csr_ros.core.model.backends.server_health import ServerFaultCounters
    from csr_ros.core.state.ledger_disk import StoreCounters

    away = dataclasses.replace(STATUS, server=ServerFaultCounters(servers_away=1, outages=2,
                                                                  last_server_error="refused"))
    (item,) = conv.status_to_diagnostics(away, 0).status
    values = {kv.key: kv.value for kv in item.values}
    assert item.level == DiagnosticStatus.ERROR and "serving engine away" in item.message
    assert values["servers_away"] == "1" and values["server_outages"] == "2"
    disk = dataclasses.replace(STATUS, store=StoreCounters(disk_ok=False, backlog_records=7,
                                                           last_disk_error="write: ENOSPC"))
    (item,) = conv.status_to_diagnostics(disk, 0).status
    values = {kv.key: kv.value for kv in item.values}
    assert item.level == DiagnosticStatus.ERROR and "7 records held" in item.message
    assert values["ledger_disk_ok"] == "False" and values["ledger_backlog_records"] == "7"


def test_increment_to_state_increment():
    inc = Increment(seq=41, source="/observations", stamp_ns=3 * S + 7, text="mug in the kitchen",
                    token_ids=(1, 2, 3, 4), facts=(Fact("mug", "location", "kitchen", 3 * S + 7),))
    msg = _roundtrip(conv.increment_to_msg(inc, state_version=2, frame_id="map"))
    assert isinstance(msg, StateIncrement)
    assert (msg.source, msg.sequence, msg.text, msg.num_tokens, msg.state_version) == (
        "/observations", 41, "mug in the kitchen", 4, 2)
    assert conv.time_to_ns(msg.header.stamp) == 3 * S + 7 and msg.header.frame_id == "map"
