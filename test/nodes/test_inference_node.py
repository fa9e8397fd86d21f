"""The inference node's wiring, in-process with a private Context: topics in and out, the action
timer, the model worker thread, status (transient local) and diagnostics.

The scheduler here is a small recording double of the FrameScheduler contract, so every message
can be traced to the call it made; test/graph runs the real scheduler end to end.
"""

from __future__ import annotations

import contextlib

import threading
import time
from dataclasses import dataclass, field

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from csr_ros.core.state.ledger import Increment
from csr_ros.core.runtime.engine import EngineCounters
from csr_ros.core.runtime.scheduler import ChunkOut, LanguageOut, StatusOut
from csr_ros.msg import ActionChunk, CacheStatus, StateIncrement, Utterance
from csr_ros.nodes import qos
from csr_ros.nodes.action_node import ActionNode
from csr_ros.nodes.inference_node import InferenceGroups, InferenceNode
from harness import until as _until

pytestmark = pytest.mark.nodes

RATE_HZ = 20.0


@dataclass
class RecordingScheduler:
    """Implements the FrameScheduler contract with bookkeeping only; records which thread calls."""

    submitted: list = field(default_factory=list)
    asks: list = field(default_factory=list)
    instructions: list = field(default_factory=list)
    frame_threads: set = field(default_factory=set)
    frames: int = 0
    _answers: list = field(default_factory=list)
    _accepted: list = field(default_factory=list)
    _unpublished: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def submit_increment(self, source, stamp_ns, text, facts=()):
        with self._lock:
            self.submitted.append((source, stamp_ns, text, tuple(facts)))

    def ask(self, request_id, question):
        if not question.strip():
            return LanguageOut(request_id, "refused: empty question", True, "")
        with self._lock:
            self.asks.append((request_id, question))
            self._answers.append(request_id)
        return None

    def set_instruction(self, text):
        self.instructions.append(text)

    def run_frame(self):
        self.frame_threads.add(threading.current_thread().name)
        with self._lock:
            self.frames += 1
            answers, self._answers = self._answers, []
            for source, stamp_ns, text, _ in self.submitted[len(self._accepted):]:
                inc = Increment(len(self._accepted), source, stamp_ns, text, (1,) * len(text))
                self._accepted.append(inc)
                self._unpublished.append(inc)
        out = []
        for rid in answers:
            out += [LanguageOut(rid, "state ", False, "free"), LanguageOut(rid, "state has 3", True, "free")]
        return out

    def accepted_increments(self):
        with self._lock:
            got, self._unpublished = self._unpublished, []
        return got

    def chunk_for_publish(self, now_ns):
        return ChunkOut(now_ns, now_ns - 10, 1, ("a", "b"), 0.05, 2, (0.0, 1.0, 0.5, 1.5), "hold",
                        now_ns + 100_000_000, False)

    def status(self):
        return StatusOut(1, 100, 512, "idle", 1.0, 0.0, engine=EngineCounters(increments_total=len(self._accepted)))


class Probe(Node):
    """The other side of the node's topics."""

    def __init__(self, context):
        super().__init__("probe", context=context)
        self.got: dict[str, list] = {k: [] for k in ("chunk", "traj", "language", "inc", "status", "diag")}
        for key, typ, topic, profile in [("chunk", ActionChunk, "csr/action_chunk", qos.ACTIONS),
                                         ("traj", JointTrajectory, "csr/joint_trajectory", qos.ACTIONS),
                                         ("language", Utterance, "csr/language", qos.LANGUAGE),
                                         ("inc", StateIncrement, "csr/increments", qos.INCREMENTS),
                                         ("status", CacheStatus, "csr/status", qos.STATUS),
                                         ("diag", DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS)]:
            self.create_subscription(typ, topic, lambda m, k=key: self.got[k].append(m), profile)
        self.ask = self.create_publisher(Utterance, "csr/ask", qos.LANGUAGE)
        self.instruction = self.create_publisher(String, "csr/instruction", qos.LANGUAGE)
        self.joints = self.create_publisher(JointState, "/joint_states", qos.PERCEPTION)
        self.obs = self.create_publisher(String, "/observations", qos.PERCEPTION_RELIABLE)


