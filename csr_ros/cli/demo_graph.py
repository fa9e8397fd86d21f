"""The live half of ``csr-ros demo``: the csr_ros graph reading a replayed episode.

One process, one private rclpy Context: the graph (inference + reconciler nodes, from
:mod:`csr_ros.nodes.bringup`), the replayer (:mod:`csr_ros.cli.replay`) publishing the episode's bag
on its topics at ``rate`` times the recorded speed, and the demo's own node, :class:`LiveView`,
which asks the episode's questions through the ``csr/ask`` action (csr_ros/action/Ask: the
answers stream as its feedback) and listens to ``csr/action_chunk`` and ``csr/status``. A question is asked at its time in the episode, or as
soon as an answer slot is free when ``language.max_open_requests`` answers are still streaming
(never refused). It ends by itself once the bag is replayed and every question is answered.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

STATUS_EVERY_S = 5.0  # a live status line this often, s
RATE_WINDOW_S = 3.0  # the live action rate is counted over this window, s


@dataclass
class Answer:
    """What came back for one question (times: perf_counter, s)."""

    asked: float
    first: float | None = None
    text: str = ""
    context: str = ""
    final: bool = False

    @property
    def ttft_ms(self) -> float:
        return (self.first - self.asked) * 1e3 if self.first is not None else float("nan")


@dataclass
class Figures:
    """The live figures the summary is made of."""

    rates_hz: list[float] = field(default_factory=list)  # action rate at each status line
    start: float = 0.0  # replay start and end (perf_counter, s; end 0: still playing)
    end: float = 0.0

    @property
    def replay_s(self) -> float:
        return self.end - self.start


class LiveView:
    """The demo's node: asks through the csr/ask action (feedback: the answer so far), records
    csr/status and csr/action_chunk (callbacks only record, under a lock)."""

    def __init__(self, context, qa):
        from rclpy.action import ActionClient
        from rclpy.node import Node

        from csr_ros.action import Ask
        from csr_ros.msg import ActionChunk, CacheStatus
        from csr_ros.nodes import qos

        self.node = Node("csr_demo", context=context)
        self.qa = {q.id: q for q in qa}
        self.answers: dict[str, Answer] = {}
        self.chunk_times: deque[float] = deque(maxlen=4096)
        self.status = None
        self._lock = threading.Lock()
        self._ask = Ask
        self.client = ActionClient(self.node, Ask, "csr/ask")
        self.node.create_subscription(CacheStatus, "csr/status", self._on_status, qos.STATUS)
        self.node.create_subscription(ActionChunk, "csr/action_chunk", self._on_chunk, qos.ACTIONS)

    def ask(self, q) -> None:
        """Send the question as a goal; feedback and the result come back on the executor."""
        with self._lock:
            self.answers[q.id] = Answer(time.perf_counter())
        sent = self.client.send_goal_async(self._ask.Goal(question=q.question),
                                           feedback_callback=lambda m, i=q.id: self._on_feedback(i, m.feedback))
        sent.add_done_callback(lambda f, i=q.id: self._on_sent(i, f.result()))

    def _on_sent(self, qid: str, handle) -> None:
        if handle is None or not handle.accepted:
            self._finish(qid, "refused: goal rejected", "")
            return
        handle.get_result_async().add_done_callback(
            lambda f: self._finish(qid, f.result().result.answer, f.result().result.context))

    def _on_feedback(self, qid: str, fb) -> None:
        now = time.perf_counter()
        with self._lock:
            a = self.answers.get(qid)
            if a is not None and not a.final:
                a.first = a.first or now
                a.text = fb.partial

    def _finish(self, qid: str, text: str, context: str) -> None:
        now = time.perf_counter()
        with self._lock:
            a = self.answers.get(qid)
            if a is not None and not a.final:
                a.first = a.first or now
                a.text, a.context, a.final = text, context, True

    def open_count(self) -> int:
        """Questions asked whose final answer has not come back."""
        with self._lock:
            return sum(not a.final for a in self.answers.values())

    def finals(self) -> dict[str, Answer]:
        with self._lock:
            return {k: a for k, a in self.answers.items() if a.final}

    def _on_status(self, msg) -> None:
        self.status = msg

    def _on_chunk(self, _msg) -> None:
        with self._lock:
            self.chunk_times.append(time.perf_counter())

    def action_rate_hz(self, since: float | None = None, until: float | None = None) -> float:
        """Chunks per second over the last RATE_WINDOW_S (or between ``since`` and ``until``)."""
        until = time.perf_counter() if until is None else until
        since = until - RATE_WINDOW_S if since is None else since
        with self._lock:
            n = sum(1 for t in self.chunk_times if since < t <= until)
        return n / max(until - since, 1e-9)

    def status_line(self, t_s: float) -> str:
        s = self.status
        if s is None:
            return f"[{t_s:6.1f} s] actions {self.action_rate_hz():4.1f} Hz | no status yet"
        return (f"[{t_s:6.1f} s] actions {self.action_rate_hz():4.1f} Hz | state {s.cached_tokens}/{s.budget_tokens} "
                f"tokens v{s.state_version} | evictions {s.evictions} (sync {s.sync_fallbacks}) | "
                f"reconciler {s.reconciler_state}")


def _wait_for(pred, timeout_s: float, stop: threading.Event) -> bool:
    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end and not stop.is_set():
        if pred():
            return True
        time.sleep(0.05)
    return False


def graph_args(paths, args: argparse.Namespace) -> list[str]:
    """The graph's ROS arguments: the episode's params file, then the demo's overrides."""
    ros = ["csr_demo", "--ros-args", "--log-level", "warn"]
    if paths.params is not None:
        ros += ["--params-file", str(paths.params)]
    fake = args.model == "fake"  # no hidden states for a learned head: the registry policy
    overrides = {"budget.budget_tokens": args.budget, "model.device": args.device,
                 "model.backend": "fake" if fake else "hf", "model.model": "embedded" if fake else args.model,
                 "memory.answer_context": args.answer_context, "control.policy": "registry" if fake else args.policy}
    for k, v in overrides.items():
        ros += ["-p", f"{k}:={v}"]
    return ros


