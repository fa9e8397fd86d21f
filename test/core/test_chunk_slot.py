"""The single-slot chunk between the model worker and the action clock (runtime/chunk_slot.py)."""

from __future__ import annotations

import pytest

from csr_ros.core.runtime.chunk_slot import ChunkSlot
from csr_ros.core.runtime.outputs import ChunkOut

pytestmark = pytest.mark.core

DT, VALID = 100, 1000  # ns, small numbers keep the arithmetic readable


def _chunk(stamp: int, hold: bool = False) -> ChunkOut:
    return ChunkOut(stamp, 0, 1, ("x",), 1e-7, 10, tuple(float(i) for i in range(10)),
                    "hold" if hold else "go", stamp + VALID, hold)


def _slot() -> ChunkSlot:
    return ChunkSlot(lambda now: _chunk(now, hold=True), DT, VALID)


def test_the_current_chunk_is_time_shifted_by_whole_steps_and_never_stale():
    s = _slot()
    s.put(_chunk(1000))
    assert s.for_publish(1050, True).stamp_ns == 1000
    c = s.for_publish(1250, True)
    assert (c.stamp_ns, c.horizon, c.data[0], c.is_hold) == (1200, 8, 2.0, False)
    stale = s.for_publish(2000, True)  # at valid_until: the hold, never the old chunk
    assert stale.is_hold and stale.stamp_ns == 2000


def test_an_armed_hold_goes_out_once_then_silence_while_not_serving():
    s = _slot()
    s.put(_chunk(0))
    s.drop(_chunk(5, hold=True))
    assert s.current is None
    first = s.for_publish(10, False)
    assert first.is_hold and first.stamp_ns == 5
    assert s.for_publish(20, False) is None and s.for_publish(30, False) is None
    assert s.for_publish(40, True).is_hold  # serving again: a hold every period until a decision


def test_a_chunk_from_before_a_clock_jump_back_is_not_published():
    s = _slot()
    s.put(_chunk(10_000))
    out = s.for_publish(10_000 - VALID - 1, True)  # the clock went back past the chunk's validity
    assert out.is_hold and out.stamp_ns == 10_000 - VALID - 1
