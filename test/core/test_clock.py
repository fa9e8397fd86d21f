"""The clock outside the process (issue 22): a clock that jumps back (a simulator reset, a bag
loop) and a policy that falls behind its chunks. Fake time throughout (exact, ~1 s in all)."""

from __future__ import annotations

import re

import pytest

from csr_ros.core.state.ledger import Fact
from csr_ros.core.state.stamps import Timeline
from csr_ros.core.runtime.scheduler import CLOCK_SOURCE

from test_scheduler import MS, S, Clock, make, run_for

pytestmark = pytest.mark.core


# ------------------------------------------------------------------------------ the timeline
def test_timeline_detects_a_jump_back_and_keeps_the_state_time_monotone():
    clock = Clock()
    tl = Timeline(clock, threshold_ns=100 * MS)
    assert tl.now_ns() == (10 * S, None) and tl.to_state(10 * S) == 10 * S
    clock.t = 10 * S - 50 * MS  # a step back below the threshold: a reading race, ignored
    assert tl.now_ns()[1] is None and tl.offset_ns == 0
    clock.t = 20 * S
    tl.now_ns()
    clock.t = 5 * S  # back by 15 s
    now, jump = tl.now_ns()
    assert now == 5 * S and jump.delta_ns == -15 * S and jump.segment == 1
    assert tl.to_state(5 * S) == 20 * S + 100 * MS  # the segment starts one threshold later
    clock.t = 6 * S
    assert tl.now_ns()[1] is None and tl.to_state(6 * S) == 21 * S + 100 * MS  # and goes on
    clock.t = 1 * S  # a second jump back: a third segment, still monotone
    assert tl.now_ns()[1].segment == 2 and tl.to_state(1 * S) == 21 * S + 200 * MS


def test_timeline_ignores_an_unstarted_sim_clock_and_resumes_a_restored_state():
    clock = Clock()
    clock.t = 0  # use_sim_time before the first /clock
    tl = Timeline(clock, threshold_ns=100 * MS, last_state_ns=50 * S)  # a ledger restored up to 50 s
    assert tl.now_ns() == (0, None) and tl.offset_ns == 0
    clock.t = 3 * S  # the simulation starts over, earlier than the restored state
    _, jump = tl.now_ns()
    assert jump is not None and tl.to_state(3 * S) > 50 * S


# ------------------------------------------------------------------------------ the scheduler
def _feed(sched, clock, seconds: float, every_s: float = 0.5, label: str = "a"):
    """Frames on fake time with an observation (and one fact) every ``every_s``; the publisher's
    ticks as run_for returns them."""
    ticks, k = [], 0
    for _ in range(int(seconds / every_s)):
        sched.submit_increment("/observations", clock.t, f"kettle {label}{k} on the stove: wave",
                               (Fact("kettle", "location", "stove", clock.t),))
        ticks += run_for(sched, clock, every_s)
        k += 1
    return ticks


def test_a_clock_jump_back_starts_a_new_episode_segment_and_nothing_is_reordered():
    clock = Clock()
    clock.t = 2000 * S
    sched, clock, _ = make(clock)
    before = _feed(sched, clock, 3.0)
    last_chunk = sched.chunk_for_publish(clock.t)
    assert not last_chunk.is_hold and all(not c.is_hold for _, c in before[1:])
    clock.t -= 1000 * S  # the simulator resets (bag loop): ROS time jumps back 1000 s
    first = sched.chunk_for_publish(clock.t)
    # the publisher read the NEW time, the scheduler has not read its clock yet: the chunk from
    # the old timeline (stamped 1000 s "ahead") is never published, the hold is
    assert first.is_hold and first.stamp_ns == clock.t
    after = _feed(sched, clock, 3.0, label="b")
    assert sched.status().clock_jumps == 1 and [e.kind for e in sched.drain_events()] == ["clock_jump"]
    # the next frame decided at once: a fresh chunk on the new timeline at the first tick after it
    assert not after[0][1].is_hold and after[0][1].stamp_ns < last_chunk.stamp_ns - 900 * S
    assert all(not c.is_hold and t <= c.stamp_ns + 100 * MS < c.valid_until_ns for t, c in after)
    # the ledger: seqs and stamps strictly in order, a marker increment between the segments
    incs = sched.engine.ledger.increments
    assert [i.seq for i in incs] == list(range(len(incs)))
    assert all(a.stamp_ns <= b.stamp_ns for a, b in zip(incs, incs[1:]))  # never back, never reordered
    marker = next(i for i in incs if i.source == CLOCK_SOURCE)
    assert re.search(r"jumped back 99\d\.\d s", marker.text) and "episode segment 1" in marker.text
    k = incs.index(marker)
    assert incs[k - 1].stamp_ns < marker.stamp_ns
    assert incs[k - 1].text.startswith("kettle a") and incs[k + 1].text.startswith("kettle b")
    # times in the state go on (rendered once, relative to the pinned epoch; never negative)
    epoch = sched.engine.ledger.epoch_ns
    assert 0 <= (incs[k + 1].stamp_ns - epoch) / 1e9 - (incs[k - 1].stamp_ns - epoch) / 1e9 < 1.0
    assert incs[k + 1].facts[0].stamp_ns == incs[k + 1].stamp_ns  # facts moved with their message
    # the chunks' observation stamps are on the chunks' (new) clock
    assert after[-1][1].observation_stamp_ns <= after[-1][1].stamp_ns
    assert after[-1][1].observation_stamp_ns > clock.t - 2 * S


def test_a_jump_back_inside_a_frame_neither_raises_nor_poisons_the_frame_timing():
    sched, clock, be = make()
    _feed(sched, clock, 1.0)
    real_tick = be.new_state().__class__._tick

    def jumping_tick(state):
        real_tick(state)
        if sched.counters.clock_jumps == 0 and sched.counters.frames > 5:
            clock.t -= 500 * S  # during a forward

    sched.engine.kv._tick = lambda: jumping_tick(sched.engine.kv)
    ticks = _feed(sched, clock, 3.0)
    assert sched.status().clock_jumps == 1
    assert 0 < sched._frame_ema_ns < S  # no negative (or 500 s) frame learnt
    assert all(c.valid_until_ns > t for t, c in ticks)  # never stale, and a chunk every tick


# ------------------------------------------------------------------------------ falling behind
def test_a_policy_slower_than_the_chunk_validity_still_yields_a_chunk_every_period():
    # every forward costs 1.2 s of fake time; a chunk is valid 1.0 s: the policy cannot refresh in time
    sched, clock, _ = make(forward_ms=1200)
    sched.submit_increment("/camera/people", clock.t, "person waving: wave")
    ticks = run_for(sched, clock, 12.0)
    assert len(ticks) >= 119 and all(c is not None for _, c in ticks)  # a chunk at every tick
    holds = [c for _, c in ticks if c.is_hold]
    fresh = [c for _, c in ticks if not c.is_hold]
    assert holds and fresh  # it falls behind, and it still acts between
    assert all(c.action == "hold" and set(c.data) == {0.0} for c in holds)
    assert all(c.action == "wave" for c in fresh)
    assert all(t < c.valid_until_ns for t, c in ticks)  # never a stale chunk
    assert all(c.stamp_ns == t for t, c in ticks if c.is_hold)  # a hold is stamped at its tick
    assert sched.status().holds_published == len(holds)  # one hold period per hold tick, counted
