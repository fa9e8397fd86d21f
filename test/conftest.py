"""Shared test set-up. Must not import rclpy or torch (ROS-free core tests import this too).

ROS isolation is configured here, at import time, before any test module can import rclpy:
- ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: DDS discovery stays on this machine;
- ROS_DOMAIN_ID: unique per test session (derived from the process id, overridable with
  CSR_TEST_ROS_DOMAIN_ID), so concurrent test runs and other ROS traffic do not cross-talk.
Subprocesses started by tests inherit both.
"""

from __future__ import annotations

import os

import pytest

# Domain ids 1..101 are valid on every platform with the default port mapping.
ROS_DOMAIN_ID = int(os.environ.get("CSR_TEST_ROS_DOMAIN_ID") or (os.getpid() % 101 + 1))
os.environ["ROS_DOMAIN_ID"] = str(ROS_DOMAIN_ID)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the range setting


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    """The ROS_DOMAIN_ID of this test session (pass it to rclpy.init(domain_id=...))."""
    return ROS_DOMAIN_ID
