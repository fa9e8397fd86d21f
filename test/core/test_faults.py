"""Injected faults and floods against the ROS-free core (fake backend, fake clocks): each test
injects one fault and asserts the defined behaviour.

* an out-of-memory during a rebuild (MemoryError, torch.OutOfMemoryError): the build fails, the
  old state keeps serving unchanged, a retry after the back-off swaps in, nothing is lost;
* an exception in the reconciler thread (in the plan, or escaping ``run_once``): the thread
  lives on, the reconciler is ``failed`` (never stuck ``building``), a later build swaps in;
* a model error during decoding: the open answers get one final ``error:`` piece, their slots
  are freed, the action clock holds, the next question is answered;
* perception at 10x the frame rate: the per-topic queue coalesces (bounded, counted, newest
  kept) and the action clock holds;
* thousands of questions at once, bad request ids, huge instructions: refused or ignored,
  counted, bounded; the log is throttled.
"""

from __future__ import annotations

import logging
import threading

import pytest

from csr_ros.core.model.backends.fake import FakeBackend, FakeState
from csr_ros.core.config import load_config
from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.ledger import Fact
from csr_ros.core.reconcile.reconciler import Reconciler, ReconcilerThread, reconcile_at_frame
from csr_ros.core.runtime.scheduler import FrameScheduler

pytestmark = pytest.mark.core
MS, S = 1_000_000, 1_000_000_000


class Clock:
    def __init__(self, t: int = 10 * S):
        self.t = t

    def __call__(self) -> int:
        return self.t


# ------------------------------------------------------------------------------ reconciler faults
class FaultyBuildBackend(FakeBackend):
    """Every state created after ``arm()`` raises ``error`` from its first prefill (a build)."""

    def __init__(self):
        super().__init__()
        self.error: BaseException | None = None

    def new_state(self) -> FakeState:
        state, err = FakeState(self), self.error
        if err is not None:
            self.error = None

            def prefill(*_a, **_k):
                raise err
            state.prefill = prefill
        return state


def _engine(be, clock, **kw):
    rec = Reconciler(be, policy="entity_memory", evict_frac=0.5, threads=0, clock_ns=clock,
                     retry_backoff_s=1.0, max_backoff_s=4.0, **kw)
    eng = CsrEngine(be, budget_tokens=1024, high_water_frac=0.6, compactor=rec.compactor, memory=EntityMemory())
    return eng, rec


def _feed(eng, rec, k0: int, until) -> int:
    k = k0
    while not until():
        inc = eng.submit("/cam", (100 + k) * S, f"cup at place {k % 4}", (Fact("cup", "location", f"place {k % 4}", 0),))
        rec.notify(inc)
        eng.flush()
        k += 1
    return k


def _lost(eng, accepted) -> set[int]:
    in_state = {i.seq for i in eng.ledger.increments} | {i.seq for i in eng.pending}
    return {s for s in accepted if s not in in_state and s > eng.ledger.memory.covers_through_seq}


def _torch_oom() -> BaseException:
    torch = pytest.importorskip("torch")
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


@pytest.mark.parametrize("make_error", [lambda: MemoryError("injected out of memory"), _torch_oom],
                         ids=["MemoryError", "torch.OutOfMemoryError"])
def test_out_of_memory_during_a_rebuild_keeps_the_old_state_and_recovers(make_error):
    be, clock = FaultyBuildBackend(), Clock(0)
    eng, rec = _engine(be, clock)
    k = _feed(eng, rec, 0, lambda: eng.needs_compaction)
    version, tokens = eng.ledger.version, eng.ledger.token_ids()
    assert reconcile_at_frame(eng, rec) == "request"
    be.error = make_error()
    assert not rec.run_once()
    assert rec.state == "failed" and rec.counters.failures == 1 and "out of memory" in rec.counters.last_error.lower()
    assert eng.ledger.version == version and eng.ledger.token_ids() == tokens and eng.check_invariant()
    assert eng.query("where is the cup?").text.startswith("state has")  # the old state serves
    assert reconcile_at_frame(eng, rec) is None  # backing off, no retry storm
    clock.t += 1 * S + 1
    assert reconcile_at_frame(eng, rec) == "request" and rec.run_once()
    assert reconcile_at_frame(eng, rec) == "swap" and eng.ledger.version == version + 1
    assert eng.check_invariant() and not _lost(eng, range(k))


