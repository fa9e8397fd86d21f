"""Query-time focus (entity matching, memory lines) and the state / memory answer contexts."""

from __future__ import annotations

import pytest

from csr_ros.core.runtime import answer as A
from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.focus import FocusMatcher, entity_keys, focus_for, normalise
from csr_ros.core.state.ledger import Fact, Increment

pytestmark = pytest.mark.core
S = 10**9


def test_normalise():
    assert normalise("  The RED_cup, now?! ") == "the red cup now"
    assert normalise("tv-remote/base.link") == "tv remote base link"


@pytest.mark.parametrize("question,entities,want", [
    ("Where is the red cup now?", ["red cup", "blue mug"], [("red cup", "exact")]),
    ("Where is the Red Cup?", ["red_cup", "blue mug"], [("red_cup", "normalised")]),
    ("Where is the red cup?", ["cup", "red cup"], [("red cup", "exact")]),  # nested "cup" dropped
    ("Is the cup near the red cup?", ["cup", "red cup"], [("red cup", "exact"), ("cup", "exact")]),
    ("Where are the cupboards?", ["cup"], []),  # whole words only
    ("red cup or blue mug?", ["blue mug", "red cup"], [("blue mug", "exact"), ("red cup", "exact")]),
])
def test_text_matches(question, entities, want):
    got = FocusMatcher().match(question, entities)
    assert [(m.entity, m.how) for m in got] == want


def test_similarity_fallback_only_without_text_match():
    calls = []

    def sim(q, ents):
        calls.append(q)
        return [{"tv remote": 0.8, "laptop": 0.56, "wallet": 0.2}[e] for e in ents]

    m = FocusMatcher(sim, threshold=0.55, max_entities=4)
    got = m.match("Where is the remote control?", ["tv remote", "laptop", "wallet"])
    assert [(x.entity, x.how) for x in got] == [("tv remote", "similar"), ("laptop", "similar")]
    assert got[0].score == pytest.approx(0.8)
    assert FocusMatcher(sim, threshold=0.7).match("remote?", ["tv remote", "laptop", "wallet"])[0].entity == "tv remote"
    calls.clear()
    assert m.match("Where is the laptop?", ["tv remote", "laptop", "wallet"])[0].how == "exact"
    assert calls == []  # never consulted when a key matches
    assert FocusMatcher(None).match("Where is the remote control?", ["tv remote"]) == []


def _inc(seq, t_s, text, facts=(), source="/observations"):
    return Increment(seq, source, t_s * S, text, (1,), tuple(Fact(e, a, v, t_s * S) for e, a, v in facts))


def _memory():
    mem = EntityMemory()
    mem.observe(_inc(0, 1, "I see the red cup in the kitchen.", [("red cup", "location", "kitchen")]))
    mem.observe(_inc(1, 2, "Battery at 50 percent."))
    mem.observe(_inc(2, 3, "shoulder=0.1", [("shoulder", "position", "0.10")], "/joint_states"))
    mem.observe(_inc(3, 9, "I see the red cup in the garage.", [("red cup", "location", "garage")]))
    mem.observe(_inc(4, 9, "I see the blue mug in the office.", [("blue mug", "location", "office")]))
    return mem


def test_focus_lines_are_the_asked_entity_memory_lines():
    mem = _memory()
    assert entity_keys(mem) == {"blue mug": ["blue mug.location"], "red cup": ["red cup.location"],
                                "shoulder": ["shoulder.position"]}  # topic keys are not entities
    f = focus_for("Where is the red cup now?", mem, 0, FocusMatcher())
    assert f.entities == ("red cup",)
    assert f.lines == ("red cup location first seen: kitchen (at 1.0 s)",
                       "red cup location last seen: garage (at 9.0 s)")
    assert focus_for("Where is the cat?", mem, 0, FocusMatcher()).lines == ()
    assert focus_for("anything", EntityMemory(), 0, FocusMatcher()).lines == ()
    both = focus_for("red cup and blue mug", mem, 0, FocusMatcher(), max_lines=3)
    assert len(both.lines) == 3 and both.entities == ("blue mug", "red cup")


