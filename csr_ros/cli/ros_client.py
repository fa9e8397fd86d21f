"""What the ROS client commands (``csr-ros ask``, ``status``, ``memory``) share: a private rclpy
Context with one client node and its executor, closed on exit (no ``ros2`` CLI needed)."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Iterator


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", default="", help="namespace of the csr graph (e.g. /robot1)")
    p.add_argument("--wait-s", type=float, default=30.0, help="longest wait for the graph to answer, s")


@contextmanager
def client_node(name: str, namespace: str = "") -> Iterator[tuple[object, object]]:
    """``(node, executor)`` on a private Context (no rclpy signal handlers: Ctrl-C raises
    KeyboardInterrupt in the caller)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    ctx = Context()
    rclpy.init(context=ctx, args=[name])
    node = Node(name, context=ctx, namespace=namespace or "")
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        yield node, ex
    finally:
        ex.shutdown(timeout_sec=2.0)
        node.destroy_node()
        ctx.try_shutdown()
