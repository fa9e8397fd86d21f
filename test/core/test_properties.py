"""Property-based tests (hypothesis) of the ROS-free bookkeeping: the state ledger, the on-disk
ledger (records, restore, torn tails), the compaction policies, the per-topic coalescing inbox,
request checks and the throttled log. Each property holds for every generated input; a failure
prints the smallest counter-example."""

from __future__ import annotations

import logging
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csr_ros.core.state.compaction import Compactor, CompactionError, apply_plan, plan_for
from csr_ros.core.runtime.intake import CoalescingInbox, ThrottledLog, has_control_chars, request_refusal
from csr_ros.core.state.ledger import Fact, Increment, LedgerError, StateLedger
from csr_ros.core.state.ledger_store import (FILE_NAME, LedgerStore, decode_record, encode_record, read_records,
                                       restore)
from csr_ros.core.state.template import PromptTemplate

pytestmark = pytest.mark.core
S = 1_000_000_000
TEMPLATE = PromptTemplate(head="{system}\n\n", tail="\nAnswer:")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def encode(text: str) -> list[int]:
    return [ord(c) % 256 for c in text]


words = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=12)
facts = st.lists(st.builds(Fact, words, st.sampled_from(["location", "state"]), words,
                           st.integers(0, 10**12)), max_size=2)


@st.composite
def increments(draw, min_size: int = 1, max_size: int = 30) -> list[Increment]:
    """Increments with strictly increasing (gappy) seqs, 1..40 tokens each, random text and facts."""
    n = draw(st.integers(min_size, max_size))
    gaps = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    seqs = [sum(gaps[:i + 1]) - 1 for i in range(n)]
    return [Increment(s, draw(st.sampled_from(["/cam", "/odom", "/obs"])), (100 + s) * S, draw(words),
                      tuple(draw(st.lists(st.integers(0, 511), min_size=1, max_size=40))), tuple(draw(facts)))
            for s in seqs]


def ledger_of(incs) -> StateLedger:
    led = StateLedger(prefix_ids=(1, 2, 3), epoch_ns=100 * S)
    for inc in incs:
        led.append(inc)
    return led


# ------------------------------------------------------------------------------ the ledger
@FAST
@given(increments(), st.integers(-5, 200))
def test_ledger_is_append_only_and_refuses_old_sequence_numbers(incs, bad_seq):
    led = ledger_of(incs)
    want = [1, 2, 3] + [t for i in incs for t in i.token_ids]
    assert led.token_ids() == want and led.num_tokens == len(want) and led.last_seq == incs[-1].seq
    spans = led.spans()
    assert [want[a:b] for _, a, b in spans] == [list(i.token_ids) for i in incs]
    before = led.token_ids()
    if bad_seq <= led.last_seq:
        with pytest.raises(LedgerError):
            led.append(Increment(bad_seq, "/x", 0, "x", (5,)))
        assert led.token_ids() == before  # a refused append changes nothing
    else:
        led.append(Increment(bad_seq, "/x", 0, "x", (5,)))
        assert led.token_ids() == before + [5]


# ------------------------------------------------------------------------------ compaction
def _summarize(prior: str, evicted, epoch_ns: int) -> str:
    return f"{prior} saw {len(evicted)}".strip()


@FAST
@given(increments(min_size=2), st.floats(0.05, 0.95), st.sampled_from(["drop_oldest", "entity_memory", "summary"]))
def test_every_policy_partitions_oldest_first_and_keeps_the_newest(incs, frac, policy):
    led = ledger_of(incs)
    target = int(sum(i.num_tokens for i in incs) * frac)
    if target == 0:  # less than one token to evict: a clear refusal, never an empty new version
        with pytest.raises(CompactionError, match="nothing to evict"):
            plan_for(policy, led, frac, summarize=_summarize, template=TEMPLATE)
        return
    plan = plan_for(policy, led, frac, summarize=_summarize, template=TEMPLATE)
    assert list(plan.evicted) + list(plan.retained) == incs  # a split, in order: nothing invented or lost
    assert plan.evicted and plan.retained and plan.retained[-1] == incs[-1]
    evicted_tokens = sum(i.num_tokens for i in plan.evicted)
    assert evicted_tokens >= target or len(plan.retained) == 1
    assert evicted_tokens - plan.evicted[-1].num_tokens < target or len(plan.evicted) == 1  # no more than needed
    new = apply_plan(led, plan, TEMPLATE, encode)
    assert new.version == led.version + 1 and new.prefix_ids == led.prefix_ids and new.last_seq == led.last_seq
    assert new.token_ids()[:3] == [1, 2, 3] and new.increments == list(plan.retained)
    if policy == "drop_oldest":
        assert new.memory == led.memory
    else:
        assert new.memory.covers_through_seq == plan.evicted[-1].seq
        assert new.memory.represented_seqs == len(plan.evicted) and new.memory.token_ids