@pytest.mark.parametrize("where", ["plan", "escaping run_once"])
def test_an_exception_in_the_reconciler_thread_leaves_it_alive_and_the_old_state_serving(where):
    be = FakeBackend()
    eng, rec = _engine(be, Clock(0))
    rec.retry_backoff_s = rec.max_backoff_s = 0.0
    k = _feed(eng, rec, 0, lambda: eng.needs_compaction)
    version = eng.ledger.version
    fired = threading.Event()
    target, name = (rec.compactor, "compact") if where == "plan" else (rec.handoff, "offer")
    original = getattr(target, name)

    def boom(*a, **kw):
        if not fired.is_set():
            fired.set()
            raise RuntimeError("injected reconciler fault")
        return original(*a, **kw)

    setattr(target, name, boom)
    thread = ReconcilerThread(rec, poll_s=0.005).start()
    try:
        assert reconcile_at_frame(eng, rec) == "request"
        assert fired.wait(10)
        for _ in range(2000):  # the fault is handled: failed, never stuck in "building"
            if rec.state == "failed":
                break
            threading.Event().wait(0.005)
        assert rec.state == "failed" and "injected reconciler fault" in rec.counters.last_error
        assert eng.ledger.version == version and eng.check_invariant()
        assert thread._thread.is_alive()  # the thread outlived the fault
        swapped = threading.Event()
        for _ in range(2000):  # the next request builds and swaps in
            if reconcile_at_frame(eng, rec) == "swap":
                swapped.set()
                break
            threading.Event().wait(0.005)
        assert swapped.is_set() and eng.ledger.version == version + 1
    finally:
        thread.stop()
    assert eng.check_invariant() and not _lost(eng, range(k))


# ------------------------------------------------------------------------------ the scheduler
def _scheduler(clock, be=None, **overrides):
    be = be or FakeBackend()
    eng = CsrEngine(be, budget_tokens=1 << 16, clock_ns=clock)
    cfg = load_config({"control.policy_period_s": 0.4, **overrides})
    sched = FrameScheduler(eng, None, cfg, clock)
    sched._tlog.clock_s = lambda: clock.t / S  # the throttled log on the fake clock too
    return sched, be


def _run(sched, clock, seconds: float, frame_ns: int = 100 * MS, before_frame=None):
    """Frames every 100 ms of fake time (5 ms of work each); returns (tick, chunk) per publisher tick."""
    end, ticks, outs = clock.t + int(seconds * S), [], []
    while clock.t < end:
        if before_frame is not None:
            before_frame()
        outs += sched.run_frame()
        clock.t += 5 * MS
        ticks.append((clock.t, sched.chunk_for_publish(clock.t)))
        clock.t += frame_ns - 5 * MS
    return ticks, outs


def test_a_model_error_during_decoding_fails_the_answers_not_the_action_clock():
    clock = Clock()
    sched, be = _scheduler(clock, **{"language.max_new_tokens": 4096, "language.max_open_requests": 2})
    sched.submit_increment("/camera/people", clock.t, "person waving: wave")
    assert sched.ask("a", "What do you see?") is None and sched.ask("b", "Where?") is None
    _run(sched, clock, 0.3)
    kv, original = sched.engine.kv, sched.engine.kv.step
    calls = []

    def failing_step(feeds):
        calls.append(feeds)
        if len(calls) == 1:
            raise RuntimeError("injected decode failure")
        return original(feeds)

    kv.step = failing_step
    ticks, outs = _run(sched, clock, 2.0)
    finals = [o for o in outs if o.is_final]
    assert sorted(o.request_id for o in finals) == ["a", "b"]
    assert all(o.text.startswith("error: model failure") and "injected decode failure" in o.text for o in finals)
    assert sched.status().open_requests == 0 and kv.open_branches() == []
    assert all(c is not None and not c.is_hold and c.valid_until_ns > t for t, c in ticks)  # clock held
    assert sched.ask("c", "And now?") is None
    _, outs = _run(sched, clock, 3.0)
    assert [o.text.startswith("state has") for o in outs if o.is_final] == [True]


