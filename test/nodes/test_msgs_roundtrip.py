"""Every csr_ros message survives a real publish/subscribe round trip through DDS."""

from __future__ import annotations

import time

import pytest
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from csr_ros.msg import ActionChunk, CacheStatus, StateIncrement, Utterance

pytestmark = pytest.mark.nodes

QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def _header(sec: int, nanosec: int, frame_id: str = "") -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def sample_messages() -> dict[str, object]:
    names = ["shoulder_pan", "elbow", "wrist_roll", "gripper"]
    horizon = 5
    data = [0.125 * i - 1.0 + (1e-9 if i % 3 == 0 else 0.0) for i in range(horizon * len(names))]
    return {
        "state_increment": StateIncrement(
            header=_header(1_764_140_000, 123_456_789, "camera_optical"),
            source="/camera/image_raw",
            sequence=2**40 + 7,
            text="Kitchen: a red mug (0.42 m left) — Zustand ✓\nsecond line",
            num_tokens=23,
            state_version=3,
        ),
        "action_chunk": ActionChunk(
            header=_header(1_764_140_001, 5_000_000),
            observation_stamp=Time(sec=1_764_140_000, nanosec=987_654_321),
            state_version=2**33 + 1,
            names=names,
            dt=0.05,
            horizon=horizon,
            data=data,
            action="pick",
            valid_until=Time(sec=1_764_140_001, nanosec=255_000_000),
            is_hold=True,
        ),
        "utterance": Utterance(
            header=_header(1_764_140_002, 1),
            request_id="req-42",
            text="The mug is on the counter, left of the sink.",
            is_final=True,
            context="room_locations",
        ),
        "cache_status": CacheStatus(
            header=_header(1_764_140_003, 999_999_999),
            state_version=7,
            cached_tokens=3_071,
            budget_tokens=4_096,
            increments_total=2**35 + 11,
            increments_rejected=4,
            evictions=2,
            reconciler_state=CacheStatus.RECONCILER_BUILDING,
            last_ttft_ms=12.625,
            last_rebuild_ms=803.25,
            frame_overruns=1,
            sync_fallbacks=9,
        ),
    }


def test_reconciler_constants():
    assert (CacheStatus.RECONCILER_IDLE, CacheStatus.RECONCILER_BUILDING,
            CacheStatus.RECONCILER_READY, CacheStatus.RECONCILER_FAILED) == (
        "idle", "building", "ready", "failed")


def test_every_message_round_trips(ros_context):
    sent = sample_messages()
    received: dict[str, object] = {}
    pub_node = Node("csr_msgs_pub", context=ros_context)
    sub_node = Node("csr_msgs_sub", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(pub_node)
    executor.add_node(sub_node)
    try:
        pubs = {}
        for topic, msg in sent.items():
            sub_node.create_subscription(
                type(msg), f"csr_test/{topic}",
                lambda m, topic=topic: received.setdefault(topic, m), QOS)
            pubs[topic] = pub_node.create_publisher(type(msg), f"csr_test/{topic}", QOS)

        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs.values()):
            executor.spin_once(timeout_sec=0.05)
        for topic, msg in sent.items():
            pubs[topic].publish(msg)
        while time.monotonic() < deadline and len(received) < len(sent):
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()

    assert set(received) == set(sent), f"missing: {set(sent) - set(received)}"
    for topic, msg in sent.items():
        assert received[topic] == msg, topic
        assert received[topic] is not msg

    chunk, got = sent["action_chunk"], received["action_chunk"]
    assert list(got.names) == list(chunk.names)
    assert list(got.data) == list(chunk.data)  # bit-exact float64
    assert len(got.data) == got.horizon * len(got.names)
    assert (got.observation_stamp.sec, got.observation_stamp.nanosec) == (1_764_140_000, 987_654_321)
    assert got.is_hold and got.action == "pick" and got.dt == 0.05
    assert received["state_increment"].sequence == 2**40 + 7
    assert received["state_increment"].text == sent["state_increment"].text
    assert received["cache_status"].reconciler_state == "building"
