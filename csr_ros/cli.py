"""``csr-ros``: the command-line entry point.

Subcommands import their heavy dependencies (torch, rclpy) lazily, so ``csr-ros --help`` is quick
and the ROS-free ones (``bench``, ``demo --no-ros``) run on machines without ROS.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

Handler = Callable[[argparse.Namespace], int]


def _cmd_demo(args: argparse.Namespace) -> int:
    from csr_ros.demo import run_demo

    return run_demo(args)


def _cmd_bench_ttft(args: argparse.Namespace) -> int:
    from csr_ros.bench import ttft

    ttft.run(args)
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from csr_ros.bench import ttft

    bench = sub.add_parser("bench", help="benchmarks that write JSON (ttft, ...)")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bsub.add_parser("ttft", help="TTFT of CSR vs full re-prefill vs the one-forward floor")
    ttft.add_args(p)
    p.set_defaults(func=_cmd_bench_ttft)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csr-ros",
        description="csr_ros: an LLM as a real-time robot policy over a cached, never re-read state.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job: load the model, stream observations, answer, print TTFT")
    demo.add_argument("--model", default="embedded", help="'embedded' or a local HF model folder")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=_cmd_demo)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


def replay_main() -> int:
    """Entry point of the ``csr_replay`` ROS executable (``csr-ros replay``)."""
    return main(["replay", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