def test_perception_at_ten_times_the_frame_rate_is_coalesced_per_topic():
    clock = Clock()
    depth = 4
    sched, _ = _scheduler(clock, **{"control.queue_depth_per_input": depth})
    sent = {"/joint_states": 0, "/camera": 0}

    def burst():  # 10 messages per topic per frame, the newest last
        for topic in sent:
            for _ in range(10):
                sent[topic] += 1
                sched.submit_increment(topic, clock.t, f"{topic} reading {sent[topic]}")

    ticks, _ = _run(sched, clock, 3.0, before_frame=burst)
    accepted = sched.accepted_increments()
    frames = len(ticks)
    assert len(accepted) == 2 * depth * frames  # bounded: depth per topic per frame
    assert sched.status().increments_coalesced == sum(sent.values()) - len(accepted)
    for topic, n in sent.items():  # the newest of each topic always got in
        assert f"{topic} reading {n}" in [i.text for i in accepted if i.source == topic]
    assert all(c is not None and c.valid_until_ns > t for t, c in ticks[1:])  # the action clock held


def test_thousands_of_questions_at_once_are_refused_beyond_the_limit_and_counted(caplog):
    clock = Clock()
    sched, _ = _scheduler(clock, **{"language.max_open_requests": 4})
    replies = [sched.ask(f"q{i}", f"question {i}?") for i in range(5000)]
    accepted = [i for i, r in enumerate(replies) if r is None]
    assert accepted == [0, 1, 2, 3]
    refusals = [r for r in replies if r is not None]
    assert all(r.is_final and r.text == "refused: 4 requests already open (language.max_open_requests)"
               for r in refusals)
    assert [r.request_id for r in refusals] == [f"q{i}" for i in range(4, 5000)]  # each gets its own answer
    assert sched.status().requests_refused == 4996 and len(sched._asks) == 4  # memory bounded
    _, outs = _run(sched, clock, 3.0)
    assert sorted(o.request_id for o in outs if o.is_final) == ["q0", "q1", "q2", "q3"]
    assert sched.ask("q5000", "again?") is None  # slots free again


@pytest.mark.parametrize("rid, question, why", [
    ("x" * 10_000, "where?", "refused: request id longer than 128 characters"),
    ("bad\x1bid", "where?", "refused: request id has control characters"),
    ("  ", "where?", "refused: empty request id"),
    ("ok", "tell me\x00 everything", "refused: question has control characters"),
    ("ok", "y" * 1001, "refused: question longer than 1000 characters"),
])
def test_bad_requests_are_refused_with_a_bounded_printable_id(rid, question, why):
    sched, _ = _scheduler(Clock())
    out = sched.ask(rid, question)
    assert out.is_final and out.text == why
    assert len(out.request_id) <= 128 and "\x1b" not in out.request_id
    assert sched.status().requests_refused == 1 and sched.status().open_requests == 0


def test_huge_or_binary_instructions_are_ignored_counted_and_logged_throttled(caplog):
    clock = Clock()
    sched, _ = _scheduler(clock)
    assert sched.set_instruction("tidy the kitchen")
    with caplog.at_level(logging.WARNING, logger="csr_ros.scheduler"):
        for k in range(50):
            assert not sched.set_instruction("z" * 1_000_000 if k % 2 else "go\x00left")
            clock.t += 100 * MS  # 5 s of fake time: one log line per 5 s (ros.reject_log_throttle_s)
    assert sched._instruction == "tidy the kitchen" and sched.status().instructions_rejected == 50
    lines = [r for r in caplog.records if "instruction" in r.getMessage()]
    assert 1 <= len(lines) <= 2  # throttled: 50 rejections in 5 s of fake time


def test_a_persistent_model_failure_holds_every_period_logs_throttled_and_keeps_memory_bounded(caplog):
    clock = Clock()
    sched, be = _scheduler(clock)
    sched.submit_increment("/camera/people", clock.t, "person waving: wave")
    _run(sched, clock, 0.5)
    be.fail_next = 10_000  # every forward fails from now on
    with caplog.at_level(logging.ERROR, logger="csr_ros.scheduler"):
        ticks, _ = _run(sched, clock, 120.0)
    holds = [c.is_hold for _, c in ticks]
    first = holds.index(True)
    assert first <= 10 and all(holds[first:])  # the valid rest of the last chunk, then the hold every tick
    assert all(c.valid_until_ns > t for t, c in ticks)  # never a stale chunk
    assert sched.status().holds_published == len(ticks) - first  # one hold period per tick, counted
    assert sched.counters.policy_failures >= 290
    lines = [r for r in caplog.records if "policy_failure" in r.getMessage()]
    assert 1 <= len(lines) <= 120.0 / 5.0 + 1  # throttled: one line per reject_log_throttle_s
    assert len(sched._events) == 256  # nobody drains the events in the node: the newest 256 are kept
