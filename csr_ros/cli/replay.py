"""``csr-ros replay BAG``: publish a rosbag2's messages on their topics at the recorded timing.

The bag (MCAP or sqlite3) is read with the pure-Python ``rosbags`` package, so this works where
``ros2 bag`` is not installed. Messages are published as their recorded CDR bytes (no
re-serialisation) with a reliable, volatile QoS (matched by reliable and best-effort
subscribers). ``--clock`` also publishes ``/clock`` (rosgraph_msgs/Clock) with the recorded time,
before every message and at ``--clock-hz`` in between (100 Hz by default, as
``ros2 bag play --clock 100``), for nodes with ``use_sim_time``.
``--loop`` starts over at the end; the clock then keeps increasing (each pass is offset by the
bag's duration), the messages themselves are published as recorded. With ``--loop-rewinds-clock``
every pass publishes the recorded times again, so ``/clock`` jumps back at each loop, as
``ros2 bag play --loop --clock`` and a simulator reset do.
"""

from __future__ import annotations

import argparse
import importlib
import threading
import time
from dataclasses import dataclass
from typing import Callable

CLOCK_TOPIC = "/clock"
LOOP_GAP_NS = 100_000_000  # clock gap between two passes of --loop
CLOCK_HZ = 100.0  # /clock rate between messages by default, Hz


def message_class(msgtype: str):
    """``std_msgs/msg/String`` -> the installed rclpy message class (ImportError if absent)."""
    pkg, _, name = msgtype.rpartition("/")
    module = importlib.import_module(pkg.replace("/", "."))
    return getattr(module, name)


@dataclass
class ReplayStats:
    published: int = 0
    skipped_topics: tuple[str, ...] = ()
    passes: int = 0


def _time_msg(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


class Replayer:
    """Publishes a bag on a node at the recorded timing (scaled by ``rate``).

    Args:
        node: an rclpy node (its context decides the domain).
        bag: rosbag2 directory. rate: playback speed factor (2.0 = twice as fast).
        clock: publish /clock. clock_hz: /clock rate between messages (wall time).
        log: where progress lines go (None: silent).
        rewind_clock: with ``loop``, every pass publishes the recorded times again (the clock
            jumps back at each loop); else the clock keeps increasing over the passes.
    """

    def __init__(self, node, bag: str, rate: float = 1.0, loop: bool = False, clock: bool = False,
                 clock_hz: float = CLOCK_HZ, log: Callable[[str], None] | None = None,
                 rewind_clock: bool = False):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from csr_ros.cli.eval.episode import iter_bag

        self.node, self.bag, self.rate, self.loop, self.rewind_clock = node, bag, rate, loop, rewind_clock
        self.clock_period_s = 1.0 / clock_hz if clock_hz > 0 else float("inf")
        self.log = log or (lambda _s: None)
        self._iter_bag = iter_bag
        self._qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self._pubs: dict[str, object] = {}
        self._skipped: set[str] = set()
        self._clock_pub = None
        if clock:
            from rosgraph_msgs.msg import Clock

            self._clock_pub = node.create_publisher(Clock, CLOCK_TOPIC, 10)
        self.stats = ReplayStats()

    def _publisher(self, topic: str, msgtype: str):
        if topic in self._pubs or topic in self._skipped:
            return self._pubs.get(topic)
        try:
            cls = message_class(msgtype)
        except (ImportError, AttributeError, ValueError):
            self._skipped.add(topic)
            self.log(f"skipping {topic}: message type {msgtype} is not installed")
            return None
        self._pubs[topic] = self.node.create_publisher(cls, topic, self._qos)
        return self._pubs[topic]

    def advertise(self, topics: dict[str, str]) -> None:
        """Create the publishers of ``{topic: msgtype}`` now, so that subscribers can match them
        before :meth:`run` publishes the first message (else the first messages may be lost)."""
        for topic, msgtype in topics.items():
            self._publisher(topic, msgtype)

    def _publish_clock(self, ns: int) -> None:
        if self._clock_pub is not None:
            from rosgraph_msgs.msg import Clock

            self._clock_pub.publish(Clock(clock=_time_msg(ns)))

    def _wait_until(self, wall: float, bag_ns_at: Callable[[float], int], stop: threading.Event) -> bool:
        """Sleep until ``wall`` (perf_counter), ticking /clock; False when stopped."""
        while True:
            now = time.perf_counter()
            if stop.is_set():
                return False
            if now >= wall:
                return True
            self._publish_clock(bag_ns_at(now))
            stop.wait(min(wall - now, self.clock_period_s))

    def run(self, stop: threading.Event | None = None) -> ReplayStats:
        """Play the bag (once, or until ``stop`` with ``loop``); returns the counts."""
        stop = stop or threading.Event()
        offset_ns = 0
        while not stop.is_set():
            duration_ns = self._play_once(stop, offset_ns)
            if duration_ns is None:
                break
            self.stats.passes += 1
            if not self.loop:
                break
            if not self.rewind_clock:
                offset_ns += duration_ns + LOOP_GAP_NS
        self.stats.skipped_topics = tuple(sorted(self._skipped))
        return self.stats

    def _play_once(self, stop: threading.Event, offset_ns: int) -> int | None:
        """One pass; returns its duration in ns (None: stopped or empty)."""
        wall0, first_ns, last = None, None, None
        for m in self._iter_bag(self.bag):
            if first_ns is None:
                wall0, first_ns = time.perf_counter(), m.stamp_ns
            due = wall0 + (m.stamp_ns - first_ns) / 1e9 / self.rate

            def bag_ns_at(wall: float, _f=first_ns) -> int:
                return offset_ns + _f + int((wall - wall0) * self.rate * 1e9)

            if not self._wait_until(due, bag_ns_at, stop):
                return None
            pub = self._publisher(m.topic, m.msgtype)
            if pub is None:
                continue
            last = offset_ns + m.stamp_ns
            self._publish_clock(last)
            pub.publish(m.raw)
            self.stats.published += 1
        if first_ns is None:
            return None
        self.log(f"replayed {self.stats.published} messages")
        return last - offset_ns - first_ns if last is not None else 0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", help="rosbag2 directory (MCAP or sqlite3), or an episode folder with bag/")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--loop", action="store_true", help="start over at the end")
    p.add_argument("--clock", action="store_true", help="publish /clock (for use_sim_time)")
    p.add_argument("--clock-hz", type=float, default=CLOCK_HZ, help="/clock rate between messages, Hz")
    p.add_argument("--loop-rewinds-clock", action="store_true",
                   help="with --loop: every pass publishes the recorded times again (/clock jumps back "
                        "at each loop, as ros2 bag play --loop --clock does); default: the clock keeps increasing")


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from csr_ros.cli.eval.episode import resolve_episode

    bag = str(resolve_episode(args.bag).bag)
    rclpy.init()
    node = rclpy.create_node("csr_replay")
    stop = threading.Event()
    try:
        rep = Replayer(node, bag, args.rate, args.loop, args.clock, args.clock_hz, node.get_logger().info,
                       rewind_clock=args.loop_rewinds_clock)
        stats = rep.run(stop)
        node.get_logger().info(f"done: {stats.published} messages, {stats.passes} pass(es)")
    except (KeyboardInterrupt, ExternalShutdownException):
        stop.set()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
