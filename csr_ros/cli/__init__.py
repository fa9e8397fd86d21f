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
    from csr_ros.cli.demo import run_demo

    return run_demo(args)


def _cmd_bench_ttft(args: argparse.Namespace) -> int:
    from csr_ros.cli.bench import ttft

    ttft.run(args)
    return 0


def _cmd_bench_evict(args: argparse.Namespace) -> int:
    from csr_ros.cli.bench import evict

    evict.run(args)
    return 0


def _cmd_bench_multitask(args: argparse.Namespace) -> int:
    from csr_ros.cli.bench import multitask

    multitask.run(args)
    return 0


def _cmd_bench_soak(args: argparse.Namespace) -> int:
    from csr_ros.cli.bench import soak

    return soak.run(args)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from csr_ros.cli.bench import evict, multitask, soak, ttft

    bench = sub.add_parser("bench", help="benchmarks that write JSON (ttft, ...)")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bsub.add_parser("ttft", help="TTFT of CSR vs full re-prefill vs the one-forward floor")
    ttft.add_args(p)
    p.set_defaults(func=_cmd_bench_ttft)
    p = bsub.add_parser("evict", help="TTFT through eviction cycles: ASR vs synchronous eviction")
    evict.add_args(p)
    p.set_defaults(func=_cmd_bench_evict)
    p = bsub.add_parser("multitask", help="fixed-rate actions + streamed language: isolated vs shared cache")
    multitask.add_args(p)
    p.set_defaults(func=_cmd_bench_multitask)
    p = bsub.add_parser("soak", help="mixed load with injected faults and process kills on the real graph: "
                        "gaps, lost increments, resident memory")
    soak.add_args(p)
    p.set_defaults(func=_cmd_bench_soak)


def _add_commands(sub: argparse._SubParsersAction) -> None:
    """The commands whose module brings its own ``add_args`` and ``run``."""
    from csr_ros.cli import ask, facts, make_episode, memory, replay, run, status, train_head
    from csr_ros.cli.eval import run_eval

    for name, mod, text in (
            ("run", run, "start the ROS 2 graph (inference + reconciler nodes) in one process"),
            ("ask", ask, "ask the running graph a question (the csr/ask action): streams the answer, "
             "prints TTFT; Ctrl-C cancels"),
            ("status", status, "the running graph's CacheStatus once, or --follow"),
            ("memory", memory, "the running graph's entity memory (all, or one ENTITY)"),
            ("make-episode", make_episode, "write a synthetic household episode (bag + QA + params file)"),
            ("facts", facts, "the facts a params file extracts from a bag, per input (check patterns)"),
            ("eval", run_eval, "recall and TTFT of csr vs memory, window, rag, full re-prefill, oracle on episodes"),
            ("replay", replay, "publish a rosbag2's messages at the recorded timing (with /clock)"),
            ("train-head", train_head, "train a learned action head (safetensors) from a recording")):
        p = sub.add_parser(name, help=text)
        mod.add_args(p)
        p.set_defaults(func=mod.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csr-ros",
        description="csr_ros: an LLM as a real-time robot policy over a cached, never re-read state.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job: the graph reads a replayed episode, answers its "
                          "questions; live action rate, TTFT, evictions")
    from csr_ros.cli.demo import add_args as _demo_args

    _demo_args(demo)
    demo.set_defaults(func=_cmd_demo)
    _add_bench(sub)
    _add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


def _without_ros_args(argv: list[str]) -> list[str]:
    """``argv`` without ``--ros-args ... [--]`` sections (launch_ros always appends one; rclpy
    reads them from sys.argv itself)."""
    from csr_ros.core.config import split_ros_args

    return split_ros_args(argv)[0]


def replay_main() -> int:
    """Entry point of the ``csr_replay`` ROS executable (``csr-ros replay``)."""
    return main(["replay", *_without_ros_args(sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