def run_graph(args: argparse.Namespace, paths, qa) -> int:
    """Graph + replay + questions, printed live; returns the exit code."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from csr_ros.core.config import ConfigError
    from csr_ros.nodes.bringup import Graph

    logging.getLogger("csr_ros").setLevel(logging.ERROR)  # evictions show in the status lines
    context, stop = Context(), threading.Event()
    rclpy.init(args=graph_args(paths, args), context=context)
    t_load = time.perf_counter()
    try:
        graph = Graph(context, stop)
    except ConfigError as e:
        print(f"bad configuration: {e}")
        context.try_shutdown()
        return 2
    graph.start()
    code = graph.bring_up()  # configure (loads the model) + activate
    if code:
        graph.shutdown()
        return code
    cfg = graph.node.cfg
    print(f"csr graph up in {time.perf_counter() - t_load:.1f} s: {cfg.model.model} ({cfg.model.backend}), "
          f"inference + reconciler nodes, actions at {cfg.control.control_rate_hz:g} Hz ({cfg.control.policy} "
          f"policy), budget "
          f"{cfg.budget.budget_tokens} tokens, answers from the {cfg.memory.answer_context} context")
    view = LiveView(context, qa)
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(view.node)
    spin = threading.Thread(target=ex.spin, name="csr-demo-executor", daemon=True)
    spin.start()
    t0 = time.perf_counter()
    try:
        figures = drive(args, paths, qa, graph, view, stop)
        if figures is None:
            return 1
        return summary(view, qa, graph, figures, time.perf_counter() - t0, args.rate)
    except KeyboardInterrupt:
        return 130
    finally:
        stop.set()
        ex.shutdown(timeout_sec=5.0)
        view.node.destroy_node()
        graph.shutdown()


def _start_replay(args, paths, graph, view, stop):
    """The replayer, its publishers matched with the graph's inputs, playing on its own thread."""
    from csr_ros.cli.replay import Replayer

    inputs = {i.topic: i.msg_type for i in graph.node.inputs}
    if not view.client.wait_for_server(timeout_sec=30.0):
        print("the graph's csr/ask action server did not come up")
        return None, None
    rep = Replayer(view.node, str(paths.bag), args.rate)
    rep.advertise(inputs)
    _wait_for(lambda: all(view.node.count_subscribers(t) > 0 for t in inputs), 10.0, stop)
    thread = threading.Thread(target=rep.run, args=(stop,), name="csr-demo-replay", daemon=True)
    thread.start()
    return rep, thread