@FAST
@given(increments(min_size=4, max_size=40), st.floats(0.1, 0.9), st.sampled_from(["drop_oldest", "entity_memory"]),
       st.integers(1, 6))
def test_repeated_compaction_accounts_for_every_increment(incs, frac, policy, cycles):
    """Over several compaction cycles with appends in between, every accepted increment is either
    still in the state, represented by the memory block, or counted as dropped by drop_oldest."""
    comp = Compactor(policy, frac, TEMPLATE, encode)
    led, dropped, fed = ledger_of(incs[:2]), 0, 2
    per_cycle = max(1, (len(incs) - 2) // cycles)
    for _ in range(cycles):
        for inc in incs[fed:fed + per_cycle]:
            led.append(inc)
        fed += per_cycle
        try:
            new, plan = comp.compact(led)
        except CompactionError:  # nothing to evict (one increment, < 1 token due): a legal refusal
            assert len(led.increments) == 1 or int(sum(i.num_tokens for i in led.increments) * frac) == 0
            continue
        dropped += 0 if plan.represents_evicted else len(plan.evicted)
        led = new
    accepted = [i.seq for i in incs[:min(fed, len(incs))]]
    in_state = {i.seq for i in led.increments}
    represented = {s for s in accepted if s not in in_state and s <= led.memory.covers_through_seq}
    assert set(accepted) - in_state - represented == set() or policy == "drop_oldest"
    assert len(set(accepted) - in_state) == len(represented) + dropped
    assert led.memory.represented_seqs == len(represented)


# ------------------------------------------------------------------------------ on-disk records
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@FAST
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_a_record_is_one_line_and_round_trips(rec):
    line = encode_record(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # control characters are escaped
    assert decode_record(line) == rec
    assert decode_record(line[:-1]) is None  # without its newline: torn
    if len(line) > 12:
        flipped = bytearray(line)
        flipped[10] ^= 0x01
        assert decode_record(bytes(flipped)) is None  # any single-bit error fails the checksum


def _write_history(store: LedgerStore, incs, frac: float, every: int) -> list[StateLedger]:
    """Append ``incs`` through the store like the engine does, compacting every ``every``
    increments; returns the ledger after each record (what a restore at that point must give)."""
    comp = Compactor("entity_memory", frac, TEMPLATE, encode)
    led = StateLedger(prefix_ids=(1, 2, 3), epoch_ns=100 * S)
    store.begin(led.prefix_ids)
    store.set_epoch(led.epoch_ns)
    states = []
    for k, inc in enumerate(incs, 1):
        led.append(inc)
        store.append_increment(inc)
        states.append(led.copy())
        if k % every == 0 and int(sum(i.num_tokens for i in led.increments) * frac) > 0 and len(led.increments) > 1:
            led, _ = comp.compact(led)
            store.append_compaction(led, "entity_memory")
            states.append(led.copy())
    return states


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(increments(min_size=1, max_size=20), st.floats(0.2, 0.8), st.integers(2, 6), st.data())
def test_restore_gives_the_state_of_the_last_whole_record_at_any_cut(tmp_path_factory, incs, frac, every, data):
    """Cut the file at ANY byte (a crash mid-write): restore gives exactly the state after the last
    complete record; reopening cuts the torn tail and appending goes on cleanly."""
    d = tmp_path_factory.mktemp("ledger")
    with LedgerStore(d, fsync="never") as store:
        states = _write_history(store, incs, frac, every)
    path = d / FILE_NAME
    whole = path.read_bytes()
    restored = restore(d)
    assert restored.ledger.token_ids() == states[-1].token_ids() and restored.ledger.version == states[-1].version
    cut = data.draw(st.integers(0, len(whole)), label="cut")
    os.truncate(path, cut)
    records, good, torn = read_records(path)
    assert good + torn == cut and whole[:good].count(b"\n") == len(records)
    got = restore(d)
    n_state_records = len(records) - 2  # header and epoch first
    if n_state_records <= 0:
        assert got is None or (got.ledger.increments == [] and got.ledger.version == 0)
    else:
        want = states[n_state_records - 1]
        assert got.ledger.token_ids() == want.token_ids() and got.ledger.version == want.version
        assert got.ledger.last_seq == want.last_seq and got.torn_bytes == torn
    with LedgerStore(d, fsync="never") as store:  # reopen: the torn tail is cut, appends are whole
        assert path.stat().st_size == good
        if store.has_header:
            last = store.restore().ledger.last_seq
            store.append_increment(Increment(last + 1, "/x", 0, "after", (9,)))
    if records and records[0].get("t") == "header":
        assert read_records(path)[2] == 0 and restore(d).ledger.token_ids()[-1] == 9


# ------------------------------------------------------------------------------ intake bounds
@FAST
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 10**6)), max_size=300), st.integers(1, 9),
       st.integers(1, 5))
