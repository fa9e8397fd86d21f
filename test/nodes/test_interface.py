"""A client that knows nothing but ROS finds the whole interface by graph introspection (node
names, lifecycle services, the action and its type, the services, the topics), every name is in
the README's interface reference, and that reference is the one generated from the code.
Also: ``csr-ros ask`` (a separate process) gets an answer from the running graph.
Cost: ~15 s (the csr-ros process imports rclpy)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness import ROOT, InProcessGraph, until

pytestmark = pytest.mark.nodes


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    b, e = "<!-- interface-reference:begin -->", "<!-- interface-reference:end -->"
    return text[text.index(b) + len(b):text.index(e)].strip()


def test_readme_interface_reference_is_the_generated_one():
    from csr_ros.nodes.interface import reference_markdown

    assert _readme_block() == reference_markdown().strip(), "run: python -m csr_ros.nodes.interface"


@pytest.fixture(scope="module")
def up(ros_domain_id):
    # a namespace of its own: nodes of other graphs on this machine (other tests) stay out of the way
    g = InProcessGraph(ros_domain_id, "ros.publish_joint_trajectory:=true", autostart=True,
                       namespace=f"/introspect{os.getpid()}")
    yield g
    g.close()


def test_a_ros_only_client_finds_the_interface(up):
    from rclpy.action import get_action_names_and_types

    from csr_ros.nodes import interface

    probe, ns = up.probe, up.namespace
    want_services = {f"{ns}/{s[0]}": s[1] for s in interface.SERVICES + interface.LIFECYCLE_SERVICES}

    def csr_services():
        return dict(probe.get_service_names_and_types_by_node("csr", ns))
    assert until(lambda: {("csr", ns), ("csr_actions", ns), ("csr_reconciler", ns)}
                 <= set(probe.get_node_names_and_namespaces()) and want_services.keys() <= csr_services().keys())
    services = csr_services()
    for name, typ in want_services.items():
        assert services[name] == [typ], name
    actions = dict(get_action_names_and_types(probe))
    assert actions[f"{ns}/csr/ask"] == ["csr_ros/action/Ask"]
    topics = {n: t for n, t in probe.get_topic_names_and_types()}
    for _, name, typ, _ in interface.TOPICS:
        if not name.startswith("each"):
            full = name if name.startswith("/") else f"{ns}/{name}"
            assert topics[full] == [typ], name
    block = _readme_block()
    for name in [*(s[0] for s in interface.SERVICES + interface.LIFECYCLE_SERVICES), "csr/ask", *NODE_NAMES]:
        assert f"`{name}`" in block, name


NODE_NAMES = ("csr", "csr_actions", "csr_reconciler")


def test_csr_ros_ask_gets_an_answer_from_a_running_graph(up):
    env = dict(os.environ)  # the session's ROS_DOMAIN_ID and localhost discovery (conftest)
    out = subprocess.run([sys.executable, "-m", "csr_ros.cli", "ask", "Where is the red cup?", "--wait-s", "60",
                          "--namespace", up.namespace],
                         capture_output=True, text=True, timeout=120, env=env, cwd="/tmp")
    assert out.returncode == 0, out.stderr
    assert "state has" in out.stdout and "TTFT" in out.stdout and "stop: eos" in out.stdout, out.stdout


@pytest.mark.parametrize("argv, expect", [(["status"], "state v"), (["memory"], "keys, ")])
def test_csr_ros_status_and_memory_read_a_running_graph(up, argv, expect):
    up.probe.observe("red cup is in the kitchen")
    assert until(lambda: up.probe.n("inc") >= 1)
    out = subprocess.run([sys.executable, "-m", "csr_ros.cli", *argv, "--wait-s", "60", "--namespace", up.namespace],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ), cwd="/tmp")
    assert out.returncode == 0 and expect in out.stdout, out.stdout + out.stderr
    if argv == ["memory"]:
        assert "red cup.location: 'kitchen'" in out.stdout
