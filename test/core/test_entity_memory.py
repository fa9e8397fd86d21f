"""EntityMemory: per-key first/newest values, deterministic rendering, order independence."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csr_ros.core.state.entity_memory import EntityMemory, clean_value
from csr_ros.core.state.ledger import Fact, Increment

pytestmark = pytest.mark.core
S = 1_000_000_000


def inc(seq, t_s, source="/cam", text="x", facts=()):
    return Increment(seq, source, int(t_s * S), text, (1,), tuple(facts))


def fact(entity, attr, value, t_s):
    return Fact(entity, attr, value, int(t_s * S))


def test_keys_from_facts_and_from_sources_without_facts():
    m = EntityMemory()
    m.observe(inc(0, 1.0, "/camera/objects", "cup on table", [fact("cup", "location", "table", 1.0),
                                                              fact("cup", "color", "red", 1.0)]))
    m.observe(inc(1, 2.0, "/battery", "  battery   at 80 % "))
    assert m.keys() == ["/battery", "cup.color", "cup.location"]
    assert m.get("/battery").last.value == "battery at 80 %"  # whitespace collapsed
    assert m.get("cup.location").count == 1
    assert m.entities() == ["/battery", "cup"]
    assert m.through_seq == 1 and m.increments == 2


def test_first_and_newest_with_times_and_counts():
    m = EntityMemory()
    m.observe(inc(0, 1.0, facts=[fact("cup", "location", "table", 1.0)]))
    m.observe(inc(1, 5.0, facts=[fact("cup", "location", "sink", 5.0)]))
    m.observe(inc(2, 9.5, facts=[fact("cup", "location", "shelf", 9.5)]))
    e = m.get("cup.location")
    assert (e.first.value, e.last.value, e.count) == ("table", "shelf", 3)
    assert m.line("cup.location", epoch_ns=0) == "cup.location: shelf @10s (first table @1s, 3 obs)"
    assert m.render(epoch_ns=int(1.0 * S)) == ["cup.location: shelf @8s (first table @0s, 3 obs)"]


def test_single_observation_line_and_key_selection():
    m = EntityMemory()
    m.observe(inc(0, 2.0, "/odom", "x=1 y=2"))
    m.observe(inc(1, 3.0, facts=[fact("door", "state", "open", 3.0)]))
    assert m.render(0) == ["/odom: x=1 y=2 @2s", "door.state: open @3s"]
    assert m.render(0, keys=["door.state", "nope"]) == ["door.state: open @3s"]


def test_out_of_order_stamps_use_stamp_then_seq():
    m = EntityMemory()
    m.observe(inc(0, 5.0, facts=[fact("cup", "location", "late", 5.0)]))
    m.observe(inc(1, 2.0, facts=[fact("cup", "location", "early", 2.0)]))  # older stamp, newer seq
    e = m.get("cup.location")
    assert e.first.value == "early" and e.last.value == "late"


def test_long_values_are_cut_in_the_rendering_only():
    m = EntityMemory(max_value_chars=12)
    m.observe(inc(0, 0.0, "/speech", "a very long utterance that goes on"))
    assert m.render(0) == ["/speech: a very lo... @0s"]
    assert m.get("/speech").last.value == "a very long utterance that goes on"
    assert clean_value("short", 12) == "short"


def test_copy_is_independent():
    m = EntityMemory()
    m.observe(inc(0, 0.0, "/a", "1"))
    c = m.copy()
    c.observe(inc(1, 1.0, "/a", "2"))
    assert m.get("/a").count == 1 and c.get("/a").count == 2


_values = st.sampled_from(["table", "sink", "shelf", "floor"])
_entities = st.sampled_from(["cup", "box", "robot"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_entities, _values, st.integers(0, 50), st.booleans()), min_size=1, max_size=30),
       st.integers(0, 2**16))
def test_fold_and_merge_do_not_depend_on_order(obs, seed):
    incs = []
    for seq, (ent, val, t, with_fact) in enumerate(obs):
        facts = [fact(ent, "location", val, t)] if with_fact else []
        incs.append(inc(seq, t, f"/{ent}", f"{ent} {val}", facts))
    whole = EntityMemory().observe_all(incs)
    shuffled = list(incs)
    random.Random(seed).shuffle(shuffled)
    assert EntityMemory().observe_all(shuffled) == whole
    k = len(incs) // 2
    a, b = EntityMemory().observe_all(shuffled[:k]), EntityMemory().observe_all(shuffled[k:])
    assert a.copy().merge(b) == whole == b.merge(a)
    assert whole.render(0) == EntityMemory().observe_all(shuffled).render(0)


def test_a_flood_of_new_names_is_bounded_by_forgetting_the_stalest_keys():
    m = EntityMemory(max_keys=4)
    for k in range(10):
        m.observe(inc(k, float(k), facts=[fact(f"thing{k}", "location", "hall", float(k))]))
    assert m.keys() == [f"thing{k}.location" for k in range(6, 10)] and m.forgotten_keys == 6
    m.observe(inc(10, 10.0, facts=[fact("thing6", "location", "attic", 10.0)]))  # refreshed: kept
    m.observe(inc(11, 11.0, facts=[fact("thing11", "location", "hall", 11.0)]))
    assert "thing6.location" in m and "thing7.location" not in m and len(m) == 4
    assert m.newest_keys()[:2] == ["thing11.location", "thing6.location"]
    assert m.copy().max_keys == 4 and m.copy().forgotten_keys == m.forgotten_keys