def test_inbox_is_bounded_per_topic_keeps_the_newest_in_arrival_order(puts, depth, max_sources):
    box = CoalescingInbox(depth, max_sources)
    admitted_sources: list[str] = []
    for i, (src, stamp) in enumerate(puts):
        box.put(src, stamp, f"m{i}")
        if src not in admitted_sources and len(set(admitted_sources)) < max_sources:
            admitted_sources.append(src)
        assert len(box) <= depth * max_sources and box.waiting(src) <= depth
    items = box.take_all()
    assert len(box) == 0 and box.counters.offered == len(puts)
    assert box.counters.coalesced == len(puts) - len(items)
    order = [int(text[1:]) for _, _, text, _ in items]
    assert order == sorted(order)  # global arrival order kept
    for src in set(s for s, _ in puts):  # per topic: exactly its newest `depth` (if admitted)
        sent = [i for i, (s, _) in enumerate(puts) if s == src]
        kept = [int(t[1:]) for s, _, t, _ in items if s == src]
        assert kept == (sent[-depth:] if src in admitted_sources else [])


@FAST
@given(st.text(max_size=300), st.text(max_size=3000))
def test_request_checks_accept_only_bounded_printable_requests(rid, question):
    rid, q = rid.strip(), " ".join(question.split())
    why = request_refusal(rid, q, 128, 1000)
    if not why:
        assert 0 < len(rid) <= 128 and 0 < len(q) <= 1000
        assert not has_control_chars(rid) and not has_control_chars(q)
    else:
        assert why.split()[0] in {"empty", "request", "question"}


@FAST
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0.0, 3.0)), max_size=200), st.floats(0.1, 5.0))
def test_throttled_log_emits_at_most_once_per_period_per_key(calls, period_s):
    t = [0.0]
    logger = logging.getLogger("csr_ros.test.throttle")
    tlog = ThrottledLog(logger, period_s, clock_s=lambda: t[0])
    emitted: dict[str, int] = {}
    for key, dt in calls:
        t[0] += dt
        emitted[key] = emitted.get(key, 0) + tlog(logging.DEBUG, key, "x")
    span = t[0]
    for key in emitted:
        n_calls = sum(1 for k, _ in calls if k == key)
        assert 1 <= emitted[key] <= min(n_calls, math.floor(span / period_s) + 1)
    assert tlog.emitted + sum(tlog.suppressed.values()) <= len(calls)



# ------------------------------------------------------------------------------ published chunks
@FAST
@given(st.lists(st.integers(-2 * S, 5 * S), min_size=1, max_size=40))
def test_a_published_chunk_is_never_stale_and_always_within_limits(offsets_ns):
    from csr_ros.core.model.backends.fake import FakeBackend
    from csr_ros.core.config import load_config
    from csr_ros.core.runtime.engine import CsrEngine
    from csr_ros.core.runtime.scheduler import FrameScheduler

    t = [100 * S]
    clock = lambda: t[0]  # noqa: E731
    sched = FrameScheduler(CsrEngine(FakeBackend(), budget_tokens=4096, clock_ns=clock), None, load_config(), clock)
    sched.submit_increment("/camera/people", t[0], "person waving: wave")
    sched.run_frame()
    d = len(sched.registry.names)
    for off in offsets_ns:
        now = 100 * S + off
        c = sched.chunk_for_publish(now)
        if c is None:
            continue
        assert c.stamp_ns <= max(now, 100 * S) and now < c.valid_until_ns  # never after valid_until
        assert len(c.data) == c.horizon * d and 0 < c.horizon <= sched.registry.horizon_steps
        assert all(sched.registry.dims[i % d].min <= v <= sched.registry.dims[i % d].max for i, v in enumerate(c.data))
