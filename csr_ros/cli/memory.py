"""``csr-ros memory [ENTITY]``: the entity memory of the running graph (service
``csr/get_entity_memory``, csr_ros/srv/GetEntityMemory): per key the first and newest value with
their times and the number of observations. Same as
``ros2 service call /csr/get_entity_memory csr_ros/srv/GetEntityMemory "{entity: red_cup}"``."""

from __future__ import annotations

import argparse
import sys

from csr_ros.cli.ros_client import add_common, client_node


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("entity", nargs="?", default="", help="an entity (red_cup) or a key (red_cup.location); "
                   "default: everything")
    add_common(p)


def _t(stamp) -> str:
    return f"{stamp.sec + stamp.nanosec / 1e9:.1f}"


def run(args: argparse.Namespace) -> int:
    from csr_ros.srv import GetEntityMemory

    with client_node("csr_memory_client", args.namespace) as (node, ex):
        client = node.create_client(GetEntityMemory, "csr/get_entity_memory")
        if not client.wait_for_service(timeout_sec=args.wait_s):
            print(f"no csr/get_entity_memory service within {args.wait_s:g} s", file=sys.stderr)
            return 1
        fut = client.call_async(GetEntityMemory.Request(entity=args.entity))
        ex.spin_until_future_complete(fut, timeout_sec=args.wait_s)
        r = fut.result()
        if r is None or not r.success:
            print(f"error: {r.message if r is not None else 'no response'}", file=sys.stderr)
            return 1
        for e in r.entries:
            first = "" if e.count == 1 else f" (first {e.first_value!r} @ {_t(e.first_stamp)} s)"
            print(f"{e.key}: {e.last_value!r} @ {_t(e.last_stamp)} s{first}, {e.count} obs")
        print(f"-- {len(r.entries)} keys, {r.increments} increments folded in")
        return 0