OVERRIDES = [
    Parameter("control.control_rate_hz", value=RATE_HZ),
    Parameter("ros.publish_joint_trajectory", value=True),
    Parameter("ros.status_rate_hz", value=10.0),
    Parameter("inputs.names", value=["obs", "joints"]),
    Parameter("inputs.obs.topic", value="/observations"),
    Parameter("inputs.obs.type", value="std_msgs/msg/String"),
    Parameter("inputs.obs.patterns", value=[r"(?P<entity>\w+) in the (?P<value>\w+)"]),
    Parameter("inputs.joints.topic", value="/joint_states"),
    Parameter("inputs.joints.type", value="sensor_msgs/msg/JointState"),
]


def _action_node(ctx, node, sched):
    """The action clock beside the inference node, as bringup wires it (its use_sim_time follows)."""
    actions = ActionNode(ctx, sched, RATE_HZ, True, node.use_sim_time)
    node.time_followers.append(actions)
    return actions


@pytest.fixture
def graph(ros_context):
    node = InferenceNode(ros_context, parameter_overrides=OVERRIDES)
    sched = RecordingScheduler()
    node.start(sched, InferenceGroups(*(MutuallyExclusiveCallbackGroup() for _ in range(3))))
    node.actions = _action_node(ros_context, node, sched)  # for the tests below
    probe = Probe(ros_context)
    executor = MultiThreadedExecutor(num_threads=4, context=ros_context)
    executor.add_node(node)
    executor.add_node(probe)
    action_executor = SingleThreadedExecutor(context=ros_context)
    action_executor.add_node(node.actions)
    stop = threading.Event()
    threads = [threading.Thread(target=executor.spin, daemon=True),
               threading.Thread(target=node.run_worker, args=(stop,), name="worker", daemon=True),
               threading.Thread(target=action_executor.spin, daemon=True)]
    for t in threads:
        t.start()
    yield node, sched, probe
    stop.set()
    threads[1].join(5)
    executor.shutdown(timeout_sec=5)
    action_executor.shutdown(timeout_sec=5)
    threads[0].join(5)
    threads[2].join(5)
    probe.destroy_node()
    node.actions.destroy_node()
    node.destroy_node()


def test_inference_node_forwards_and_publishes(graph):
    node, sched, probe = graph
    assert _until(lambda: probe.ask.get_subscription_count() and probe.joints.get_subscription_count()
                  and probe.obs.get_subscription_count())
    probe.ask.publish(Utterance(request_id="q1", text="where is the mug?", is_final=True))
    probe.ask.publish(Utterance(request_id="q2", text="  ", is_final=True))
    probe.instruction.publish(String(data="tidy the kitchen"))
    probe.obs.publish(String(data="mug in the kitchen"))
    probe.joints.publish(JointState(name=["a", "b"], position=[0.1]))          # malformed
    probe.joints.publish(JointState(name=["a"], position=[0.25]))
    assert _until(lambda: len(probe.got["language"]) >= 3 and len(probe.got["inc"]) >= 2
                  and len(probe.got["chunk"]) >= 10 and probe.got["diag"])

    answers = [(m.request_id, m.text, m.is_final) for m in probe.got["language"]]
    assert ("q2", "refused: empty question", True) in answers               # refusal, at once
    assert [a for a in answers if a[0] == "q1"] == [("q1", "state ", False), ("q1", "state has 3", True)]
    assert sched.asks == [("q1", "where is the mug?")] and sched.instructions == ["tidy the kitchen"]
    assert sched.frame_threads == {"worker"}                                 # model work off the executor
    sources = {s[0]: s for s in sched.submitted}
    assert sources["/observations"][2] == "mug in the kitchen" and sources["/observations"][3][0].value == "kitchen"
    assert sources["/joint_states"][2] == "a=0.25"
    assert {m.source for m in probe.got["inc"]} == {"/observations", "/joint_states"}

    chunk, traj = probe.got["chunk"][-1], probe.got["traj"][-1]
    assert list(chunk.names) == ["a", "b"] and list(chunk.data) == [0.0, 1.0, 0.5, 1.5]
    assert traj.header.stamp == chunk.header.stamp and len(traj.points) == 2
    status = probe.got["status"][-1]
    assert _until(lambda: probe.got["status"][-1].increments_rejected == 1)  # the malformed JointState
    assert status.budget_tokens == 512
    assert probe.got["diag"][-1].status[0].name == "csr: cached state"


