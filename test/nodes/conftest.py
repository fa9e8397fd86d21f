"""Fixtures for tests that run real rclpy nodes."""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheel) is not installed")


@pytest.fixture
def ros_context(ros_domain_id):
    """A private rclpy Context, initialised on the session's domain id and shut down after."""
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        yield ctx
    finally:
        ctx.try_shutdown()