FIRST, LAST = "red cup location first seen: kitchen (at 1.0 s)", "red cup location last seen: garage (at 9.0 s)"


@pytest.mark.parametrize("question, facets, lines", [
    ("Where was the red cup first seen?", ("first",), (FIRST,)),
    ("Where was the Red Cup ORIGINALLY?", ("first",), (FIRST,)),
    ("Where is the red cup now?", ("last",), (LAST,)),
    ("Where was the red cup most recently?", ("last",), (LAST,)),
    ("Where is the red cup?", ("first", "last"), (FIRST, LAST)),  # no cue: both
    ("Was the red cup first seen where it is now?", ("first", "last"), (FIRST, LAST)),  # both kinds
    ("Is the red cup firstly in the kitchen?", ("first", "last"), (FIRST, LAST)),  # whole words only
    ("Where is the red cup known from?", ("first", "last"), (FIRST, LAST)),  # "now" inside "known"
])
def test_focus_gives_the_facet_the_question_asks_for(question, facets, lines):
    matcher = FocusMatcher(first_cues=["first", "originally"], last_cues=["now", "most recently"])
    f = focus_for(question, _memory(), 0, matcher)
    assert f.facets == facets and f.lines == lines and f.entities == ("red cup",)


def test_facet_cues_come_from_the_parameter_table():
    from csr_ros.core.config import load_config

    m = FocusMatcher.from_config(load_config().memory)
    assert m.facets("Where was the laptop first seen?") == ("first",)
    assert m.facets("Where is the laptop now?") == ("last",)
    none = FocusMatcher.from_config(load_config({"memory.first_seen_cues": [], "memory.last_seen_cues": []}).memory)
    assert none.facets("Where was the laptop first seen?") == ("first", "last")


def test_recent_naming_newest_first_kept_in_order():
    incs = [_inc(0, 1, "I see the red cup.", [("red cup", "location", "kitchen")]),
            _inc(1, 2, "the RED_CUP fell"),  # named in text only (normalised)
            _inc(2, 3, "nothing"),
            _inc(3, 4, "I see the red cup again", [("red cup", "location", "garage")])]
    assert [i.seq for i in A.recent_naming(incs, ["red cup"], 2)] == [1, 3]
    assert A.recent_naming(incs, ["red cup"], 0) == []
    assert A.recent_naming(incs, [], 3) == []


def _engine(fake, **kw):
    eng = CsrEngine(fake, budget_tokens=4096, memory=EntityMemory(), **kw)
    eng.submit("/observations", 1 * S, "I see the red cup in the kitchen.", [Fact("red cup", "location", "kitchen", S)])
    eng.submit("/observations", 2 * S, "A dog barks.")
    eng.submit("/observations", 3 * S, "I see the red cup in the garage.", [Fact("red cup", "location", "garage", 3 * S)])
    return eng


def test_state_context_appends_after_the_state_and_is_cropped(fake):
    eng = _engine(fake)
    eng.flush()
    before = eng.ledger.token_ids()
    f = focus_for("Where is the red cup?", eng.memory, eng.ledger.epoch_ns, FocusMatcher())
    p = A.build(eng, "Where is the red cup?", f, "state", "The red cup is in the")
    text = fake.decode(p.ids)
    assert p.context == "state" and f.lines[0] in text and text.endswith("The red cup is in the")
    assert text.index("Where is the red cup?") < text.index(f.lines[0])  # in the answer turn
    scores = A.score(eng, p, ["garage", "kitchen"])
    assert len(scores) == 2
    g = A.generate(eng, p, 8)
    assert g.context == "state" and g.text
    assert eng.ledger.token_ids() == before and eng.check_invariant()  # prefix-stable: nothing stayed
    assert eng.kv.open_branches() == []


def test_state_context_appends_pending_first(fake):
    eng = _engine(fake)
    assert eng.pending
    p = A.build(eng, "Where is the red cup?", focus_for("red cup", eng.memory, 0, FocusMatcher()))
    A.score(eng, p, ["garage"])
    assert not eng.pending and eng.check_invariant()