def drive(args, paths, qa, graph, view, stop) -> Figures | None:
    """Replay the bag, ask each question at its time (or when a slot frees), print as it goes."""
    rep, replay = _start_replay(args, paths, graph, view, stop)
    if rep is None:
        return None
    slots = graph.node.cfg.language.max_open_requests
    t0 = time.perf_counter()
    figs = Figures(start=t0)
    queue, shown, next_status, deadline = deque(qa), set(), 0.0, None
    while not stop.is_set():
        now = time.perf_counter() - t0
        while queue and queue[0].t_s / args.rate <= now and view.open_count() < slots:
            q = queue.popleft()
            view.ask(q)
            late = now - q.t_s / args.rate
            print(f"[{now:6.1f} s] Q {q.id}: {q.question}" + (f"  (waited {late:.1f} s for a free answer slot)"
                                                              if late > 0.5 else ""))
        for rid, a in sorted(view.finals().items()):
            if rid not in shown:
                shown.add(rid)
                print(f"[{now:6.1f} s] A {rid} ({a.context or '?'}, TTFT {a.ttft_ms:.0f} ms): "
                      f"{' '.join(a.text.split())[:90]!r} -> {_mark(view.qa[rid], a.text)}")
        if now >= next_status:
            print(view.status_line(now))
            if replay.is_alive() and now >= RATE_WINDOW_S:
                figs.rates_hz.append(view.action_rate_hz())
            next_status = now + STATUS_EVERY_S
        if not replay.is_alive() and not figs.end:
            figs.end = time.perf_counter()
        if not queue and figs.end:
            deadline = deadline or time.perf_counter() + args.timeout_s
            if len(shown) == len(qa) or time.perf_counter() > deadline:
                break
        time.sleep(0.05)
    figs.end = figs.end or time.perf_counter()
    return figs


def _mark(q, text: str) -> str:
    if text.startswith(("refused:", "error:")):
        return "no answer"
    return "correct" if q.correct_text(text) else f"expected {q.answers[0]}"


def _p(values: list[float], q: float) -> float:
    from csr_ros.cli.bench.common import percentile

    return percentile(values, q) if values else float("nan")


def summary(view: LiveView, qa, graph, figs: Figures, wall_s: float, rate: float) -> int:
    """Print the summary; the exit code (1 only when the graph failed or answered nothing)."""
    finals = view.finals()
    answered = [q for q in qa if q.id in finals and not finals[q.id].text.startswith(("refused:", "error:"))]
    from csr_ros.cli.eval.scoring import drifted

    right = sum(q.correct_text(finals[q.id].text) for q in answered)
    drift = sum(drifted(finals[q.id].text, q.candidates) for q in answered)
    ttft = [finals[q.id].ttft_ms for q in answered]
    contexts = sorted({finals[q.id].context for q in answered})
    mean_hz = view.action_rate_hz(figs.start, figs.end)
    cfg, s = graph.node.cfg, view.status
    print(f"\nsummary: {len(answered)}/{len(qa)} questions answered, {right} correct (free-form, "
          f"{'/'.join(contexts) or '-'} context), {drift} off the question (named no candidate); "
          f"TTFT p50 {_p(ttft, 50):.0f} ms, p99 {_p(ttft, 99):.0f} ms")
    print(f"  actions: {mean_hz:.1f} Hz over the replay (configured {cfg.control.control_rate_hz:g} Hz; "
          f"lowest {RATE_WINDOW_S:g}-s window {min(figs.rates_hz, default=float('nan')):.1f} Hz)")
    if s is not None:
        print(f"  evictions: {s.evictions - s.sync_fallbacks} asynchronous (reconciler, off the hot path), "
              f"{s.sync_fallbacks} synchronous; state v{s.state_version}, {s.cached_tokens}/{s.budget_tokens} tokens, "
              f"{s.increments_total} increments")
    print(f"  replay x{rate:g} in {figs.replay_s:.0f} s; wall {wall_s:.0f} s")
    return 1 if graph.failed or not answered else 0
