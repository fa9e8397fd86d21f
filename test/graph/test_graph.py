"""The whole graph as a separate process (`python -m csr_ros.cli run --params-file
config/test_fake.yaml`), driven over loopback DDS in an isolated domain (conftest.py sets
ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST; the subprocess inherits them).

One run of ~15 s checks every point of the issue: perception published and turned into
increments; ActionChunk at the configured rate (+-10 %) for >= 10 s; two questions answered with
their request_id (partials, then one final); evictions forced by the small budget (compactions
by the reconciler, and one synchronous eviction forced by a burst) leave no gap in the action
stream longer than 2 periods; malformed messages are rejected (counted) while actions
continue; SIGINT shuts the process down cleanly (exit code 0).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from csr_ros.core.config import load_params_file
from csr_ros.msg import ActionChunk, CacheStatus, StateIncrement, Utterance
from csr_ros.nodes import qos
from csr_ros.share import child_env

pytestmark = [pytest.mark.graph, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "config" / "test_fake.yaml"
FLAT = load_params_file(PARAMS, "csr")
RATE_HZ = float(FLAT["control.control_rate_hz"])
PERIOD_S = 1.0 / RATE_HZ
WINDOW_S = 12.0  # >= 10 s of action stream under load


class Probe(Node):
    """Publishes perception and questions; records everything the graph publishes (with arrival
    times, monotonic s)."""

    def __init__(self, context: Context):
        super().__init__("graph_probe", context=context)
        self.lock = threading.Lock()
        self.got: dict[str, list] = {}
        for key, typ, topic, profile in [
                ("chunk", ActionChunk, "/csr/action_chunk", qos.ACTIONS),
                ("traj", JointTrajectory, "/csr/joint_trajectory", qos.ACTIONS),
                ("language", Utterance, "/csr/language", qos.LANGUAGE),
                ("inc", StateIncrement, "/csr/increments", qos.INCREMENTS),
                ("status", CacheStatus, "/csr/status", qos.STATUS),
                ("diag", DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS)]:
            self.got[key] = []
            self.create_subscription(typ, topic, lambda m, info, k=key: self._record(k, m, info), profile)
        self.pubs = {
            "obs": self.create_publisher(String, "/observations", qos.PERCEPTION_RELIABLE),
            "joints": self.create_publisher(JointState, "/joint_states", qos.PERCEPTION),
            "image": self.create_publisher(Image, "/camera/image_raw", qos.PERCEPTION),
            "pose": self.create_publisher(PoseStamped, "/robot_pose", qos.PERCEPTION),
            "ask": self.create_publisher(Utterance, "/csr/ask", qos.LANGUAGE),
        }

    def _record(self, key: str, msg, info) -> None:
        with self.lock:
            self.got[key].append((time.monotonic(), msg, info["source_timestamp"] * 1e-9))

    def msgs(self, key: str) -> list:
        with self.lock:
            return [m for _, m, _ in self.got[key]]

    def times(self, key: str) -> list[tuple[float, float]]:
        """(arrival, publication) times of every message of ``key``, s."""
        with self.lock:
            return [(t, src) for t, _, src in self.got[key]]


def _until(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _marker_image(marker_id: int, x0: int) -> Image:
    import cv2

    dic = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
    img = np.full((120, 160), 255, np.uint8)
    img[20:80, x0:x0 + 60] = cv2.aruco.generateImageMarker(dic, marker_id, 60)
    return Image(height=120, width=160, encoding="mono8", step=160, data=img.tobytes())


def _pose(x: float) -> PoseStamped:
    p = PoseStamped()
    p.header.frame_id = "map"
    p.pose.position.x = x
    p.pose.orientation.w = 1.0
    return p


ROOMS = ["kitchen", "hall", "office", "lab"]
THINGS = ["red mug", "blue box", "green cup", "yellow ball", "black bag", "white plate"]


def _feed(probe: Probe, k: int) -> int:
    """One 100 ms tick of perception (plus two malformed messages per second). Returns how many
    malformed messages it sent."""
    p = probe.pubs
    p["obs"].publish(String(data=f"the {THINGS[k % 6]} is in the {ROOMS[k % 4]} (tick {k})"))
    p["joints"].publish(JointState(name=["shoulder", "elbow"], position=[0.1 * k, math.sin(k / 5)]))
    if k % 5 == 0:
        p["pose"].publish(_pose(0.2 * k))
        p["image"].publish(_marker_image(k % 50, 10 + (k * 7) % 80))
    if k % 10 == 3:
        p["joints"].publish(JointState(name=["shoulder", "elbow"], position=[0.1]))      # lengths
        p["image"].publish(Image(height=10, width=10, encoding="mono8", step=10, data=bytes(7)))
        return 2
    return 0


@pytest.fixture
def graph_process(tmp_path, ros_domain_id):
    log = open(tmp_path / "graph.log", "w+")
    env = child_env(PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "csr_ros.cli", "run", "--params-file", str(PARAMS)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture
def probe(ros_domain_id):
    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    node = Probe(ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node
    executor.shutdown(timeout_sec=5)
    thread.join(5)
    node.destroy_node()
    ctx.try_shutdown()


def _log_text(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def test_graph_end_to_end(graph_process, probe):
    proc, log = graph_process
    assert _until(lambda: probe.msgs("chunk") or proc.poll() is not None, 90), "no ActionChunk\n" + _log_text(log)
    assert proc.poll() is None, _log_text(log)
    assert _until(lambda: all(p.get_subscription_count() for p in probe.pubs.values()), 30)
    status0 = _until(lambda: probe.msgs("status"), 10) and probe.msgs("status")[-1]

    n_chunks0, t0 = len(probe.msgs("chunk")), time.monotonic()
    malformed, asked = 0, {}
    for k in range(int(WINDOW_S * 10)):
        malformed += _feed(probe, k)
        if k == 60:  # a burst faster than the reconciler: forces a synchronous eviction too
            for j in range(8):
                probe.pubs["obs"].publish(String(data=f"burst {j}: " + "the shelf holds many small parts " * 12))
        if k in (30, 70):
            rid = f"req-{k}"
            asked[rid] = time.monotonic()
            probe.pubs["ask"].publish(Utterance(request_id=rid, text=f"where is the {THINGS[k % 6]}?"))
        time.sleep(max(0.0, t0 + (k + 1) * 0.1 - time.monotonic()))
    window_s = time.monotonic() - t0
    times = probe.times("chunk")[n_chunks0:]
    chunks = probe.msgs("chunk")[n_chunks0:]
    assert _until(lambda: sum(m.is_final for m in probe.msgs("language")) >= 2, 20)
    # malformed JointState/Image go out on best-effort (sensor-data QoS) topics: DDS may drop some,
    # so at least one and never more than were sent are rejected (no valid message is rejected)
    assert _until(lambda: probe.msgs("status")[-1].increments_rejected - status0.increments_rejected >= 1, 5)
    status = probe.msgs("status")[-1]

    # SIGINT: a clean shutdown
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(30)
    text = _log_text(log)
    assert rc == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]

    # ActionChunk at the configured rate (+-10 %) for >= 10 s
    assert window_s >= 10.0
    rate = sum(t <= t0 + window_s for t, _ in times) / window_s
    assert 0.9 * RATE_HZ <= rate <= 1.1 * RATE_HZ, f"{rate:.2f} Hz, configured {RATE_HZ} Hz"
    # Evictions happened meanwhile (checked below), yet no gap in the action stream is longer
    # than 2 periods. Gaps are taken between the DDS source timestamps, i.e. when the graph
    # published, so this probe's own scheduling does not count. The action clock has its own
    # node, executor and thread (csr_ros/nodes/action_node.py, bringup), so neither a rebuild nor
    # a model forward holds it up.
    gaps = np.diff([src for _, src in times])
    late = [(round(times[i][0] - t0, 2), round(g, 3)) for i, g in enumerate(gaps) if g > 2 * PERIOD_S]
    assert not late, f"gaps > 2 periods at (s into the window, gap s) {late}; load {os.getloadavg()}\n{text[-3000:]}"
    arrival_gaps = np.diff([t for t, _ in times])
    assert all(c.valid_until.sec * 10**9 + c.valid_until.nanosec > c.header.stamp.sec * 10**9 + c.header.stamp.nanosec
               for c in chunks)
    evictions = status.evictions - status0.evictions
    assert evictions >= 2 and status.state_version > status0.state_version, status
    assert 1 <= status.sync_fallbacks < evictions, status  # both the async and the synchronous path
    assert all(len(c.data) == c.horizon * len(c.names) for c in chunks)

    # perception -> increments (every input type), malformed ones rejected
    sources = {m.source for m in probe.msgs("inc")}
    assert sources == {"/observations", "/joint_states", "/camera/image_raw", "/robot_pose"}
    assert any("markers" in m.text for m in probe.msgs("inc") if m.source == "/camera/image_raw")
    assert 0 < status.increments_rejected - status0.increments_rejected <= malformed

    # two questions answered with the right request_id: partials, then exactly one final
    for rid in asked:
        pieces = [m for m in probe.msgs("language") if m.request_id == rid]
        assert [m.is_final for m in pieces].count(True) == 1 and pieces[-1].is_final, rid
        assert len(pieces) >= 2, f"{rid}: no streamed partials"
        assert pieces[-1].text and not pieces[-1].text.startswith("refused"), pieces[-1]
    assert {m.request_id for m in probe.msgs("language")} == set(asked)

    # joint trajectory for ros2_control, diagnostics
    traj = probe.msgs("traj")[-1]
    assert traj.points and traj.points[1].time_from_start.nanosec == round(chunks[-1].dt * 1e9)
    assert probe.msgs("diag")[-1].status[0].values

    print(f"\ngraph: {len(times)} chunks in {window_s:.1f} s = {rate:.2f} Hz (configured {RATE_HZ:g}); "
          f"max gap {gaps.max() * 1e3:.0f} ms published, {arrival_gaps.max() * 1e3:.0f} ms received; "
          f"{evictions} evictions ({status.sync_fallbacks} synchronous), state version {status.state_version}; {len(probe.msgs('inc'))} increments, "
          f"{status.increments_rejected} rejected ({malformed} malformed sent); "
          f"answers for {sorted(asked)}")


def test_bad_parameter_stops_the_start_naming_it():
    env = child_env()
    proc = subprocess.run([sys.executable, "-m", "csr_ros.cli", "run", "--params-file", str(PARAMS),
                           "--ros-args", "-p", "inputs.joints.min_change:=-1.0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "inputs.joints.min_change" in proc.stderr