def test_action_chunks_at_the_control_rate(graph):
    """The action timer runs at the control period and keeps publishing. The achieved rate is a
    benchmark figure (`csr-ros bench multitask`, the graph test's report), not asserted here: a
    shared 2-core CI machine measured 10.8 Hz of a configured 20 Hz while other jobs ran."""
    node, sched, probe = graph
    assert node.actions.action_timer.timer_period_ns == round(1e9 / RATE_HZ)
    assert node.actions.get_name() == "csr_actions"
    assert _until(lambda: len(probe.got["chunk"]) >= 2)
    n0 = len(probe.got["chunk"])
    assert _until(lambda: len(probe.got["chunk"]) >= n0 + 5)  # still publishing
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in probe.got["chunk"]]
    assert all(b >= a for a, b in zip(stamps, stamps[1:]))  # never an older chunk after a newer one


def test_status_is_transient_local(graph, ros_context):
    node, sched, probe = graph
    assert _until(lambda: probe.got["status"])
    late = Node("late", context=ros_context)
    got = []
    late.create_subscription(CacheStatus, "csr/status", got.append, qos.STATUS)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(late)
    node.status_timer.cancel()                                               # nothing new is published
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    ex.shutdown()
    late.destroy_node()
    assert got and got[0].budget_tokens == 512


def test_read_only_parameters_are_refused_and_use_sim_time_is_forwarded(graph):
    """The table's read_only column decides (test_lifecycle.py covers the writable rows)."""
    node, sched, probe = graph
    result = node.set_parameters([Parameter("budget.budget_tokens", value=4096)])[0]     # read_only
    assert not result.successful and "read-only" in result.reason
    result = node.set_parameters([Parameter("inputs.obs.topic", value="/other")])[0]     # read_only
    assert not result.successful and "read-only" in result.reason
    assert node.set_parameters([Parameter("use_sim_time", value=True)])[0].successful
    assert node.actions.get_parameter("use_sim_time").value is True  # the action clock follows
    assert node.set_parameters([Parameter("use_sim_time", value=False)])[0].successful
    assert node.actions.get_parameter("use_sim_time").value is False


def test_use_sim_time_stamps_follow_clock(ros_context):
    from builtin_interfaces.msg import Time
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock

    node = InferenceNode(ros_context, parameter_overrides=[*OVERRIDES, Parameter("use_sim_time", value=True)])
    sched = RecordingScheduler()
    node.start(sched, InferenceGroups(*(MutuallyExclusiveCallbackGroup() for _ in range(3))))
    actions = _action_node(ros_context, node, sched)
    probe = Probe(ros_context)
    clock_pub = probe.create_publisher(Clock, "/clock", QoSProfile(depth=10))
    executor = MultiThreadedExecutor(num_threads=4, context=ros_context)
    executor.add_node(node)
    executor.add_node(probe)
    executor.add_node(actions)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        assert node.use_sim_time
        sim_s = 1000
        def tick():
            nonlocal sim_s
            sim_s += 1
            clock_pub.publish(Clock(clock=Time(sec=sim_s)))
            return probe.got["chunk"] and probe.obs.get_subscription_count()
        assert _until(tick)
        probe.obs.publish(String(data="mug in the kitchen"))
        assert _until(lambda: tick() and sched.submitted)
        stamp = probe.got["chunk"][-1].header.stamp.sec
        assert 1000 < stamp <= sim_s                                          # ROS (simulated) time
        assert 1000 * 10**9 < sched.submitted[0][1] <= sim_s * 10**9           # String: stamped on receipt
    finally:
        executor.shutdown(timeout_sec=5)
        thread.join(5)
        probe.destroy_node()
        actions.destroy_node()
        node.destroy_node()


