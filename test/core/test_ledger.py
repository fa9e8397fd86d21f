"""The state ledger: pure bookkeeping of the cached state's tokens (no torch)."""

from __future__ import annotations

import pytest

from csr_ros.core.state.ledger import Increment, LedgerError, MemoryBlock, StateLedger

pytestmark = pytest.mark.core


def inc(seq: int, n: int = 3, source: str = "/obs") -> Increment:
    return Increment(seq, source, seq * 10**9, f"text {seq}", tuple(range(100 + seq, 100 + seq + n)))


def test_token_ids_are_prefix_memory_then_increments_in_order():
    led = StateLedger(prefix_ids=(1, 2), memory=MemoryBlock("m", (7, 8), 0, 1))
    led.append(inc(1, 2))
    led.append(inc(2, 3))
    assert led.token_ids() == [1, 2, 7, 8, 101, 102, 102, 103, 104]
    assert led.num_tokens == 9
    assert led.spans() == [(1, 4, 6), (2, 6, 9)]


def test_sequence_must_strictly_increase_and_tokens_exist():
    led = StateLedger(prefix_ids=(1,))
    led.append(inc(5))
    with pytest.raises(LedgerError, match="not newer"):
        led.append(inc(5))
    with pytest.raises(LedgerError, match="not newer"):
        led.append(inc(3))
    with pytest.raises(LedgerError, match="no tokens"):
        led.append(Increment(6, "/obs", 0, "", ()))
    assert [i.seq for i in led.increments] == [5]


def test_append_never_changes_what_is_already_in_the_state():
    led = StateLedger(prefix_ids=(1, 2, 3))
    led.append(inc(1))
    before = led.token_ids()
    for s in range(2, 20):
        led.append(inc(s))
        assert led.token_ids()[: len(before)] == before
        before = led.token_ids()


def test_compacted_is_a_new_version_and_keeps_the_prefix():
    led = StateLedger(prefix_ids=(1, 2), version=3)
    for s in range(1, 6):
        led.append(inc(s))
    new = led.compacted(MemoryBlock("mem", (9,), 2, 2), led.increments[2:])
    assert new.version == 4 and new.prefix_ids == led.prefix_ids
    assert new.last_seq == 5 and [i.seq for i in new.increments] == [3, 4, 5]
    assert new.token_ids()[:3] == [1, 2, 9]
    assert led.version == 3 and len(led.increments) == 5  # the original is untouched
    with pytest.raises(LedgerError):
        led.compacted(MemoryBlock(), [led.increments[3], led.increments[1]])


def test_increments_after_and_copy_are_independent():
    led = StateLedger(prefix_ids=(1,))
    for s in range(1, 4):
        led.append(inc(s))
    snap = led.copy()
    led.append(inc(4))
    assert [i.seq for i in snap.increments] == [1, 2, 3]
    assert [i.seq for i in led.increments_after(snap.last_seq)] == [4]
