"""Fixtures of the colcon-route check (helpers in ros_machine.py)."""

from __future__ import annotations

import pytest

from ros_machine import RosMachine, make_ros_machine


@pytest.fixture(scope="session")
def ros_machine(tmp_path_factory) -> RosMachine:
    """A ROS 2 machine emulated from the wheels (see ros_machine.py)."""
    return make_ros_machine(tmp_path_factory.mktemp("ros"))
