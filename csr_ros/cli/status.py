"""``csr-ros status``: the graph's csr_ros/CacheStatus once (transient local: the latest one at
once), or every one with ``--follow``. Same as ``ros2 topic echo /csr/status``."""

from __future__ import annotations

import argparse
import sys
import time

from csr_ros.cli.ros_client import add_common, client_node


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--follow", action="store_true", help="print every status until Ctrl-C")
    add_common(p)


def status_line(s) -> str:
    """One status as a line (what CacheStatus reports)."""
    return (f"state v{s.state_version}: {s.cached_tokens}/{s.budget_tokens} tokens, {s.increments_total} increments "
            f"({s.increments_rejected} rejected), reconciler {s.reconciler_state}, evictions {s.evictions} "
            f"(sync {s.sync_fallbacks}), last TTFT {s.last_ttft_ms:.0f} ms, frame overruns {s.frame_overruns}")


def run(args: argparse.Namespace) -> int:
    from csr_ros.msg import CacheStatus
    from csr_ros.nodes import qos

    with client_node("csr_status_client", args.namespace) as (node, ex):
        got = []
        node.create_subscription(CacheStatus, "csr/status", got.append, qos.STATUS)
        try:
            while True:
                n = len(got)
                end = time.monotonic() + args.wait_s
                while len(got) == n and time.monotonic() < end:
                    ex.spin_once(timeout_sec=0.1)
                if len(got) == n:
                    print(f"no csr/status within {args.wait_s:g} s (is the graph configured?)", file=sys.stderr)
                    return 1
                print(status_line(got[-1]), flush=True)
                if not args.follow:
                    return 0
        except KeyboardInterrupt:
            return 0
