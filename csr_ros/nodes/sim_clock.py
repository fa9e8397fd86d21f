"""Simulated time in one process with several nodes: ONE ``/clock`` subscription, and clock jumps
forwarded to the scheduler.

Why one subscription (issue 22, measured; docs/benchmarks.md): every rclpy node keeps its own
time source, and with ``use_sim_time`` each subscribes to ``/clock`` itself. ``/clock`` comes at
100 Hz (``ros2 bag play --clock 100``, simulators). In the inference node's MultiThreadedExecutor
every message costs a Python rebuild of the wait set over all the node's entities plus a
thread-pool hand-off, under the interpreter lock: sampled with py-spy (``--gil``, SmolLM2 on 2
cores), the inference executor held the lock in 69 % of the samples and the model worker in
18 % (without sim time: 5 % and 87 %). The model worker's frames slowed from 2.3 to 0.6 per
second, chunks expired before the next decision (gaps of 1.8 s here, 10.7 s in the issue's run)
and answers, one token per frame, crawled. Nothing waited on a mix of clocks: the frames
starved. Here the action node (its own single-threaded executor, few entities) holds the only
``/clock`` subscription and sets the time of every clock of the process (inference executor
then 4 % of the samples, model worker 76 %; 2.0 frames/s, max gap 111 ms, as without sim time).
The scheduler's clock (stamps) and the action clock (ticks) are then also one time, set in
the same callback, where before each node's executor moved its own clock.

Each node still has its own ``use_sim_time`` parameter (the inference node forwards changes to
its followers); a follower's time source keeps switching its clock between system and ROS
time, it just no longer subscribes.
"""

from __future__ import annotations

from typing import Callable

from rclpy.clock import JumpHandle, JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node


def share_clock(source: Node, *followers: Node) -> None:
    """Drive the clocks of ``followers`` from ``source``'s ``/clock`` subscription and drop
    the followers' own subscriptions (see the module doc). Uses rclpy's per-node time source
    (``Node._time_source``: rclpy has no public accessor; present since Dashing)."""
    for node in followers:
        node._time_source.detach_node()  # destroys its /clock subscription, keeps its clock
        source._time_source.attach_clock(node.get_clock())


def on_jump_back(node: Node, min_back_ns: int, callback: Callable[[], None]) -> JumpHandle:
    """Call ``callback`` (no arguments, must not block) after ``node``'s clock jumps back by more
    than ``min_back_ns`` or switches between system and ROS time. Keep the handle alive."""
    threshold = JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-abs(min_back_ns)),
                              on_clock_change=True)
    return node.get_clock().create_jump_callback(threshold, post_callback=lambda _jump: callback())