def test_memory_context_is_short_and_never_touches_the_state(fake):
    eng = _engine(fake)
    for i in range(40):
        eng.submit("/observations", (10 + i) * S, f"distractor number {i} in the hallway")
    eng.flush()
    kv_len, forwards = eng.kv.length, eng.kv.forwards
    f = focus_for("Where is the red cup?", eng.memory, eng.ledger.epoch_ns, FocusMatcher())
    p = A.build(eng, "Where is the red cup?", f, "memory", "The red cup is in the", recent_increments=1)
    text = fake.decode(p.ids)
    assert p.ids[: len(eng.ledger.prefix_ids)] == eng.ledger.prefix_ids
    assert "I see the red cup in the garage." in text and "I see the red cup in the kitchen." not in text
    assert "distractor" not in text and f.lines[0] in text
    assert len(p.ids) < eng.ledger.num_tokens // 2
    assert p.recent_seqs == (2,)
    A.score(eng, p, ["garage", "kitchen"])
    A.generate(eng, p, 4)
    assert eng.kv.length == kv_len and eng.kv.forwards == forwards  # answered on a fresh state
    with pytest.raises(ValueError):
        A.build(eng, "q", f, "bogus")


def test_configured_answer_contexts(fake):
    from csr_ros.core.config import load_config

    eng = _engine(fake)
    on = A.AnswerContexts(load_config().memory)
    p = on.build(eng, "Where is the red cup?", "The red cup is in the")
    assert p.context == "state" and p.focus.entities == ("red cup",)
    off = A.AnswerContexts(load_config({"memory.focus_enabled": False}).memory)
    assert off.build(eng, "Where is the red cup?").focus.lines == ()
    mem = off.build(eng, "Where is the red cup?", context="memory")  # made of focus lines: always on
    assert mem.context == "memory" and mem.focus.entities == ("red cup",)
    cfg = load_config({"memory.answer_context": "memory", "memory.recent_increments": 0}).memory
    p = A.AnswerContexts(cfg).build(eng, "Where is the red cup?")
    assert p.context == "memory" and p.recent_seqs == ()
    assert A.AnswerContexts(cfg).build(eng, "Where is the red cup?", context="state").context == "state"
    eng.memory = None
    assert on.focus(eng, "Where is the red cup?").lines == ()


def test_without_focus_the_state_query_is_the_template_query(fake):
    t = fake.template
    assert A.state_query_text(t, "Where  is the cup?", (), "The cup is in the") == \
        t.query("Where  is the cup?", None, "The cup is in the")
    with_lines = A.state_query_text(t, "Where is the cup?", ("cup location last seen: sink (at 1.0 s)",), "The cup")
    assert with_lines.startswith(t.query("Where is the cup?", None, ""))
    assert with_lines.endswith("cup location last seen: sink (at 1.0 s)\nThe cup")


def test_focus_lines_survive_a_restart_from_the_on_disk_ledger(fake, tmp_path):
    from csr_ros.core.state.compaction import Compactor
    from csr_ros.core.state.ledger_store import LedgerStore

    def make():
        comp = Compactor("entity_memory", 0.5, fake.template, fake.encode)
        return CsrEngine(fake, budget_tokens=900, compactor=comp, store=LedgerStore(tmp_path), memory=EntityMemory())

    eng = make()
    for k in range(60):  # several compactions: most sightings are evicted from the state
        room = ("kitchen", "garage", "office")[k % 3]
        eng.submit("/observations", (10 + k) * S, f"I see the red cup in the {room}.",
                   (Fact("red cup", "location", room, (10 + k) * S),) if k % 2 else ())
        eng.flush()
    assert eng.counters.sync_evictions >= 2
    q = "Where is the red cup now?"
    before = focus_for(q, eng.memory, eng.ledger.epoch_ns, FocusMatcher())
    eng.store.close()
    eng2 = make()
    after = focus_for(q, eng2.memory, eng2.ledger.epoch_ns, FocusMatcher())
    assert after == before and before.lines[0].startswith("red cup location first seen: garage (at 1.0 s)")
    p1 = A.build(eng, q, before, "memory", "The red cup is in the")
    assert A.build(eng2, q, after, "memory", "The red cup is in the").ids == p1.ids
    eng2.store.close()
