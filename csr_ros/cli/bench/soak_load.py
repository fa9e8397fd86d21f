"""The load side of ``csr-ros bench soak``: a probe node that publishes the soak's mixed load and
records what the graph publishes (ActionChunks with their publication stamps, answers, increments,
status and diagnostics).

Load per 100 ms tick (``tick``): joint states at 10 Hz, poses at 2 Hz, observations and camera
images at 1 Hz; during the burst (minute 3, or the middle third of a run shorter than 4 minutes)
every perception topic runs at 10x. Every 2 s one malformed or adversarial message (huge, empty or
control-character text, NaN/inf or mismatched JointState arrays, images with a wrong encoding,
step or size, a non-unit quaternion, stamps far in the future or going backwards); a question
every 5 s, 40 at once every 30 s (beyond ``language.max_open_requests``), a bad request id every
15 s (huge, control characters, empty, a duplicate of an open one), an instruction every 20 s
and a 100 000-character one every 40 s.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from csr_ros.msg import ActionChunk, CacheStatus, StateIncrement, Utterance
from csr_ros.nodes import qos

ROOMS = ["kitchen", "hall", "office", "lab", "garage"]
THINGS = ["red mug", "blue box", "green cup", "yellow ball", "black bag", "white plate"]


def _stamp(msg, t_s: float):
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t_s), int((t_s % 1) * 1e9)
    return msg


def _image(k: int, encoding: str = "mono8", step_extra: int = 0, size_extra: int = 0) -> Image:
    img = np.full((60, 80), 40, np.uint8)
    x = (k * 7) % 60
    img[10:40, x:x + 20] = 220  # a bright block that moves: scene changes
    data = img.tobytes() + bytes(size_extra)
    return Image(height=60, width=80, encoding=encoding, step=80 + step_extra, data=data)


def _pose(x: float, qw: float = 1.0) -> PoseStamped:
    p = PoseStamped()
    p.header.frame_id = "map"
    p.pose.position.x, p.pose.orientation.w = x, qw
    return p


def burst_window_s(duration_s: float) -> tuple[float, float]:
    """When perception runs at 10x, s into the run: minute 3, or the middle third of a short run."""
    return (120.0, 180.0) if duration_s >= 240 else (duration_s / 3, 2 * duration_s / 3)


class Driver(Node):
    """Publishes the load; records the graph's output (thread-safe counters)."""

    def __init__(self, context, rate_hz: float = 10.0):
        super().__init__("csr_soak_driver", context=context)
        self.period_s = 1.0 / rate_hz
        self.lock = threading.Lock()
        self.chunks: list[tuple[float, float, bool]] = []  # (arrival monotonic s, publication s, is_hold)
        self.finals: dict[str, str] = {}
        self.asked: dict[str, float] = {}  # single questions: monotonic s when asked
        self.first_piece: dict[str, float] = {}  # ... and when the first piece of the answer came
        self.partials = 0
        self.seqs: set[int] = set()
        self.lives: list[dict] = [{}]  # per graph process: last status/diagnostic counters
        self.sent: dict[str, int] = {}
        self.notes: list[str] = []
        self.open_ids: list[str] = []
        self._k, self._next_tick, self._qid = 0, None, 0
        subs = [(ActionChunk, "/csr/action_chunk", qos.ACTIONS, self._on_chunk),
                (Utterance, "/csr/language", qos.LANGUAGE, self._on_language),
                (StateIncrement, "/csr/increments", qos.INCREMENTS, self._on_inc),
                (CacheStatus, "/csr/status", qos.STATUS, self._on_status),
                (DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS, self._on_diag)]
        for typ, topic, profile, cb in subs:
            self.create_subscription(typ, topic, cb, profile)
        self.pubs = {"obs": self.create_publisher(String, "/observations", qos.PERCEPTION_RELIABLE),
                     "joints": self.create_publisher(JointState, "/joint_states", qos.PERCEPTION),
                     "image": self.create_publisher(Image, "/camera/image_raw", qos.PERCEPTION),
                     "pose": self.create_publisher(PoseStamped, "/robot_pose", qos.PERCEPTION),
                     "ask": self.create_publisher(Utterance, "/csr/ask", qos.LANGUAGE),
                     "instruction": self.create_publisher(String, "/csr/instruction", qos.LANGUAGE)}
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self)
        self._thread = threading.Thread(target=self._executor.spin, name="soak-probe", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ recording
    def _on_chunk(self, msg: ActionChunk, info) -> None:
        with self.lock:
            self.chunks.append((time.monotonic(), info["source_timestamp"] * 1e-9, bool(msg.is_hold)))

    def _on_language(self, msg: Utterance) -> None:
        with self.lock:
            if msg.request_id in self.asked:
                self.first_piece.setdefault(msg.request_id, time.monotonic())
            if msg.is_final:
                self.finals[msg.request_id] = msg.text
                if msg.request_id in self.open_ids:
                    self.open_ids.remove(msg.request_id)
            else:
                self.partials += 1

    def _on_inc(self, msg: StateIncrement) -> None:
        with self.lock:
            self.seqs.add(int(msg.sequence))

    def _on_status(self, msg: CacheStatus) -> None:
        with self.lock:
            self.lives[-1].update(increments_rejected=msg.increments_rejected, evictions=msg.evictions,
                                  sync_fallbacks=msg.sync_fallbacks, frame_overruns=msg.frame_overruns)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        values = {kv.key: kv.value for s in msg.status for kv in s.values}
        with self.lock:
            for key in ("increments_coalesced", "instructions_rejected", "requests_refused", "policy_failures",
                        "holds_published", "server_outages", "server_rewarms", "server_failovers",
                        "server_refused_while_away"):
                if key in values:
                    self.lives[-1][key] = int(values[key])

    def note(self, text: str) -> None:
        self.notes.append(text)

    def wait_for_chunks(self, timeout_s: float, graph) -> None:
        """Block until an ActionChunk newer than this call arrives (a new process life is up)."""
        t0 = time.monotonic()
        with self.lock:
            if self.chunks:
                self.lives.append({})
        while time.monotonic() - t0 < timeout_s:
            with self.lock:
                if self.chunks and self.chunks[-1][0] > t0:
                    return
            if graph.proc.poll() is not None:
                raise RuntimeError(f"the graph exited ({graph.proc.returncode}): "
                                   f"{graph.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"no ActionChunk within {timeout_s:.0f} s: {graph.log_path.read_text()[-3000:]}")

    # ------------------------------------------------------------------ load
    def _send(self, key: str, msg) -> None:
        self.pubs[key].publish(msg)
        self.sent[key] = self.sent.get(key, 0) + 1

    def tick(self, elapsed_s: float, duration_s: float) -> None:
        """Publish one tick of load, then sleep until the next tick."""
        k, now = self._k, time.time()
        start, end = burst_window_s(duration_s)
        burst = start <= elapsed_s < end
        mult = 10 if burst else 1
        for j in range(mult):
            self._send("joints", _stamp(JointState(name=["shoulder", "elbow"],
                                                   position=[0.3 * math.sin((10 * k + j) / 40), 0.1 * (k % 20)]), now))
        if burst or k % 10 == 0:
            self._send("obs", String(data=f"the {THINGS[k % 6]} is in the {ROOMS[(k // 10) % 5]}"))
            self._send("image", _image(k))
        for _ in range(2 if burst else (1 if k % 5 == 0 else 0)):
            self._send("pose", _stamp(_pose(0.05 * k), now))
        if k % 20 == 10:
            self._adversarial(k // 20, now)
        self._questions(k)
        if k % 200 == 100:
            self._send("instruction", String(data=f"keep the {ROOMS[k % 5]} tidy"))
        if k % 400 == 300:
            self._send("instruction", String(data="z" * 100_000))
        self._k += 1
        self._pace()

    def _pace(self) -> None:
        now = time.monotonic()
        self._next_tick = now if self._next_tick is None or now - self._next_tick > 1.0 else self._next_tick
        self._next_tick += self.period_s
        time.sleep(max(0.0, self._next_tick - time.monotonic()))

    def _adversarial(self, i: int, now: float) -> None:
        bad = [("obs", String(data="the shelf holds " + "many parts " * 100_000)),        # ~1 MB text
               ("obs", String(data="   ")),
               ("obs", String(data="door\x07open\x1b[2J")),
               ("joints", JointState(name=["shoulder", "elbow"], position=[float("nan"), 0.1])),
               ("joints", JointState(name=["shoulder", "elbow"], position=[0.1, float("inf")])),
               ("joints", JointState(name=["shoulder", "elbow", "wrist"], position=[0.1])),
               ("image", _image(i, encoding="yuv422")),
               ("image", _image(i, step_extra=-5)),
               ("image", _image(i, size_extra=13)),
               ("pose", _pose(1.0, qw=3.0)),
               ("joints", _stamp(JointState(name=["shoulder", "elbow"], position=[0.7, 0.7]), now + 1e6)),
               ("joints", _stamp(JointState(name=["shoulder", "elbow"], position=[0.9, 0.9]), now - 3.0))]
        key, msg = bad[i % len(bad)]
        self._send(key, msg)
        self.sent["adversarial"] = self.sent.get("adversarial", 0) + 1

    def _ask(self, rid: str, text: str) -> None:
        with self.lock:
            self.open_ids.append(rid)
        self._send("ask", Utterance(request_id=rid, text=text))

    def _questions(self, k: int) -> None:
        if k % 50 == 25:
            self._qid += 1
            with self.lock:
                self.asked[f"q{self._qid}"] = time.monotonic()
            self._ask(f"q{self._qid}", f"where is the {THINGS[k % 6]}?")
        if k % 300 == 150:
            for j in range(40):
                self._ask(f"burst{k}-{j}", f"what did you see in the {ROOMS[j % 5]}?")
        if k % 150 == 75:
            with self.lock:
                dup = self.open_ids[0] if self.open_ids else "none"
            rid = ["x" * 10_000, "bad\x1bid", "", dup][(k // 150) % 4]
            self._send("ask", Utterance(request_id=rid, text="are you there?"))
            self.sent["bad_request_ids"] = self.sent.get("bad_request_ids", 0) + 1

    # ------------------------------------------------------------------ results
    def gaps(self, excluded: list[list[float]]) -> dict:
        """Gaps between consecutive chunks (publication stamps) outside the excluded windows."""
        with self.lock:
            chunks = list(self.chunks)
        limit = 2 * self.period_s
        over, worst, worst_arrival, holds = [], 0.0, 0.0, sum(1 for c in chunks if c[2])
        for (a0, s0, _), (a1, s1, _) in zip(chunks, chunks[1:]):
            if any(a0 <= b and a1 >= a for a, b in excluded):
                continue  # the gap spans a kill and restart
            gap = s1 - s0
            worst, worst_arrival = max(worst, gap), max(worst_arrival, a1 - a0)
            if gap > limit:
                over.append([round(a0 - chunks[0][0], 1), round(gap, 3)])
        span = chunks[-1][1] - chunks[0][1] if len(chunks) > 1 else 0.0
        return {"chunks_received": len(chunks), "holds_received": holds,
                "action_gaps_over_2_periods": len(over), "action_gaps_at_s": over[:50],
                "action_gap_max_s": round(worst, 3),
                "action_gap_max_arrival_s": round(worst_arrival, 3),
                "publish_rate_hz": round(len(chunks) / span, 2) if span else 0.0}

    def counts(self) -> dict:
        with self.lock:
            lives, finals, sent = [dict(x) for x in self.lives], dict(self.finals), dict(self.sent)
        total = lambda key: sum(life.get(key, 0) for life in lives)  # noqa: E731
        refused = sum(1 for t in finals.values() if t.startswith("refused:"))
        rejected = total("increments_rejected") + total("instructions_rejected")
        perception = sum(sent.get(k, 0) for k in ("obs", "joints", "image", "pose"))
        return {"messages_in": perception + sent.get("ask", 0) + sent.get("instruction", 0),
                "messages_rejected": rejected + refused, "perception_in": perception,
                "perception_rejected": total("increments_rejected"), "increments_coalesced": total("increments_coalesced"),
                "adversarial_sent": sent.get("adversarial", 0), "questions_sent": sent.get("ask", 0),
                "bad_request_ids_sent": sent.get("bad_request_ids", 0), "requests_refused": refused,
                "instructions_rejected": total("instructions_rejected"),
                "answers": sum(1 for t in finals.values() if not t.startswith(("refused:", "error:"))),
                "answers_failed_by_model_error": sum(1 for t in finals.values() if t.startswith("error:")),
                "policy_failures": total("policy_failures"), "holds_published": total("holds_published"),
                "evictions": total("evictions"), "sync_fallbacks": total("sync_fallbacks"),
                "frame_overruns": total("frame_overruns"),
                **{k: total(k) for k in ("server_outages", "server_rewarms", "server_failovers",
                                         "server_refused_while_away")}}

    def question_times(self) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
        """(asked, first piece, final text) of the single questions, monotonic s."""
        with self.lock:
            return dict(self.asked), dict(self.first_piece), dict(self.finals)

    def announced_seqs(self) -> set[int]:
        with self.lock:
            return set(self.seqs)

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=5)
        self._thread.join(5)
        self.destroy_node()
