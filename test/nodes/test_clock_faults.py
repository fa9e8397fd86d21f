"""Simulated time with real rclpy nodes in a private Context (issue 22): ONE /clock subscription
per process drives every clock (csr_ros/nodes/sim_clock.py), and a jump back of /clock reaches
the scheduler through the clock's jump callback. A plain node stands in for the inference node
(its clock is the scheduler's clock, as in bringup); the action node and a real FrameScheduler
on the fake backend are the product's. ~3 s."""

from __future__ import annotations

import threading
import time

import pytest
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rosgraph_msgs.msg import Clock

from csr_ros.core.config import load_config
from csr_ros.core.model.backends.fake import FakeBackend
from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.runtime.frame_loop import FrameLoop
from csr_ros.core.runtime.scheduler import CLOCK_SOURCE, FrameScheduler
from csr_ros.msg import ActionChunk
from csr_ros.nodes import qos
from csr_ros.nodes.action_node import ActionNode
from csr_ros.nodes.sim_clock import on_jump_back, share_clock
from harness import until as _until

pytestmark = pytest.mark.nodes

RATE_HZ = 20.0
S = 10**9


def _teardown(loop, executors, threads, nodes) -> None:
    if loop is not None:
        loop.stop()
    for e in executors:
        e.shutdown(timeout_sec=5)
    for t in threads:
        t.join(5)
    for n in nodes:
        n.destroy_node()


class SimClock:
    """Publishes /clock every 10 ms of wall time (100 Hz, 1x) from ``start_s``; ``jump(s)`` moves it."""

    def __init__(self, node: Node, start_s: float):
        self.pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        self.base_ns, self.t0 = int(start_s * S), time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def now_ns(self) -> int:
        return self.base_ns + int((time.monotonic() - self.t0) * S)

    def jump(self, by_s: float) -> None:
        self.base_ns += int(by_s * S)

    def _run(self) -> None:
        while not self.stop.wait(0.01):
            ns = self.now_ns()
            self.pub.publish(Clock(clock=Time(sec=ns // S, nanosec=ns % S)))


def test_one_clock_subscription_drives_every_clock_and_a_jump_back_reaches_the_scheduler(ros_context):
    ctx = ros_context
    sim = [Parameter("use_sim_time", value=True)]
    main = Node("csr_stand_in", context=ctx, parameter_overrides=sim)
    clock_ns = lambda: main.get_clock().now().nanoseconds  # noqa: E731 - the scheduler's clock, as in bringup
    cfg = load_config({"control.control_rate_hz": RATE_HZ, "control.policy_period_s": 0.2})
    sched = FrameScheduler(CsrEngine(FakeBackend(), budget_tokens=1 << 14, clock_ns=clock_ns), None, cfg, clock_ns)
    actions = ActionNode(ctx, sched, RATE_HZ, False, use_sim_time=True)
    probe = Node("probe", context=ctx)
    chunks: list[ActionChunk] = []
    probe.create_subscription(ActionChunk, "csr/action_chunk", chunks.append, qos.ACTIONS)
    executors = [SingleThreadedExecutor(context=ctx) for _ in range(2)]
    executors[0].add_node(actions)
    for n in (main, probe):
        executors[1].add_node(n)
    threads = [threading.Thread(target=e.spin, daemon=True) for e in executors]
    for t in threads:
        t.start()
    clock = SimClock(probe, 5000.0)
    loop = None
    try:
        assert _until(lambda: probe.count_subscribers("/clock") == 2)  # each node's own time source
        share_clock(actions, main)
        handle = on_jump_back(main, sched.frame_period_ns, sched.check_clock)
        assert _until(lambda: probe.count_subscribers("/clock") == 1)  # only the action clock's now
        clock.thread.start()
        assert _until(lambda: abs(clock_ns() - clock.now_ns()) < S // 2)  # main follows without its own
        loop = FrameLoop(sched).start()
        sched.submit_increment("/obs", clock_ns(), "a person is waving: wave")
        assert _until(lambda: any(not c.is_hold for c in chunks))
        loop.stop()  # from here on nothing in the scheduler reads its clock but the jump callback
        n_before = len(chunks)
        clock.jump(-4000.0)  # a simulator reset
        assert _until(lambda: sched.status().clock_jumps == 1)  # at the /clock message itself
        assert _until(lambda: len(chunks) >= n_before + 3)
        after_jump = chunks[n_before + 1:]  # the first may have been sent before the jump landed
        assert all(c.is_hold and c.header.stamp.sec < 2000 for c in after_jump)  # the old chunk is gone
        loop = FrameLoop(sched).start()  # the worker decides again, on the new timeline
        assert _until(lambda: any(not c.is_hold for c in chunks[n_before + 1:]))
        fresh = [c for c in chunks[n_before + 1:] if not c.is_hold]
        assert all(c.header.stamp.sec < 2000 for c in fresh)
        incs = sched.engine.ledger.increments
        assert [i.source for i in incs] == ["/obs", CLOCK_SOURCE] and incs[0].stamp_ns < incs[1].stamp_ns
        del handle
    finally:
        clock.stop.set()
        _teardown(loop, executors, threads, (probe, actions, main))


def test_a_policy_slower_than_the_chunk_validity_gets_a_chunk_published_every_tick(ros_context):
    """The fake backend sleeps 0.4 s per forward; chunks are valid 0.3 s: the policy cannot refresh
    a chunk before it expires. Every tick of the action timer still publishes a chunk (no
    timing asserted: ticks are counted against messages), the holds flagged and counted."""
    ctx = ros_context
    cfg = load_config({"control.control_rate_hz": RATE_HZ, "control.policy_period_s": 0.2,
                       "control.chunk_valid_s": 0.3})
    clock_ns = time.time_ns  # ROS time without use_sim_time: the system clock, as the action node's
    engine = CsrEngine(FakeBackend(delay_s=0.4), budget_tokens=1 << 14, clock_ns=clock_ns)
    sched = FrameScheduler(engine, None, cfg, clock_ns)
    actions = ActionNode(ctx, sched, RATE_HZ, False)
    ticks = []
    publish = actions._publish_chunk
    actions.action_timer.callback = lambda: ticks.append(time.monotonic()) or publish()
    probe = Node("probe", context=ctx)
    chunks: list[ActionChunk] = []
    probe.create_subscription(ActionChunk, "csr/action_chunk", chunks.append, qos.ACTIONS)
    executors = [SingleThreadedExecutor(context=ctx) for _ in range(2)]
    executors[0].add_node(actions)
    executors[1].add_node(probe)
    threads = [threading.Thread(target=e.spin, daemon=True) for e in executors]
    loop = None
    try:
        assert _until(lambda: actions.pub_chunk.get_subscription_count() == 1)
        for t in threads:
            t.start()
        sched.submit_increment("/obs", clock_ns(), "a person is waving: wave")
        loop = FrameLoop(sched).start()
        assert _until(lambda: sum(not c.is_hold for c in chunks) >= 3 and sum(c.is_hold for c in chunks) >= 10, 30), (len(ticks), len(chunks), sched.counters)
        executors[0].shutdown(timeout_sec=5)  # no more ticks
        assert _until(lambda: len(chunks) == len(ticks))  # every tick published one chunk
        holds = [c for c in chunks if c.is_hold]
        assert all(c.action == "hold" and not any(c.data) for c in holds)
        assert sched.status().holds_published == len(holds)  # each hold period counted
        assert any(c.action == "wave" for c in chunks if not c.is_hold)  # and it still acts between
    finally:
        _teardown(loop, executors, threads, (probe, actions))