@contextlib.contextmanager
def _spinning_reconciler_node(ctx, wrap=None):
    """A fake-backend engine with 8 increments, its Reconciler (``wrap(reconciler)`` may patch
    it) and a ReconcilerNode spun by its own executor thread named ``reconciler-executor``."""
    from csr_ros.core.model.backends.fake import FakeBackend
    from csr_ros.core.runtime.engine import CsrEngine
    from csr_ros.core.reconcile.reconciler import Reconciler
    from csr_ros.nodes.reconciler_node import ReconcilerNode

    backend = FakeBackend()
    engine = CsrEngine(backend, budget_tokens=512, system_prompt="robot")
    for i in range(8):
        engine.submit("/obs", i * 10**9, f"the cup {i} is in the kitchen")
    engine.flush()
    reconciler = Reconciler(backend, "drop_oldest", 0.5, retry_backoff_s=0.0, max_backoff_s=0.0)
    if wrap is not None:
        wrap(reconciler)
    stop = threading.Event()
    node = ReconcilerNode(ctx, reconciler, 0.01, stop)
    assert node.get_name() == "csr_reconciler"
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, name="reconciler-executor", daemon=True)
    thread.start()
    try:
        yield engine, reconciler, thread
    finally:
        stop.set()
        executor.shutdown(timeout_sec=5)
        thread.join(5)
        node.destroy_node()


def test_reconciler_node_builds_in_its_own_executor_thread(ros_context):
    built_in = []

    def record_thread(reconciler):
        run_once = reconciler.run_once
        reconciler.run_once = lambda stop=None: built_in.append(threading.current_thread().name) or run_once(stop)

    with _spinning_reconciler_node(ros_context, record_thread) as (engine, reconciler, _thread):
        assert reconciler.request(engine.snapshot())
        assert _until(lambda: reconciler.handoff.peek_version() is not None)
        ledger, kv = reconciler.take_ready(engine.ledger.version)
        engine.install(ledger, kv)
        assert engine.ledger.version == 1 and engine.check_invariant()
        assert set(built_in) == {"reconciler-executor"}


def test_an_exception_escaping_run_once_is_caught_and_the_reconciler_recovers(ros_context):
    """An exception in the reconciler node's executor thread (one that escapes ``run_once``): the
    node's timer catches it, marks the reconciler failed (so it never stays ``building``), and its
    executor keeps spinning; the next request builds and hands over a state."""
    calls = []

    def failing_offer(reconciler):
        offer = reconciler.handoff.offer

        def offer_once_failing(version, payload):  # raises inside run_once's bookkeeping, after the build
            calls.append(version)
            if len(calls) == 1:
                raise RuntimeError("injected exception in the reconciler thread")
            return offer(version, payload)

        reconciler.handoff.offer = offer_once_failing

    with _spinning_reconciler_node(ros_context, failing_offer) as (engine, reconciler, thread):
        assert reconciler.request(engine.snapshot())
        assert _until(lambda: reconciler.state == "failed")  # not stuck in "building"
        assert "injected exception in the reconciler thread" in reconciler.counters.last_error
        assert thread.is_alive() and engine.check_invariant() and engine.ledger.version == 0
        assert reconciler.request(engine.snapshot())  # accepting again after the back-off
        assert _until(lambda: reconciler.handoff.peek_version() is not None)
        engine.install(*reconciler.take_ready(engine.ledger.version))
        assert engine.ledger.version == 1 and engine.check_invariant() and calls == [1, 1]


def test_node_names_under_a_launch_style_global_rename(ros_domain_id):
    """launch_ros renames every node of the process (`-r __node:=csr -r __ns:=...`); the reconciler
    node keeps its own name and both follow the namespace."""
    from rclpy.context import Context

    from csr_ros.nodes.reconciler_node import ReconcilerNode

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id,
               args=["csr_node", "--ros-args", "-r", "__node:=csr", "-r", "__ns:=/robot1"])
    try:
        node = InferenceNode(ctx, parameter_overrides=OVERRIDES)
        rec = ReconcilerNode(ctx, reconciler=None, period_s=1.0, stop=threading.Event())
        assert (node.get_fully_qualified_name(), rec.get_fully_qualified_name()) == ("/robot1/csr",
                                                                                    "/robot1/csr_reconciler")
        rec.destroy_node()
        node.destroy_node()
    finally:
        ctx.try_shutdown()
