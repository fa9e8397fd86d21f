"""An exception in the reconciler node's executor thread (one that escapes ``run_once``): the
node's timer catches it, marks the reconciler failed (so it never stays ``building``), and its
executor keeps spinning; the next request builds and hands over a state."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.nodes


def _until(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_an_exception_escaping_run_once_is_caught_and_the_reconciler_recovers(ros_context):
    from rclpy.executors import SingleThreadedExecutor

    from csr_ros.core.backends.fake import FakeBackend
    from csr_ros.core.engine import CsrEngine
    from csr_ros.core.reconciler import Reconciler
    from csr_ros.nodes.reconciler_node import ReconcilerNode

    backend = FakeBackend()
    engine = CsrEngine(backend, budget_tokens=512, system_prompt="robot")
    for i in range(8):
        engine.submit("/obs", i * 10**9, f"the cup {i} is in the kitchen")
    engine.flush()
    reconciler = Reconciler(backend, "drop_oldest", 0.5, retry_backoff_s=0.0, max_backoff_s=0.0)
    offer, calls = reconciler.handoff.offer, []

    def failing_offer(version, payload):  # raises inside run_once's bookkeeping, after the build
        calls.append(version)
        if len(calls) == 1:
            raise RuntimeError("injected exception in the reconciler thread")
        return offer(version, payload)

    reconciler.handoff.offer = failing_offer
    stop = threading.Event()
    node = ReconcilerNode(ros_context, reconciler, 0.01, stop)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, name="reconciler-executor", daemon=True)
    thread.start()
    try:
        assert reconciler.request(engine.snapshot())
        assert _until(lambda: reconciler.state == "failed")  # not stuck in "building"
        assert "injected exception in the reconciler thread" in reconciler.counters.last_error
        assert thread.is_alive() and engine.check_invariant() and engine.ledger.version == 0
        assert reconciler.request(engine.snapshot())  # accepting again after the back-off
        assert _until(lambda: reconciler.handoff.peek_version() is not None)
        engine.install(*reconciler.take_ready(engine.ledger.version))
        assert engine.ledger.version == 1 and engine.check_invariant() and calls == [1, 1]
    finally:
        stop.set()
        executor.shutdown(timeout_sec=5)
        thread.join(5)
        node.destroy_node()
