"""The ``csr/ask`` action server (csr_ros/action/Ask) of the inference node.

A goal is a question answered by the scheduler's batched language lane, exactly as a question
on the ``csr/ask`` topic (same branches, same greedy tokens); the goal id (hex of its UUID) is
the request id. The model worker hands every piece of a goal's answer to :meth:`AskServer.deliver`
instead of publishing it on ``csr/language``; the goal's execute callback (one blocked thread of
the reentrant ``answers`` group per open goal, never the model) turns the pieces into feedback
(the text so far, once per frame: every ``language.tokens_per_frame`` tokens) and the result.

* A goal is rejected at once when the node is not active, the question is empty, or
  ``language.max_open_requests`` answers are already open (not queued silently).
* Cancel: the request is ended at the next frame (its branch freed, the slot free for the next
  goal); the result carries the text so far and stop reason ``cancelled``.
* Deactivation, cleanup and reset cancel open goals (stop reasons ``deactivated``, ``reset``):
  the goal is aborted with the text so far.
* ``candidates``: their log-likelihoods are computed on the model worker (one forward) before
  the answer is decoded, and returned in the result.
"""

from __future__ import annotations

import queue
import threading
import time

from rclpy.action import ActionServer, CancelResponse, GoalResponse

from csr_ros.action import Ask
from csr_ros.core.runtime import management
from csr_ros.core.runtime.language import LanguageOut

ACTION_NAME = "csr/ask"
POLL_S = 0.25  # an execute callback re-checks the node's state this often while it waits, s
SCORE_TIMEOUT_S = 60.0


class _Goal:
    """What one open goal's execute callback waits on."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.pieces: queue.Queue[LanguageOut] = queue.Queue()
        self.accepted = time.monotonic()
        self.first: float | None = None


class AskServer:
    """The action server and the routing of answer pieces to goals (see the module doc)."""

    def __init__(self, node, callback_group):
        self.node = node
        self._lock = threading.Lock()
        self._goals: dict[str, _Goal] = {}
        self._reserved = 0  # goals accepted by goal_callback, not yet asked
        self.rejected = 0
        self.server = ActionServer(node, Ask, ACTION_NAME, execute_callback=self._execute,
                                   goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
                                   cancel_callback=self._on_cancel, callback_group=callback_group)

    # ------------------------------------------------------------------ the worker side
    def deliver(self, out: LanguageOut) -> bool:
        """A piece of an answer from the model worker: True when it belongs to a goal."""
        with self._lock:
            goal = self._goals.get(out.request_id)
        if goal is None:
            return False
        goal.pieces.put(out)
        return True

    def end_all(self, reason: str) -> None:
        """End every open goal now (the core is gone: cleanup, shutdown)."""
        with self._lock:
            goals = list(self._goals.values())
        for g in goals:
            g.pieces.put(LanguageOut(g.request_id, "", True, "", reason))

    # ------------------------------------------------------------------ executor callbacks
    def _refuse(self, why: str) -> GoalResponse:
        self.rejected += 1
        self.node.get_logger().warning(f"Ask goal rejected: {why}", throttle_duration_sec=2.0)
        return GoalResponse.REJECT

    def _on_goal(self, goal: Ask.Goal) -> GoalResponse:
        sched = self.node.scheduler
        if sched is None or not getattr(sched, "serving", True):
            return self._refuse(f"the node is {self.node.lifecycle_state}, not active")
        if not goal.question.strip():
            return self._refuse("empty question")
        if goal.context not in ("", "state", "memory"):
            return self._refuse(f"unknown answer context {goal.context[:32]!r} (state or memory)")
        with self._lock:
            if sched.status().open_requests + self._reserved >= sched.max_open:
                return self._refuse(f"{sched.max_open} answers already open (language.max_open_requests)")
            self._reserved += 1
        return GoalResponse.ACCEPT

    def _on_accepted(self, handle) -> None:
        rid = bytes(handle.goal_id.uuid).hex()
        goal = _Goal(rid)
        with self._lock:
            self._reserved = max(0, self._reserved - 1)
            self._goals[rid] = goal
        req, sched = handle.request, self.node.scheduler
        refusal = (sched.ask(rid, req.question, req.max_new_tokens, req.context) if sched is not None
                   else LanguageOut(rid, "refused: the node is not configured", True, "", "refused"))
        if refusal is not None:
            goal.pieces.put(refusal)
        handle.execute()

    def _on_cancel(self, handle) -> CancelResponse:
        sched = self.node.scheduler
        if sched is not None:
            sched.cancel(bytes(handle.goal_id.uuid).hex(), "cancelled")  # ends within one frame
        return CancelResponse.ACCEPT

    def _execute(self, handle) -> Ask.Result:
        rid = bytes(handle.goal_id.uuid).hex()
        with self._lock:
            goal = self._goals[rid]
        try:
            scores = self._scores(handle.request)
            final = self._stream(handle, goal)
        finally:
            with self._lock:
                self._goals.pop(rid, None)
        return self._finish(handle, goal, final, scores)

    def _scores(self, req) -> list[float]:
        sched = self.node.scheduler
        if not req.candidates or sched is None:
            return []
        fut = sched.calls.submit(lambda: management.score_candidates(sched, req.question, list(req.candidates),
                                                                     req.context))
        return fut.result(timeout=SCORE_TIMEOUT_S)

    def _stream(self, handle, goal: _Goal) -> LanguageOut:
        """Feedback for every partial; returns the final piece."""
        text = ""
        while True:
            try:
                out = goal.pieces.get(timeout=POLL_S)
            except queue.Empty:
                if self.node.scheduler is None:  # cleaned up under us
                    return LanguageOut(goal.request_id, text, True, "", "deactivated")
                continue
            if goal.first is None and out.tokens > 0:
                goal.first = time.monotonic()
            if out.is_final:
                return out if out.text or not text else LanguageOut(out.request_id, text, True, out.context,
                                                                    out.stop_reason, out.tokens, out.ttft_ms)
            text += out.text
            handle.publish_feedback(Ask.Feedback(partial=text, tokens=out.tokens))

    def _finish(self, handle, goal: _Goal, final: LanguageOut, scores: list[float]) -> Ask.Result:
        now = time.monotonic()
        sched = self.node.scheduler
        engine = getattr(sched, "engine", None)
        stop = final.stop_reason or ("refused" if final.text.startswith("refused:") else "error")
        result = Ask.Result(
            answer=final.text, ttft_ms=((goal.first or now) - goal.accepted) * 1e3,
            total_ms=(now - goal.accepted) * 1e3, stop_reason=stop, context=final.context,
            tokens=final.tokens, candidate_scores=scores,
            state_version=engine.ledger.version if engine is not None else 0,
            state_tokens=engine.ledger.num_tokens if engine is not None else 0)
        if stop in ("eos", "length"):
            handle.succeed()
        elif stop == "cancelled" and handle.is_cancel_requested:
            handle.canceled()
        else:
            handle.abort()
        return result
