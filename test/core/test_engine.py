"""The CSR engine: tokenize once, append-only state, budget fallback, queries never pollute."""

from __future__ import annotations

import pytest

from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.state.ledger import LedgerError

pytestmark = pytest.mark.core


class CountingBackend:
    """Wraps a backend and records every text it is asked to tokenize."""

    def __init__(self, inner):
        self.inner = inner
        self.encoded: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, text: str) -> list[int]:
        self.encoded.append(text)
        return self.inner.encode(text)


def test_each_increment_is_tokenized_exactly_once(tiny):
    be = CountingBackend(tiny)
    eng = CsrEngine(be, budget_tokens=100_000)
    n0 = len(be.encoded)
    for i in range(12):
        eng.submit("/obs", i * 10**9, f"the cup is on shelf {i}")
        if i % 3 == 0:
            eng.query("where is the cup?", max_new_tokens=2)
    texts = be.encoded[n0:]
    incs = [t for t in texts if "/obs:" in t]
    assert len(incs) == 12 and len(set(incs)) == 12
    assert eng.check_invariant()


def test_state_is_append_only_and_queries_are_cropped(tiny):
    eng = CsrEngine(tiny, budget_tokens=100_000)
    eng.submit("/obs", 0, "first")
    eng.flush()
    snapshots = [eng.ledger.token_ids()]
    for i in range(1, 6):
        eng.submit("/obs", i * 10**9, f"observation {i}")
        r = eng.query("what happened?", max_new_tokens=3)
        now = eng.ledger.token_ids()
        assert now[: len(snapshots[-1])] == snapshots[-1]
        assert eng.check_invariant() and not eng.kv.open_branches()
        assert r.state_tokens == len(now)
        snapshots.append(now)


def test_rendered_times_are_relative_to_the_pinned_epoch(fake):
    eng = CsrEngine(fake, budget_tokens=4096)
    a = eng.submit("/obs", 5_000_000_000, "a")
    b = eng.submit("/obs", 7_500_000_000, "b")
    assert "[     0.0 s] /obs: a" in fake.decode(a.token_ids)
    assert "[     2.5 s] /obs: b" in fake.decode(b.token_ids)


def test_out_of_order_and_oversized_increments_are_rejected_and_counted(fake):
    eng = CsrEngine(fake, budget_tokens=512)
    inc = eng.submit("/obs", 0, "ok")
    with pytest.raises(LedgerError):
        eng.accept(inc)  # same seq again
    with pytest.raises(LedgerError):
        eng.submit("/obs", 1, "x" * 1000)  # > budget/4 tokens
    assert eng.counters.increments_rejected == 2 and eng.counters.increments_total == 1


def test_hard_limit_runs_a_counted_synchronous_drop_oldest(fake):
    eng = CsrEngine(fake, budget_tokens=600, high_water_frac=0.5)
    for i in range(40):
        eng.submit("/obs", i * 10**9, f"observation number {i:03d}")
        eng.flush()
        assert eng.ledger.num_tokens <= 600
        assert eng.check_invariant()
    assert eng.counters.sync_evictions >= 1
    ev = [e for e in eng.drain_events() if e.kind == "sync_eviction"]
    assert len(ev) == eng.counters.sync_evictions
    assert eng.ledger.version == eng.counters.sync_evictions
    seqs = [i.seq for i in eng.ledger.increments]
    assert seqs == list(range(seqs[0], 40))  # the newest are kept, in order, none skipped
    assert eng.needs_compaction or eng.ledger.num_tokens < eng.high_water_tokens


def test_score_prefers_the_right_answer_on_the_fake(fake):
    eng = CsrEngine(fake, budget_tokens=4096)
    eng.submit("/obs", 0, "the robot should wave now")
    s = eng.score("next action?", ["wave", "stop"])
    assert s[0] > s[1] and eng.check_invariant()


def test_install_requires_a_newer_version(fake):
    eng = CsrEngine(fake, budget_tokens=4096)
    eng.submit("/obs", 0, "a")
    eng.flush()
    with pytest.raises(ValueError, match="not newer"):
        eng.install(eng.ledger.copy(), fake.new_state())
