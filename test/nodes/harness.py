"""An in-process csr graph (bringup.Graph on the fake backend) plus a probe node, for the
lifecycle, action and service tests. One private Context per graph; the probe has its own
executor thread; the test thread plays the lifecycle manager / client."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "config" / "test_fake.yaml"


def until(cond, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


class Probe(Node):
    """The outside of the graph: records csr/action_chunk, csr/status, csr/increments, csr/language."""

    def __init__(self, context):
        from std_msgs.msg import String

        from csr_ros.msg import ActionChunk, CacheStatus, StateIncrement, Utterance
        from csr_ros.nodes import qos

        super().__init__("probe", context=context)
        self.lock = threading.Lock()
        self.got: dict[str, list] = {k: [] for k in ("chunk", "status", "inc", "language")}
        for key, typ, topic, profile in [("chunk", ActionChunk, "csr/action_chunk", qos.ACTIONS),
                                         ("status", CacheStatus, "csr/status", qos.STATUS),
                                         ("inc", StateIncrement, "csr/increments", qos.INCREMENTS),
                                         ("language", Utterance, "csr/language", qos.LANGUAGE)]:
            self.create_subscription(typ, topic, lambda m, k=key: self._rec(k, m), profile)
        self.obs = self.create_publisher(String, "observations", qos.PERCEPTION_RELIABLE)
        self.ask = self.create_publisher(Utterance, "csr/ask", qos.LANGUAGE)
        self._string = String

    def _rec(self, key, msg) -> None:
        with self.lock:
            self.got[key].append(msg)

    def n(self, key: str) -> int:
        with self.lock:
            return len(self.got[key])

    def since(self, key: str, start: int) -> list:
        with self.lock:
            return list(self.got[key][start:])

    def observe(self, text: str) -> None:
        self.obs.publish(self._string(data=text))


class InProcessGraph:
    """``Graph`` + ``Probe`` (started); :meth:`close` shuts both down in order."""

    count = 0

    def __init__(self, domain_id: int, *params: str, autostart: bool = False, namespace: str = ""):
        from csr_ros.nodes.bringup import Graph

        # A namespace of its own (every node of the context, the probe too, and the relative
        # observations topic): other graphs on this machine and domain (other test runs) stay out.
        InProcessGraph.count += 1
        namespace = namespace or f"/t{os.getpid()}_{InProcessGraph.count}"
        args = ["csr_test", "--ros-args", "--log-level", "warn", "--params-file", str(PARAMS),
                "-p", f"ros.autostart:={str(autostart).lower()}", "-p", "inputs.observations.topic:=observations",
                "-r", f"__ns:={namespace}"]
        self.namespace = namespace
        for p in params:
            args += ["-p", p]
        self.context, self.stop = Context(), threading.Event()
        rclpy.init(context=self.context, domain_id=domain_id, args=args)
        self.graph = Graph(self.context, self.stop)
        self.node = self.graph.node
        self.graph.start()
        if autostart:
            assert self.graph.bring_up() == 0, self.node.last_error
        self.probe = Probe(self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def change_state(self, transition: str) -> bool:
        """Through the lifecycle service /csr/change_state, as ``ros2 lifecycle set`` does."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}
        return self.call("csr/change_state", ChangeState,
                         ChangeState.Request(transition=Transition(id=ids[transition]))).success

    def call(self, name: str, srv_type, request, timeout_s: float = 60.0):
        client = self.probe.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout_s), name
            fut = client.call_async(request)
            assert until(fut.done, timeout_s), f"{name}: no response"
            return fut.result()
        finally:
            self.probe.destroy_client(client)

    def close(self) -> None:
        self.graph.shutdown()  # also shuts the context down
        self.executor.shutdown(timeout_sec=5)
        self.thread.join(5)
