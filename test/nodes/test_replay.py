"""``csr-ros replay``: a bag's messages arrive on their topics, in order, with /clock (real rclpy)."""

from __future__ import annotations

import threading
import time

import pytest

from csr_ros.cli.eval.episode import typestore, write_bag

pytestmark = pytest.mark.nodes
T0 = 1_700_000_000 * 10**9


def _bag(path, n=6, dt_s=0.05):
    store = typestore()
    String = store.types["std_msgs/msg/String"]
    recs = [(T0 + int(i * dt_s * 1e9), "/observations", "std_msgs/msg/String", String(data=f"obs {i}"))
            for i in range(n)]
    write_bag(path, recs)
    return [f"obs {i}" for i in range(n)]


def _spin(ctx, nodes):
    from rclpy.executors import SingleThreadedExecutor

    ex = SingleThreadedExecutor(context=ctx)
    for n in nodes:
        ex.add_node(n)
    stop = threading.Event()

    def loop():
        while not stop.is_set() and ctx.ok():
            ex.spin_once(timeout_sec=0.02)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    return ex, stop, th


def _listener(ctx):
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import String

    node = Node("listener", context=ctx)
    got, clock = [], []
    node.create_subscription(String, "/observations", lambda m: got.append(m.data),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(Clock, "/clock", lambda m: clock.append(m.clock.sec * 10**9 + m.clock.nanosec), 100)
    return node, got, clock


def _wait_matched(pub_node, topic, timeout_s=10.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pub_node.count_subscribers(topic) > 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"no subscriber matched {topic}")


def test_replay_publishes_in_order_with_clock(ros_context, tmp_path):
    from rclpy.node import Node

    from csr_ros.cli.replay import Replayer

    texts = _bag(tmp_path / "bag")
    listener, got, clock = _listener(ros_context)
    player = Node("csr_replay", context=ros_context)
    rep = Replayer(player, str(tmp_path / "bag"), rate=2.0, clock=True, clock_hz=100.0)
    rep._publisher("/observations", "std_msgs/msg/String")  # create it early to match before playing
    ex, stop, th = _spin(ros_context, [listener, player])
    try:
        _wait_matched(player, "/observations")
        _wait_matched(player, "/clock")
        stats = rep.run()
        end = time.monotonic() + 5.0
        while len(got) < len(texts) and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        stop.set()
        th.join(2.0)
        listener.destroy_node()
        player.destroy_node()
    assert stats.published == len(texts) and stats.passes == 1
    assert got == texts
    assert clock and clock == sorted(clock)  # the recorded time, never going back
    assert T0 <= clock[0] and clock[-1] <= T0 + int(0.05 * 1e9) * (len(texts) - 1)


def test_replay_timing_follows_rate_and_loop_stops(ros_context, tmp_path):
    from rclpy.node import Node

    from csr_ros.cli.replay import Replayer

    _bag(tmp_path / "bag", n=3, dt_s=0.2)  # 0.4 s of recording
    player = Node("csr_replay", context=ros_context)
    try:
        t0 = time.perf_counter()
        Replayer(player, str(tmp_path / "bag"), rate=4.0).run()
        once_s = time.perf_counter() - t0
        stop = threading.Event()
        rep = Replayer(player, str(tmp_path / "bag"), rate=4.0, loop=True)
        threading.Timer(0.5, stop.set).start()
        stats = rep.run(stop)
    finally:
        player.destroy_node()
    assert 0.09 <= once_s < 5.0  # 0.4 s at 4x: about 0.1 s, never faster than recorded/rate
    assert stats.passes >= 2 and stats.published >= 6


def test_replay_loop_can_rewind_the_clock_like_a_bag_loop(ros_context, tmp_path):
    from rclpy.node import Node

    from csr_ros.cli.replay import Replayer

    _bag(tmp_path / "bag", n=3, dt_s=0.1)  # 0.2 s of recording
    listener, _got, clock = _listener(ros_context)
    player = Node("csr_replay", context=ros_context)
    ex, stop, th = _spin(ros_context, [listener, player])
    try:
        _wait_matched(player, "/clock")
        halt = threading.Event()
        rep = Replayer(player, str(tmp_path / "bag"), clock=True, loop=True, rewind_clock=True)

        def halt_after_two_passes():  # by passes, not by time: a loaded machine plays slower
            end = time.monotonic() + 30.0
            while rep.stats.passes < 2 and time.monotonic() < end:
                time.sleep(0.01)
            halt.set()

        threading.Thread(target=halt_after_two_passes, daemon=True).start()
        stats = rep.run(halt)
        time.sleep(0.2)
    finally:
        stop.set()
        th.join(2.0)
        listener.destroy_node()
        player.destroy_node()
    assert stats.passes >= 2
    backs = [(a, b) for a, b in zip(clock, clock[1:]) if b < a]
    assert len(backs) >= stats.passes - 1  # /clock jumped back at every loop ...
    assert all(b == T0 and a >= T0 + int(0.2e9) for a, b in backs)  # ... from the end to the recorded start
    assert T0 <= min(clock) and max(clock) <= T0 + int(0.2e9) + 10**7
