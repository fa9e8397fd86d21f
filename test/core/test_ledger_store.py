"""LedgerStore: append-only records with checksums, torn-tail tolerance, fsync policies, restore."""

from __future__ import annotations

import os

import pytest

from csr_ros.core.state.compaction import Compactor
from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.ledger import Fact, Increment, LedgerError, StateLedger
from csr_ros.core.state.ledger_store import (
    FILE_NAME,
    LedgerCorrupt,
    LedgerStore,
    decode_record,
    encode_record,
    read_records,
    restore,
)
from csr_ros.core.state.template import PromptTemplate

pytestmark = pytest.mark.core
S = 1_000_000_000


def inc(seq, text="obs", facts=()):
    return Increment(seq, "/cam", (10 + seq) * S, text, (5, 6, seq % 256), tuple(facts))


def test_record_roundtrip_and_checksum():
    rec = {"t": "inc", "text": "line\nbreak \u00e9", "ids": [1, 2]}
    line = encode_record(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_record(line) == rec
    bad = line[:20] + bytes([line[20] ^ 1]) + line[21:]
    assert decode_record(bad) is None
    assert decode_record(line[:-1]) is None  # no newline: torn


def test_store_and_restore_roundtrip(tmp_path):
    with LedgerStore(tmp_path, fsync="always") as st:
        st.begin((1, 2, 3), {"model": "m"})
        st.set_epoch(10 * S)
        for k in range(6):
            st.append_increment(inc(k, facts=[Fact("cup", "loc", f"p{k}", (10 + k) * S)]))
        assert st.fsyncs == st.records_written == 8
    r = restore(tmp_path)
    assert r.ledger.prefix_ids == (1, 2, 3) and r.ledger.epoch_ns == 10 * S
    assert [i.seq for i in r.ledger.increments] == list(range(6))
    assert r.ledger.increments[3] == inc(3, facts=[Fact("cup", "loc", "p3", 13 * S)])
    assert r.memory.get("cup.loc").count == 6 and r.meta == {"model": "m"}
    assert restore(tmp_path / "nothing") is None


def test_compaction_records_reproduce_versions_and_memory(tmp_path):
    led = StateLedger(prefix_ids=(1,), epoch_ns=0)
    with LedgerStore(tmp_path) as st:
        st.begin(led.prefix_ids)
        for k in range(8):
            st.append_increment(inc(k))
            led.append(inc(k))
        comp = Compactor("entity_memory", 0.5, PromptTemplate(head="{system}", tail=""), lambda s: [ord(c) for c in s])
        new, plan = comp.compact(led)
        st.append_compaction(new, "entity_memory")
        st.append_increment(inc(8))  # accepted after the compaction
    r = restore(tmp_path)
    new.append(inc(8))
    assert r.ledger.version == new.version == 1
    assert r.ledger.memory == new.memory and r.ledger.token_ids() == new.token_ids()
    assert r.evicted_memory == EntityMemory().observe_all(plan.evicted)
    assert r.compactions == 1 and r.increments == 9


def test_torn_last_record_is_dropped_never_an_earlier_one(tmp_path):
    with LedgerStore(tmp_path, fsync="never") as st:
        st.begin((1,))
        for k in range(5):
            st.append_increment(inc(k))
    path = tmp_path / FILE_NAME
    data = path.read_bytes()
    for cut in range(1, 40):  # every possible torn tail of the last record
        path.write_bytes(data[:-cut])
        r = restore(tmp_path)
        assert [i.seq for i in r.ledger.increments] == [0, 1, 2, 3] and r.torn_bytes > 0
    path.write_bytes(data + b"0000dead {\"t\":\"inc\"")  # garbage after the last good record
    assert [i.seq for i in restore(tmp_path).ledger.increments] == [0, 1, 2, 3, 4]


def test_reopening_cuts_the_torn_tail_and_appends_cleanly(tmp_path):
    with LedgerStore(tmp_path) as st:
        st.begin((1,))
        st.append_increment(inc(0))
        st.append_increment(inc(1))
    path = tmp_path / FILE_NAME
    path.write_bytes(path.read_bytes()[:-7])
    with LedgerStore(tmp_path) as st:
        assert [i.seq for i in st.restore().ledger.increments] == [0]
        st.begin((1,))  # same prefix: no new header
        st.append_increment(inc(1))
    records, good, torn = read_records(path)
    assert torn == 0 and [r["t"] for r in records] == ["header", "inc", "inc"]


def test_a_bad_record_in_the_middle_is_corruption(tmp_path):
    with LedgerStore(tmp_path) as st:
        st.begin((1,))
        for k in range(3):
            st.append_increment(inc(k))
    path = tmp_path / FILE_NAME
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"obs", b"OBS")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(LedgerCorrupt, match="followed by more records"):
        restore(tmp_path)


