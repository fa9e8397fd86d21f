"""``csr-ros run``: start the ROS 2 graph (inference, action and reconciler nodes) in one process
and block until SIGINT / SIGTERM (the same as the ``csr_node`` ROS executable)."""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params-file", metavar="FILE", help="ROS 2 parameters file (default: the installed share/csr_ros/config/csr.yaml)")
    p.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                   help="everything after it goes to ROS (-p name:=value, -r __ns:=/robot, --log-level ...)")


def run(args: argparse.Namespace) -> int:
    from csr_ros.nodes.bringup import run as run_graph

    ros_args = ["--ros-args", *(["--params-file", args.params_file] if args.params_file else []),
                *args.ros_args]
    return run_graph(ros_args)
