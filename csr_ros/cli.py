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


def _cmd_bench_evict(args: argparse.Namespace) -> int:
    from csr_ros.bench import evict

    evict.run(args)
    return 0


def _cmd_bench_multitask(args: argparse.Namespace) -> int:
    from csr_ros.bench import multitask

    multitask.run(args)
    return 0


def _cmd_bench_soak(args: argparse.Namespace) -> int:
    from csr_ros.bench import soak

    return soak.run(args)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from csr_ros.bench import evict, multitask, soak, ttft

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


def _add_train_head(sub: argparse._SubParsersAction) -> None:
    from csr_ros import train_head

    p = sub.add_parser("train-head", help="train a learned action head (safetensors) from a recording")
    train_head.add_args(p)
    p.set_defaults(func=train_head.run)


def _cmd_run(args: argparse.Namespace) -> int:
    from csr_ros.nodes.bringup import run

    ros_args = ["--ros-args", *(["--params-file", args.params_file] if args.params_file else []),
                *args.ros_args]
    return run(ros_args)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="start the ROS 2 graph (inference + reconciler nodes) in one process")
    p.add_argument("--params-file", metavar="FILE", help="ROS 2 parameters file (e.g. config/csr.yaml)")
    p.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                   help="everything after it goes to ROS (-p name:=value, -r __ns:=/robot, --log-level ...)")
    p.set_defaults(func=_cmd_run)


def _add_episodes(sub: argparse._SubParsersAction) -> None:
    """make-episode, eval and replay (issue 8): each module brings its own arguments and run()."""
    from csr_ros import replay
    from csr_ros.eval import make_episode, run_eval

    for name, mod, text in (
            ("make-episode", make_episode, "write a synthetic household episode (bag + QA + params file)"),
            ("eval", run_eval, "recall and TTFT of csr vs memory, window, rag, full re-prefill, oracle on episodes"),
            ("replay", replay, "publish a rosbag2's messages at the recorded timing (with /clock)")):
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
    from csr_ros.demo import add_args as _demo_args

    _demo_args(demo)
    demo.set_defaults(func=_cmd_demo)
    _add_bench(sub)
    _add_run(sub)
    _add_episodes(sub)
    _add_train_head(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


def _without_ros_args(argv: list[str]) -> list[str]:
    """``argv`` without ``--ros-args ... [--]`` sections (launch_ros always appends one; rclpy
    reads them from sys.argv itself)."""
    out, in_ros = [], False
    for a in argv:
        if a == "--ros-args":
            in_ros = True
        elif in_ros and a == "--":
            in_ros = False
        elif not in_ros:
            out.append(a)
    return out


def replay_main() -> int:
    """Entry point of the ``csr_replay`` ROS executable (``csr-ros replay``)."""
    return main(["replay", *_without_ros_args(sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