def test_fsync_policies(tmp_path):
    now = [0.0]
    with LedgerStore(tmp_path / "b", fsync="batch", batch_period_s=1.0, clock=lambda: now[0]) as st:
        st.begin((1,))
        for k in range(10):
            now[0] += 0.25
            st.append_increment(inc(k))
        assert st.fsyncs == 2  # at t=1.0 and t=2.0 (not per record)
    with LedgerStore(tmp_path / "n", fsync="never") as st:
        st.begin((1,))
        st.append_increment(inc(0))
        assert st.fsyncs == 0
    with pytest.raises(ValueError, match="fsync policy"):
        LedgerStore(tmp_path / "x", fsync="sometimes")


def test_a_different_prefix_is_refused(tmp_path):
    with LedgerStore(tmp_path) as st:
        st.begin((1, 2))
    with LedgerStore(tmp_path) as st, pytest.raises(LedgerError, match="different system prefix"):
        st.begin((9, 9))


def _stream(eng, n, start=0):
    for k in range(start, start + n):
        eng.submit("/cam" if k % 3 else "/odom", (100 + k) * S, f"cup at place {k % 4}",
                   (Fact("cup", "location", f"place {k % 4}", (100 + k) * S),) if k % 3 else ())
        eng.flush()


def test_engine_restart_restores_the_same_state(fake, tmp_path):
    def make(store):
        comp = Compactor("entity_memory", 0.5, fake.template, fake.encode)
        return CsrEngine(fake, budget_tokens=700, compactor=comp, store=store, memory=EntityMemory()), comp

    eng, comp = make(LedgerStore(tmp_path, fsync="batch"))
    _stream(eng, 60)  # several synchronous compactions at the hard limit
    assert eng.counters.sync_evictions >= 2
    eng.submit("/cam", 999 * S, "pending at the crash")  # accepted, not yet appended
    eng.store.close()

    eng2, comp2 = make(LedgerStore(tmp_path))
    assert eng2.ledger.version == eng.ledger.version
    assert eng2.snapshot().token_ids() == eng.snapshot().token_ids()
    assert eng2.ledger.memory == eng.ledger.memory and eng2.memory == eng.memory
    assert eng2.check_invariant() and eng2.counters.increments_total == eng.counters.increments_total
    # both go on identically (the restored compactor has the earlier evicted memory)
    eng.store = eng2.store
    _stream(eng2, 30, start=60)
    eng.store = None
    _stream(eng, 30, start=60)
    assert eng2.ledger.token_ids() == eng.ledger.token_ids() and comp2.missing_prior == 0
    eng2.store.close()


def test_restore_over_budget_keeps_the_newest_pending(fake, tmp_path):
    with LedgerStore(tmp_path) as st:
        eng = CsrEngine(fake, budget_tokens=600, store=st)
        for k in range(12):  # never flushed: all pending, far over the budget
            eng.submit("/cam", (100 + k) * S, f"observation number {k} " * 2)
    eng2 = CsrEngine(fake, budget_tokens=600, store=LedgerStore(tmp_path))
    assert eng2.ledger.num_tokens <= 600 and eng2.pending
    assert [i.seq for i in eng2.ledger.increments + eng2.pending] == list(range(12))
    eng2.flush()  # the synchronous fallback runs as it would have before the restart
    assert eng2.counters.sync_evictions >= 1 and eng2.check_invariant()
    eng2.store.close()


def test_store_write_failure_is_held_not_raised(fake, tmp_path):
    st = LedgerStore(tmp_path)
    eng = CsrEngine(fake, budget_tokens=600, store=st)
    os.close(st._log.fd)  # the file goes away under the store (EBADF)
    eng.submit("/cam", S, "still served")
    c = st.counters
    assert c.write_failures >= 1 and not c.disk_ok and c.backlog_records == 2 and eng.query("q").text
    st._log.fd = -1  # reopened at the next attempt (never close a descriptor number reused since)
    st.close()
    assert [i.seq for i in restore(tmp_path).ledger.increments] == [0]
