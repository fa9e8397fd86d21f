"""Reconciler: off-hot-path builds, replay, handover, failure/backoff, nothing lost."""

from __future__ import annotations

import threading

import pytest

from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.ledger import Fact
from csr_ros.core.reconcile.reconciler import ModelSummarizer, Reconciler, ReconcilerThread, reconcile_at_frame

pytestmark = pytest.mark.core
S = 1_000_000_000


class Clock:
    def __init__(self):
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def setup(backend, policy="entity_memory", budget=1024, clock=None, **kw):
    rec = Reconciler(backend, policy=policy, evict_frac=0.5, threads=0, clock_ns=clock or Clock(), **kw)
    eng = CsrEngine(backend, budget_tokens=budget, high_water_frac=0.6, compactor=rec.compactor,
                    memory=EntityMemory())
    return eng, rec


def submit(eng, rec, k):
    inc = eng.submit("/cam" if k % 3 else "/odom", (100 + k) * S, f"cup at place {k % 4}",
                     (Fact("cup", "location", f"place {k % 4}", (100 + k) * S),) if k % 3 else ())
    rec.notify(inc)
    return inc


@pytest.fixture
def one_thread():
    """Tiny-model tests run on one torch thread (fast, and immune to a busy shared CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def accounting(eng, accepted):
    """(in state, represented by the memory block, lost) over the accepted sequence numbers."""
    in_state = {i.seq for i in eng.ledger.increments} | {i.seq for i in eng.pending}
    covers = eng.ledger.memory.covers_through_seq
    represented = {s for s in accepted if s not in in_state and s <= covers}
    lost = set(accepted) - in_state - represented
    return in_state, represented, lost


def fill_to_high_water(eng, rec, start=0):
    k = start
    while not eng.needs_compaction:
        submit(eng, rec, k)
        eng.flush()
        k += 1
    return k


def test_build_replays_increments_that_arrive_meanwhile_and_swaps_without_a_forward(fake):
    eng, rec = setup(fake)
    k = fill_to_high_water(eng, rec)
    assert reconcile_at_frame(eng, rec) == "request" and rec.state == "building"
    assert not rec.request(eng.snapshot())  # busy: refused, never blocks
    during = [submit(eng, rec, k + j) for j in range(3)]  # arrive during the build
    eng.flush()
    assert rec.run_once() and rec.state == "ready"
    late = submit(eng, rec, k + 3)  # after the offer: the engine keeps it pending at the swap
    old_kv = eng.kv
    assert reconcile_at_frame(eng, rec) == "swap" and rec.state == "idle"
    kv = eng.kv
    assert kv is not old_kv  # a fresh KV state, built off the hot path
    prefilled = eng.ledger.num_tokens - sum(i.num_tokens for i in during)
    n_fwd = kv.forwards
    assert n_fwd == -(-prefilled // rec.chunk_tokens) + 1  # prefill chunks + ONE replay; none at the swap
    assert [i.seq for i in eng.pending] == [late.seq]  # no forward at swap time
    assert {i.seq for i in during} <= {i.seq for i in eng.ledger.increments}
    assert rec.counters.replayed == 3 and eng.ledger.version == 1
    eng.flush()
    assert kv.forwards == n_fwd + 1 and eng.check_invariant()
    assert not accounting(eng, range(k + 4))[2]


def test_many_cycles_in_a_thread_lose_nothing(fake):
    fake.delay_s = 0.001  # paces the frames so the thread gets to build (1 ms per forward)
    eng, rec = setup(fake)
    accepted = []
    with ReconcilerThread(rec, poll_s=0.002):
        for k in range(600):
            accepted.append(submit(eng, rec, k).seq)
            reconcile_at_frame(eng, rec)
            eng.query("where is the cup?", max_new_tokens=2) if k % 2 else eng.flush()
            assert eng.check_invariant()
    assert eng.counters.swaps >= 10 and rec.counters.failures == 0
    in_state, represented, lost = accounting(eng, accepted)
    assert not lost and eng.counters.evicted_by_policy == 0
    assert len(represented) == eng.ledger.memory.represented_seqs
    assert "cup.location: place" in eng.ledger.memory.text


def test_drop_oldest_reports_what_it_drops(fake):
    eng, rec = setup(fake, policy="drop_oldest")
    accepted = []
    for k in range(200):
        accepted.append(submit(eng, rec, k).seq)
        if reconcile_at_frame(eng, rec) == "request":
            rec.run_once()
        eng.flush()
    in_state = {i.seq for i in eng.ledger.increments} | {i.seq for i in eng.pending}
    assert eng.counters.swaps > 0 and eng.ledger.memory.represented_seqs == 0
    assert eng.counters.evicted_by_policy == len(accepted) - len(in_state) > 0


def test_failed_rebuild_keeps_the_old_state_serving_and_retries_with_backoff(fake):
    clock = Clock()
    eng, rec = setup(fake, clock=clock, retry_backoff_s=1.0, max_backoff_s=3.0)
    k = fill_to_high_water(eng, rec)
    version, tokens = eng.ledger.version, eng.ledger.token_ids()
    assert reconcile_at_frame(eng, rec) == "request"
    fake.fail_next = 1  # the build's prefill fails
    assert not rec.run_once()
    assert rec.state == "failed" and rec.counters.failures == 1
    assert "injected model failure" in rec.counters.last_error
    # the old cache keeps serving, unchanged
    assert eng.ledger.version == version and eng.ledger.token_ids() == tokens
    assert eng.query("where is the cup?").text.startswith("state has")
    assert reconcile_at_frame(eng, rec) is None and not rec.accepting  # backing off
    clock.ns += int(0.99 * S)
    assert not rec.accepting
    clock.ns += int(0.02 * S)
    assert reconcile_at_frame(eng, rec) == "request"
    fake.fail_next = 1
    rec.run_once()
    clock.ns += int(1.5 * S)
    assert not rec.accepting  # second failure: backoff doubled to 2 s
    # meanwhile increments keep coming: at the hard limit the synchronous fallback runs, counted
    while eng.counters.sync_evictions == 0:
        submit(eng, rec, k)
        eng.flush()
        k += 1
    assert eng.ledger.version == version + 1 and eng.check_invariant()
    clock.ns += int(1.0 * S)
    if reconcile_at_frame(eng, rec) != "request":  # state was below the high-water mark
        k = fill_to_high_water(eng, rec, k)
        assert reconcile_at_frame(eng, rec) == "request"
    assert rec.run_once() and reconcile_at_frame(eng, rec) == "swap"
    assert rec.counters.failures == 2 and not accounting(eng, range(k))[2]


def test_stale_build_is_discarded(fake):
    eng, rec = setup(fake)
    fill_to_high_water(eng, rec)
    assert reconcile_at_frame(eng, rec) == "request"
    eng.compact_now("test")  # the engine moved on to version 1 by itself
    assert rec.run_once()  # builds version 1 from the older snapshot
    assert reconcile_at_frame(eng, rec) != "swap" and eng.counters.swaps == 0
    assert eng.ledger.version == 1 and rec.counters.builds == 1


def test_cancelled_build_is_not_a_failure(fake):
    eng, rec = setup(fake)
    fill_to_high_water(eng, rec)
    reconcile_at_frame(eng, rec)
    assert not rec.run_once(should_stop=lambda: True)
    assert rec.counters.cancelled == 1 and rec.counters.failures == 0 and rec.state == "idle"
    assert rec.request(eng.snapshot())


def test_summary_policy_with_an_injected_summarizer(fake):
    seen = []

    def summarize(prior, evicted, epoch_ns):
        seen.append(len(evicted))
        return f"the cup moved {len(evicted)} times"

    eng, rec = setup(fake, policy="summary", summarizer=summarize)
    fill_to_high_water(eng, rec)
    reconcile_at_frame(eng, rec)
    rec.run_once()
    assert reconcile_at_frame(eng, rec) == "swap"
    assert f"the cup moved {seen[0]} times" in eng.ledger.memory.text
    assert eng.ledger.memory.represented_seqs == seen[0]


def test_rebuild_on_the_tiny_model_matches_a_fresh_prefill(tiny, one_thread):
    import torch

    eng, rec = setup(tiny, budget=2048)
    k = fill_to_high_water(eng, rec)
    reconcile_at_frame(eng, rec)
    submit(eng, rec, k)  # replayed onto the new state
    main_threads = torch.get_num_threads()
    rec.threads = 2
    worker = threading.Thread(target=rec.run_once)
    worker.start()
    worker.join(60)
    assert torch.get_num_threads() == main_threads  # the budget was set in the worker thread only
    submit(eng, rec, k + 1)
    assert reconcile_at_frame(eng, rec) == "swap"
    out = eng.flush()
    ref = tiny.new_state()
    ref_out = ref.prefill(eng.ledger.token_ids())
    assert eng.check_invariant() and eng.kv.token_ids() == ref.token_ids()
    torch.testing.assert_close(out.logits, ref_out.logits, atol=1e-4, rtol=1e-4)


def test_model_summarizer_runs_greedy_on_a_fresh_state(tiny, one_thread):
    summ = ModelSummarizer(tiny, max_new_tokens=6)
    eng, rec = setup(tiny, budget=2048)
    fill_to_high_water(eng, rec)
    evicted = eng.ledger.increments[:3]
    ids = summ.prompt_ids("", evicted, eng.ledger.epoch_ns)
    assert tiny.decode(ids).count("cup at place") == 3
    first = summ("", evicted, eng.ledger.epoch_ns)
    assert first == summ("", evicted, eng.ledger.epoch_ns)  # deterministic
    assert len(tiny.encode(first)) <= 6


def test_a_second_device_is_refused_clearly(fake):
    with pytest.raises(ValueError, match="not supported"):
        Reconciler(fake, device="cuda:1")


def test_a_build_made_stale_by_the_fallback_is_cancelled_at_the_frame_boundary(fake):
    eng, rec = setup(fake)
    fill_to_high_water(eng, rec)
    assert reconcile_at_frame(eng, rec) == "request" and rec.target_version == 1
    eng.compact_now("test")  # the hard-limit fallback ran meanwhile: version 1 is served already
    reconcile_at_frame(eng, rec)  # sees the stale build and cancels it
    assert not rec.run_once()
    assert rec.counters.cancelled == 1 and rec.counters.failures == 0 and rec.state == "idle"


def test_a_build_that_falls_too_far_behind_is_cancelled_and_its_backlog_stays_bounded(fake, monkeypatch):
    from csr_ros.core.reconcile import reconciler as reconciler_module

    monkeypatch.setattr(reconciler_module, "MAX_NOTIFIED", 5)
    eng, rec = setup(fake)
    k = fill_to_high_water(eng, rec)
    assert reconcile_at_frame(eng, rec) == "request" and rec.state == "building"
    for j in range(12):  # the build never runs (a hung reconciler thread)
        eng.submit("/objects", (k + j) * 10**9, f"cup {j} on the table")
        rec.notify(eng.pending[-1])
    assert len(rec._notified) == 5  # bounded
    assert not rec.run_once() and rec.counters.cancelled == 1 and rec.state == "idle"
    eng.flush()
    assert eng.check_invariant() and reconcile_at_frame(eng, rec) == "request"  # asked again
