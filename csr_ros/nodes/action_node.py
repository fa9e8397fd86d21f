"""The action clock ``csr_actions``: its own node, spun by its own single-threaded executor
(bringup.py), so the control-rate publication never queues behind perception storms, request
bursts or status work on the inference executor.

Topics (relative, so a namespace applies):
  out: csr/action_chunk     csr_ros/ActionChunk at the control rate (reliable)
       csr/joint_trajectory trajectory_msgs/JointTrajectory (ros.publish_joint_trajectory)

Its only callback is the timer, which calls the scheduler's non-blocking ``chunk_for_publish``
(the time-shifted current chunk, or the hold chunk whenever there is no valid one: never a
stale chunk, never a silent tick). The timer follows ROS time (simulated in a replay with
``use_sim_time``, which the inference node forwards here); with it, this node's executor holds
the process's only ``/clock`` subscription (sim_clock.py).
"""

from __future__ import annotations

from rclpy.node import Node
from rclpy.parameter import Parameter
from trajectory_msgs.msg import JointTrajectory

from csr_ros.msg import ActionChunk
from csr_ros.nodes import conversions as conv
from csr_ros.nodes import qos

NODE_NAME = "csr_actions"


class ActionNode(Node):
    """Timer at the control rate -> ``scheduler.chunk_for_publish`` -> publish. Never raises
    into its executor. Follows the inference node's lifecycle: :meth:`bind` at its configure
    (publishers + timer), :meth:`unbind` at its cleanup; while it is inactive the scheduler
    hands out the hold chunk once and then nothing."""

    def __init__(self, context, scheduler=None, control_rate_hz: float = 10.0,
                 publish_joint_trajectory: bool = False, use_sim_time: bool = False):
        # Local arguments win over the process's global ones (launch_ros renames every node of
        # the process with `-r __node:=csr`): this keeps the node's own name.
        super().__init__(NODE_NAME, context=context,
                         cli_args=["--ros-args", "-r", f"__node:={NODE_NAME}"],
                         parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)])
        self.scheduler = self.pub_chunk = self.pub_traj = self.action_timer = None
        if scheduler is not None:
            self._wire(scheduler, control_rate_hz, publish_joint_trajectory)

    def _wire(self, scheduler, control_rate_hz: float, publish_joint_trajectory: bool) -> None:
        self.pub_chunk = self.create_publisher(ActionChunk, "csr/action_chunk", qos.ACTIONS)
        self.pub_traj = (self.create_publisher(JointTrajectory, "csr/joint_trajectory", qos.ACTIONS)
                         if publish_joint_trajectory else None)
        self.scheduler = scheduler
        self.action_timer = self.create_timer(1.0 / control_rate_hz, self._publish_chunk)

    def bind(self, core, cfg) -> None:
        """The inference node was configured: publish ``core.scheduler``'s chunks."""
        self._wire(core.scheduler, cfg.control.control_rate_hz, cfg.ros.publish_joint_trajectory)

    def unbind(self) -> None:
        """The inference node is cleaned up: no timer, no publishers (idempotent)."""
        self.scheduler = None
        for entity, destroy in ((self.action_timer, self.destroy_timer), (self.pub_traj, self.destroy_publisher),
                                (self.pub_chunk, self.destroy_publisher)):
            if entity is not None:
                destroy(entity)
        self.pub_chunk = self.pub_traj = self.action_timer = None

    def now_ns(self) -> int:
        """ROS time of this node's clock (simulated time when use_sim_time is set), ns."""
        return self.get_clock().now().nanoseconds

    def _publish_chunk(self) -> None:
        """Action timer: only ``chunk_for_publish`` (time-shifted current chunk, or the hold)."""
        try:
            sched = self.scheduler
            chunk = sched.chunk_for_publish(self.now_ns()) if sched is not None else None
            if chunk is None:
                return
            self.pub_chunk.publish(conv.chunk_to_msg(chunk))
            if self.pub_traj is not None:
                traj = conv.chunk_to_trajectory(chunk)
                if traj is not None:
                    self.pub_traj.publish(traj)
        except Exception as e:  # noqa: BLE001 - never raise into the executor
            self.get_logger().error(f"action publish failed: {type(e).__name__}: {e}",
                                    throttle_duration_sec=5.0)
