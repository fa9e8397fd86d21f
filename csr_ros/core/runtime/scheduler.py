"""The frame scheduler: fixed-rate action chunks and streamed language from one shared cache.

Threads (the ROS node wires them):

* producers (ROS callbacks) call :meth:`FrameScheduler.submit_increment`, :meth:`~FrameScheduler.ask`,
  :meth:`~FrameScheduler.set_instruction`: they only queue under a short lock, never run the model;
* the action publisher (a timer at ``control.control_rate_hz``, any thread) calls
  :meth:`~FrameScheduler.chunk_for_publish`: it reads a single-slot latest chunk and time-shifts it,
  so publishing never waits on the model;
* ONE worker thread (the node's model worker, or :class:`csr_ros.core.runtime.frame_loop.FrameLoop`)
  calls :meth:`~FrameScheduler.run_frame` as fast as frames allow. Each frame,
  in order: swap in a ready rebuilt state (re-opening the open answers on it), append the pending
  increments (one forward), refresh the action chunk if the policy is due, advance every open
  language request by ``k`` tokens (one batched forward per token for all of them), and return
  the language pieces to publish. A frame longer than ``1 / control_rate_hz`` is counted.
  While answers are open, the policy's closed-set scoring rides in the frame's first language
  step (``control.fuse_policy_with_language``): one forward decides AND advances every answer.

Lifecycle (:meth:`FrameScheduler.set_serving`): not serving = no decisions, no new questions,
increments still appended. ``calls.submit(fn)`` runs ``fn`` on the worker at a frame start.

Safety: chunks are clamped to the registry's limits and carry ``valid_until``; a chunk is never
published after it (the publisher gets the time-shifted rest of the current chunk until then).
Without a valid chunk (none yet, the policy fell behind, a failure, a clock jump) the publisher
gets the hold chunk (``is_hold``) every control period, counted in ``holds_published``; a model
failure cuts the current chunk (``control.hold_on_failure``), is counted, logged and reported in
:meth:`~FrameScheduler.drain_events`. ``clock_ns`` (ROS time) is read through a
:class:`csr_ros.core.state.stamps.Timeline`: a jump back drops the chunk, restarts the decision
grid and records a new episode segment (a ``clock`` increment). TTFT is on ``steady_ns``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from typing import Callable, Sequence

from csr_ros.core.runtime.actions import ActionRegistry, registry_from_config
from csr_ros.core.runtime.chunk_slot import ChunkSlot
from csr_ros.core.reconcile.hot_path import gate_of
from csr_ros.core.runtime.intake import (CoalescingInbox, ThrottledLog, has_control_chars, printable_id,
                                 request_refusal)
from csr_ros.core.runtime.language import LanguageBatch, LanguageOut, ScoreRider
from csr_ros.core.runtime.outputs import ChunkOut, SchedulerCounters, SchedulerEvent, StatusOut, fault_counters
from csr_ros.core.state.ledger import Increment
from csr_ros.core.runtime.policy import make_policy
from csr_ros.core.runtime.worker_calls import WorkerCalls
from csr_ros.core.state.stamps import ClockJump, Timeline, on_clock, shift_facts

__all__ = ["ChunkOut", "LanguageOut", "StatusOut", "FrameScheduler", "SchedulerEvent"]
log = logging.getLogger("csr_ros.scheduler")
CLOCK_SOURCE = "clock"  # source of the marker increment of a clock jump back (a new episode segment)


class FrameScheduler:
    """Per-frame decisions over one engine (see the module doc); the clock is injected.

    Args:
        engine: the shared :class:`csr_ros.core.runtime.engine.CsrEngine` (owned by the worker thread).
        policy: a :mod:`csr_ros.core.runtime.policy` policy, or None for the one ``cfg.control`` names.
        cfg: the :class:`csr_ros.core.config.CsrConfig` (groups ``control`` and ``language``).
        clock_ns: the clock every stamp uses (ROS time in the node).
        reconciler: a :class:`csr_ros.core.reconcile.reconciler.Reconciler`, or None (no ASR).
        registry: the action registry (default: ``cfg.control.actions_file``).
        language_engine: decode language on this engine instead (the isolated baseline: a second
            copy of the state that the scheduler also appends every increment to).
        batched_language: False advances each request in its own forward (isolated baseline).
        prompt_ids: question -> query token ids (default: the engine's query template).
        steady_ns: the monotonic clock latencies are measured on (TTFT).
    """

    def __init__(self, engine, policy, cfg, clock_ns: Callable[[], int], reconciler=None, *,
                 registry: ActionRegistry | None = None, language_engine=None, batched_language: bool = True,
                 prompt_ids: Callable[[str], list[int]] | None = None,
                 steady_ns: Callable[[], int] = time.monotonic_ns):
        c, lang = cfg.control, cfg.language
        self.engine, self.cfg, self.clock_ns, self.reconciler = engine, cfg, clock_ns, reconciler
        self.registry = registry or registry_from_config(cfg)
        self.policy = policy if policy is not None else make_policy(cfg, self.registry, engine.backend)
        self.frame_period_ns = round(1e9 / c.control_rate_hz)
        self.policy_period_ns = round(c.policy_period_s * 1e9)
        self.dt_ns = round(self.registry.dt_s * 1e9)
        self.validity_ns = round(min(c.chunk_valid_s, self.registry.horizon_steps * self.registry.dt_s) * 1e9)
        self.max_skew_ns = round(c.max_stamp_skew_s * 1e9)
        self.k, self.max_open, self.max_question_chars = lang.tokens_per_frame, lang.max_open_requests, lang.max_question_chars
        self.max_id_chars = lang.max_request_id_chars
        self.lang_engine = language_engine if language_engine is not None else engine
        self.steady_ns = steady_ns
        self.language = LanguageBatch(self.lang_engine, lang.max_new_tokens, lang.lead_in, batched_language,
                                      prompt_ids, steady_ns)
        self.timeline = Timeline(clock_ns, self.frame_period_ns, _newest_stamp(engine))
        self.counters = SchedulerCounters()
        self._lock = threading.Lock()  # guards everything below that producers or the publisher touch
        self._inbox = CoalescingInbox(c.queue_depth_per_input)  # bounded, per topic
        self._tlog = ThrottledLog(log, cfg.ros.reject_log_throttle_s)  # a fault or a flood: no log storm
        self._asks: list[tuple[str, str, int, int, str]] = []  # id, question, asked, max tokens, context
        self._active: set[str] = set()
        self._cancels: dict[str, str] = {}  # request id -> stop reason, ended at the next frame
        self.calls = WorkerCalls()  # run by the worker at each frame start (services, scorings)
        self.serving = True  # lifecycle: False = inactive (no decisions, no answers; perception goes on)
        self._accepted: list[Increment] = []
        self._events: deque[SchedulerEvent] = deque(maxlen=256)  # undrained: the oldest go
        self._instruction = c.default_instruction
        self.slot = ChunkSlot(self._hold_chunk, self.dt_ns, self.validity_ns)  # worker -> action clock
        # worker-only state
        self._hidden = None
        self._obs_stamp_ns = 0
        self._next_decision_ns: int | None = None  # on the ideal grid of policy periods
        self._frame_ema_ns = self.frame_period_ns  # typical frame duration (work), for the lead
        self._in_failure = False
        self._jumped = False  # set by whichever thread saw a clock jump; the worker resets its grid

    # ------------------------------------------------------------------ producers (any thread)
    def submit_increment(self, source: str, stamp_ns: int, text: str, facts: Sequence = ()) -> None:
        """Queue an observation; it is rendered, tokenized and appended by the next frame. Its
        stamp is put on this scheduler's clock first (:func:`csr_ros.core.state.stamps.on_clock`). At most
        ``control.queue_depth_per_input`` wait per source: beyond it the oldest waiting one of
        that source is dropped (coalesced, counted in ``status().increments_coalesced``)."""
        stamp_ns, facts, moved = on_clock(int(stamp_ns), tuple(facts), self._now(), self.max_skew_ns)
        offset = self.timeline.offset_ns  # onto the state's timeline (0 until a clock jump back)
        with self._lock:
            self._inbox.put(str(source), stamp_ns + offset, str(text), shift_facts(facts, offset))  # bounded
            if moved:
                self.counters.restamped += 1
                first = self.counters.restamped == 1
        if moved and first:
            log.warning("observation stamps of %s are more than %.1f s from the node's clock (a bag replayed "
                        "without use_sim_time?): using receive times", source, self.max_skew_ns / 1e9)

    def ask(self, request_id: str, question: str, max_new_tokens: int = 0, context: str = "") -> LanguageOut | None:
        """Open a language request (``max_new_tokens`` 0: the configured; ``context`` "": the
        configured). None when accepted; else a final ``"refused: ..."`` piece (bad id, question
        or context, a duplicate open id, ``language.max_open_requests`` reached, not serving, or
        the serving engine away: refused at once, never queued behind its return)."""
        rid, q = str(request_id).strip(), " ".join(str(question).split())
        why = request_refusal(rid, q, self.max_id_chars, self.max_question_chars, context)
        if why:
            rid = printable_id(rid, self.max_id_chars)
        else:  # a serving engine that is away: refused at once, never queued behind its return
            why = getattr(self.engine.backend, "unavailable", lambda: "")()
        with self._lock:
            if not why and not self.serving:
                why = "the node is not active (lifecycle)"
            elif not why and rid in self._active:
                why = f"request {rid!r} is already open"
            elif not why and len(self._active) >= self.max_open:
                why = f"{len(self._active)} requests already open (language.max_open_requests)"
            if not why:
                self._active.add(rid)
                self._asks.append((rid, q, self.steady_ns(), max(0, int(max_new_tokens)), context))
                return None
            self.counters.refused_requests += 1
        return LanguageOut(rid, f"refused: {why}", True, "", "refused")

    def cancel(self, request_id: str, reason: str = "cancelled") -> bool:
        """End an open request at the next frame (branch freed; final = text so far + ``reason``)."""
        return self.cancel_all(reason, only=request_id) > 0

    def set_serving(self, serving: bool, hold: bool = True) -> None:
        """Lifecycle: stopping arms the hold chunk (once) and cancels the open requests."""
        now = self._now()  # outside the lock: a clock jump it reveals takes the lock
        with self._lock:
            if serving == self.serving:
                return
            self.serving = serving
            if serving:
                self._next_decision_ns = None  # decide at the next frame
                return
            self.slot.drop(self._hold_chunk(now) if hold else None)
        self.cancel_all("deactivated")

    def cancel_all(self, reason: str, only: str | None = None) -> int:
        """:meth:`cancel` every open request (or only ``only``); returns how many."""
        with self._lock:
            rids = [r for r in self._active if only is None or r == only]
            for rid in rids:
                self._cancels.setdefault(rid, reason)
        return len(rids)

    def set_instruction(self, text: str) -> bool:
        """The task the policy chooses actions for (empty: back to the configured default).
        An instruction longer than ``language.max_question_chars`` or with control characters is
        ignored (the previous one stays), counted and logged; returns False then."""
        text = " ".join(str(text).split())
        if len(text) > self.max_question_chars or has_control_chars(text):
            with self._lock:
                self.counters.instructions_rejected += 1
            self._tlog(logging.WARNING, "instruction", "instruction of %d characters ignored (too long or "
                       "control characters)", len(text))
            return False
        with self._lock:
            self._instruction = text or self.cfg.control.default_instruction
        return True

    # ------------------------------------------------------------------ the worker thread
    def run_frame(self) -> list[LanguageOut]:
        """One frame (see the module doc). Never raises for a model failure."""
        t0 = self._now()
        self.calls.run()
        with self._lock:
            jumped, self._jumped = self._jumped, False
        if jumped:  # the old timeline's deadlines and observation stamps mean nothing now
            self._next_decision_ns, self._obs_stamp_ns = None, 0
        self._reconcile()
        self._append_pending()
        due = self.serving and self._policy_due(t0)
        with gate_of(self.engine.backend).hot():  # a CPU rebuild pauses for the policy and language
            rider = self._rider() if due else None
            if due and rider is None:
                self._refresh_chunk(t0)
            outs = self._advance_language(rider)
            if rider is not None:  # the scores rode in the first language step (else: own forward)
                self._refresh_chunk(t0, rider.scores)
        dur = max(0, self._now() - t0)  # 0: the clock jumped back during the frame
        self._frame_ema_ns += (dur - self._frame_ema_ns) // 8
        self.counters.frames += 1
        self.counters.last_frame_ms = dur / 1e6
        if dur > self.frame_period_ns:
            self.counters.frame_overruns += 1
        return outs

    def _reconcile(self) -> None:
        """Swap in a ready rebuilt state (the open answers are re-opened on it), or request one."""
        r = self.reconciler
        if r is None:
            return
        try:
            if r.state == "building" and getattr(r, "target_version", 1 << 62) <= self.engine.ledger.version:
                r.cancel()  # the engine moved on (synchronous eviction): that build is stale
            got = r.take_ready(self.engine.ledger.version)
            if got is not None:
                if self.lang_engine is self.engine:
                    self.language.suspend()  # install refuses open branches; advance re-opens them
                try:
                    pending = self.engine.install(*got)
                    self._event("swap", version=self.engine.ledger.version, pending=pending)
                except ValueError as e:
                    self._event("swap_refused", error=str(e))
                    log.error("handed-over state refused: %s", e)
            elif self.engine.needs_compaction and getattr(r, "accepting", True):
                r.request(self.engine.snapshot())
        except Exception as e:  # noqa: BLE001 - the old state keeps serving
            self._tlog(logging.ERROR, "reconcile", "reconcile step failed: %s: %s", type(e).__name__, e)

    def _engines(self) -> list:
        return [self.engine] if self.lang_engine is self.engine else [self.engine, self.lang_engine]

    def _append_pending(self) -> None:
        with self._lock:
            items = self._inbox.take_all()
        for source, stamp_ns, text, facts in items:
            for eng in self._engines():
                try:
                    inc = eng.submit(source, stamp_ns, text, facts)
                except Exception as e:  # noqa: BLE001 - LedgerError (order, size) or a tokenizer error
                    self._tlog(logging.WARNING, f"reject {source}", "increment from %s rejected: %s: %s",
                               source, type(e).__name__, e)
                    break
                if eng is self.engine:
                    with self._lock:
                        self._accepted.append(inc)
                    if self.reconciler is not None:
                        self.reconciler.notify(inc)
        want = bool(getattr(self.policy, "wants_hidden", False))
        for eng in self._engines():
            newest = eng.pending[-1].stamp_ns if eng.pending else None
            try:
                out = eng.flush(want_hidden=want and eng is self.engine)
            except Exception as e:  # noqa: BLE001 - the engine re-synced its KV; hold and go on
                self.counters.append_failures += 1
                self._failed("append_failure", e)
                continue
            if eng is self.engine and out is not None and newest is not None:  # on the chunks' clock
                self._obs_stamp_ns = max(self._obs_stamp_ns, newest - self.timeline.offset_ns)
                if want:
                    self._hidden = out.hidden

    def _policy_due(self, now_ns: int) -> bool:
        """Due when there is no current chunk (at start, or after a failure: the next frame retries
        instead of leaving the controller without a chunk until the next deadline), when the next
        frame would start past the decision deadline (decide in the frame nearest to it), or when
        the current chunk runs out before the next frame could refresh it. Deadlines sit on a
        fixed grid of ``policy_period_s``, so frames that do not divide the period still give
        exactly 1 / policy_period_s decisions on average."""
        chunk = self.slot.current
        if self._next_decision_ns is None or chunk is None:
            return True
        frame_ns = max(self.frame_period_ns, self._frame_ema_ns)
        if chunk.valid_until_ns - now_ns <= frame_ns:
            return True
        return now_ns + frame_ns // 2 >= self._next_decision_ns

    def _rider(self) -> ScoreRider | None:
        """The policy's scoring as a rider of the language step, when it can share that forward."""
        if not (self.cfg.control.fuse_policy_with_language and self.lang_engine is self.engine
                and self.language.batched and hasattr(self.policy, "score_request")
                and hasattr(self.engine.kv, "multi_step")):
            return None
        with self._lock:
            if not (self._active and (self.language.num_open or self._asks)):
                return None
            instruction = self._instruction
        try:
            return ScoreRider(*self.policy.score_request(self.engine, instruction))
        except Exception:  # noqa: BLE001 - the plain path decides (and reports) instead
            return None

    def _refresh_chunk(self, now_ns: int, scores: Sequence[float] | None = None) -> None:
        nxt = self._next_decision_ns
        self._next_decision_ns = now_ns + self.policy_period_ns if nxt is None else max(nxt + self.policy_period_ns, now_ns)
        with self._lock:
            instruction = self._instruction
        try:
            if scores is not None:
                d = self.policy.decide_from_scores(scores)
            else:
                d = self.policy.decide(self.engine, instruction, self._hidden)
            if d is None:
                return
            values = self.registry.clamp(d.values)
        except Exception as e:  # noqa: BLE001 - fail safe: hold once, report, keep going
            self.counters.policy_failures += 1
            self._failed("policy_failure", e)
            return
        stamp = self._now()
        chunk = ChunkOut(stamp, self._obs_stamp_ns, self.engine.ledger.version, self.registry.names,
                         self.registry.dt_s, self.registry.horizon_steps, values, d.action,
                         stamp + self.validity_ns, False)
        self.slot.put(chunk)
        self._in_failure = False
        self.counters.decisions += 1

    def _failed(self, kind: str, e: Exception) -> None:
        """Report a model failure; cut the current chunk (the publisher holds from its next tick)."""
        self.counters.last_error = f"{type(e).__name__}: {e}"
        self._tlog(logging.ERROR, kind, "%s: %s", kind, self.counters.last_error)
        self._event(kind, error=self.counters.last_error)
        if self._in_failure or not self.cfg.control.hold_on_failure or not self.serving:
            return
        self._in_failure = True
        self.slot.drop(self._hold_chunk(self._now()))

    def _hold_chunk(self, now_ns: int) -> ChunkOut:
        """The registry's hold chunk stamped ``now_ns`` (``is_hold``)."""
        return ChunkOut(now_ns, self._obs_stamp_ns, self.engine.ledger.version, self.registry.names,
                        self.registry.dt_s, self.registry.horizon_steps, self.registry.hold_chunk,
                        self.registry.hold_name, now_ns + self.validity_ns, True)

    # ------------------------------------------------------------------ the clock
    def _now(self) -> int:
        """``clock_ns()`` through the timeline; a jump back it reveals is handled here (any thread)."""
        now, jump = self.timeline.now_ns()
        if jump is not None:
            self._on_jump(jump)
        return now

    def check_clock(self) -> None:
        """Read the clock now (the node forwards its clock's jump callback here, so a jump is
        handled when ``/clock`` delivers it, not at the next reading)."""
        self._now()

    def _on_jump(self, jump: ClockJump) -> None:
        """A jump back: drop the current chunk (its stamps are on the old timeline; the publisher
        holds), restart the decision grid, record the new episode segment in the ledger."""
        text = (f"the clock jumped back {-jump.delta_ns / 1e9:.1f} s (simulator reset or bag loop): "
                f"episode segment {jump.segment} starts; times go on from here")
        with self._lock:
            self.counters.clock_jumps += 1
            self._jumped = True
            self.slot.drop()
            self._inbox.put(CLOCK_SOURCE, self.timeline.to_state(jump.now_ns), text, ())
            self._events.append(SchedulerEvent("clock_jump", {"delta_ns": jump.delta_ns, "segment": jump.segment}))
        log.warning("%s (%d jump(s) back so far)", text, self.counters.clock_jumps)

    def _advance_language(self, rider: ScoreRider | None = None) -> list[LanguageOut]:
        with self._lock:
            asks, self._asks = self._asks, []
            cancels, self._cancels = self._cancels, {}
        for rid, q, asked_ns, max_new, context in asks:
            self.language.join(rid, q, asked_ns, max_new, context)
        # cancels before the step (queued or open): a cancel ends within one frame
        outs = [o for o in (self.language.cancel(rid, why) for rid, why in cancels.items()) if o is not None]
        outs += self.language.advance(self.k, rider)
        done = [o.request_id for o in outs if o.is_final]
        if done:
            with self._lock:
                self._active.difference_update(done)
        return outs

    def _event(self, kind: str, **detail) -> None:
        with self._lock:
            self._events.append(SchedulerEvent(kind, detail))

    # ------------------------------------------------------------------ any thread
    def chunk_for_publish(self, now_ns: int) -> ChunkOut | None:
        """What the action publisher publishes at ``now_ns`` (never blocks on the model).

        The current chunk from the step due at ``now_ns`` on (time-shifted: ``stamp_ns`` moved by
        whole steps, earlier rows dropped); the hold chunk stamped ``now_ns`` when there is no
        valid one (none yet; past ``valid_until``: never a stale chunk; stamped more than its
        validity after ``now_ns``: from before a clock jump back), and the hold right after a
        failure. Every hold counts one hold period (``holds_published``). Not serving
        (lifecycle inactive): the hold armed at deactivation once, then None (silent).
        """
        out = self.slot.for_publish(now_ns, self.serving)
        if out is not None and out.is_hold:
            with self._lock:
                self.counters.holds_published += 1
        return out

    def status(self) -> StatusOut:
        e, ec, sc, r = self.engine, self.engine.counters, self.counters, self.reconciler
        rebuild_ms = getattr(getattr(r, "counters", None), "last_rebuild_ms", 0.0) or ec.last_rebuild_ms
        with self._lock:
            n_open = len(self._active)
            inbox = dataclasses.replace(self._inbox.counters)
        return StatusOut(e.ledger.version, e.kv.length, e.budget_tokens, r.state if r is not None else "idle",
                         self.language.last_ttft_ms or ec.last_ttft_ms, rebuild_ms, n_open,
                         self.language.tokens_generated, engine=dataclasses.replace(ec),
                         scheduler=dataclasses.replace(sc), inbox=inbox, **fault_counters(e))

    def accepted_increments(self) -> list[Increment]:
        """Increments accepted since the last call (the node republishes them)."""
        with self._lock:
            out, self._accepted = self._accepted, []
        return out

    def drain_events(self) -> list[SchedulerEvent]:
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out


def _newest_stamp(engine) -> int | None:
    """The newest stamp the engine's state holds (a restored ledger), or None."""
    incs = engine.pending or engine.ledger.increments
    return incs[-1].stamp_ns if incs else None
