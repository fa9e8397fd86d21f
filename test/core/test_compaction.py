"""Compaction policies on hand-built ledgers (pure: no torch, no model)."""

from __future__ import annotations

import pytest

from csr_ros.core.state.compaction import (
    POLICIES,
    CompactionError,
    Compactor,
    apply_plan,
    memory_body,
    plan_drop_oldest,
    plan_entity_memory,
    plan_for,
    plan_summary,
)
from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.ledger import Fact, Increment, StateLedger
from csr_ros.core.state.template import PromptTemplate

pytestmark = pytest.mark.core
S = 1_000_000_000
TEMPLATE = PromptTemplate(head="{system}\n\n", tail="\nAnswer:")


def encode(text: str) -> list[int]:
    return [ord(c) % 256 for c in text]


def ledger_with(n: int, tokens: int = 10, epoch_s: float = 100.0) -> StateLedger:
    """Increments 0..n-1 of ``tokens`` tokens; seq k says "cup is at place k%3" at t = k s."""
    led = StateLedger(prefix_ids=(1, 2, 3), epoch_ns=int(epoch_s * S))
    for k in range(n):
        stamp = int((epoch_s + k) * S)
        facts = (Fact("cup", "location", f"place{k % 3}", stamp),) if k % 2 == 0 else ()
        led.append(Increment(k, "/odom" if k % 2 else "/cam", stamp, f"obs {k}", (7,) * tokens, facts))
    return led


def test_drop_oldest_drops_the_oldest_fraction_and_represents_nothing():
    led = ledger_with(10)
    plan = plan_drop_oldest(led, 0.5)
    assert [i.seq for i in plan.evicted] == [0, 1, 2, 3, 4]
    assert [i.seq for i in plan.retained] == [5, 6, 7, 8, 9]
    assert not plan.represents_evicted and plan.memory_lines is None
    new = apply_plan(led, plan, TEMPLATE, encode)
    assert new.version == led.version + 1 and new.memory == led.memory  # memory block untouched
    assert new.memory.represented_seqs == 0 and new.memory.covers_through_seq == -1
    assert new.token_ids() == [1, 2, 3] + [7] * 50 and new.last_seq == 9


def test_drop_oldest_keeps_an_existing_memory_block():
    led = ledger_with(10)
    first = apply_plan(led, plan_entity_memory(led, 0.5), TEMPLATE, encode)
    second = apply_plan(first, plan_drop_oldest(first, 0.5), TEMPLATE, encode)
    assert second.memory == first.memory and second.memory.represented_seqs == 5
    assert [i.seq for i in second.increments] == [8, 9]


def test_split_always_keeps_the_newest_increment():
    led = ledger_with(2)
    plan = plan_drop_oldest(led, 0.95)
    assert [i.seq for i in plan.retained] == [1]


def test_entity_memory_renders_what_the_evicted_increments_said():
    led = ledger_with(10)
    plan = plan_entity_memory(led, 0.5)
    assert plan.represents_evicted and plan.covers_through_seq == 4
    assert plan.memory_lines == (
        "/odom: obs 3 @3s (first obs 1 @1s, 2 obs)",
        "cup.location: place1 @4s (first place0 @0s, 3 obs)",
    )
    new = apply_plan(led, plan, TEMPLATE, encode)
    assert new.memory.text == TEMPLATE.memory(list(plan.memory_lines))
    assert new.memory.token_ids == tuple(encode(new.memory.text))
    assert (new.memory.covers_through_seq, new.memory.represented_seqs) == (4, 5)
    assert new.token_ids() == [1, 2, 3] + list(new.memory.token_ids) + [7] * 50


def test_entity_memory_is_cumulative_through_the_compactor():
    comp = Compactor("entity_memory", 0.5, TEMPLATE, encode)
    led = ledger_with(12)
    v1, p1 = comp.compact(led)
    assert p1.covers_through_seq == 5
    for k in range(12, 16):  # more increments arrive
        stamp = int((100 + k) * S)
        v1.append(Increment(k, "/cam", stamp, f"obs {k}", (7,) * 10, (Fact("cup", "location", "bin", stamp),)))
    v2, p2 = comp.compact(v1)
    assert v2.version == 2 and v2.memory.represented_seqs == len(p1.evicted) + len(p2.evicted)
    # the second memory block still knows what the first eviction said (first value, count)
    expected = EntityMemory().observe_all(list(p1.evicted) + list(p2.evicted)).render(led.epoch_ns)
    assert list(p2.memory_lines) == expected
    assert "first place0 @0s" in v2.memory.text
    # a plan for the same ledger is deterministic (same lines, same tokens)
    assert comp.compact(v1)[0].token_ids() == v2.token_ids()


def test_compactor_without_the_earlier_memory_counts_it():
    comp = Compactor("entity_memory", 0.5, TEMPLATE, encode)
    led = apply_plan(ledger_with(10), plan_entity_memory(ledger_with(10), 0.5), TEMPLATE, encode)
    comp.compact(led)  # covers_through_seq=4 is unknown to this compactor
    assert comp.missing_prior == 1
    comp2 = Compactor("entity_memory", 0.5, TEMPLATE, encode)
    comp2.seed(EntityMemory().observe_all(ledger_with(5).increments), 4)
    comp2.compact(led)
    assert comp2.missing_prior == 0


def test_summary_gets_the_previous_summary_and_the_evicted_increments():
    calls = []

    def summarize(prior, evicted, epoch_ns):
        calls.append((prior, [i.seq for i in evicted], epoch_ns))
        return f"summary of {len(evicted)} observations"

    led = ledger_with(10)
    v1 = apply_plan(led, plan_summary(led, 0.5, summarize, TEMPLATE), TEMPLATE, encode)
    assert memory_body(TEMPLATE, v1.memory.text) == "summary of 5 observations"
    assert v1.memory.represented_seqs == 5
    plan_summary(v1, 0.5, summarize, TEMPLATE)
    assert calls[0] == ("", [0, 1, 2, 3, 4], led.epoch_ns)
    assert calls[1][0] == "summary of 5 observations" and calls[1][1] == [5, 6, 7]


def test_empty_summary_is_a_failed_plan():
    with pytest.raises(CompactionError, match="empty summary"):
        plan_summary(ledger_with(10), 0.5, lambda *a: "  ", TEMPLATE)


def test_summary_compactor_never_calls_the_model_on_the_hot_path():
    def boom(*a):
        raise AssertionError("summariser called on the hot path")

    comp = Compactor("summary", 0.5, TEMPLATE, encode, boom)
    led = ledger_with(10)
    led.memory = apply_plan(led, plan_summary(led, 0.5, lambda *a: "earlier summary", TEMPLATE),
                            TEMPLATE, encode).memory
    new = comp.compact_sync(led)
    body = memory_body(TEMPLATE, new.memory.text)
    assert body.startswith("earlier summary\n") and "cup.location: place1" in body


def test_dispatcher_and_its_errors():
    led = ledger_with(10)
    assert set(POLICIES) == {"drop_oldest", "entity_memory", "summary"}
    assert plan_for("drop_oldest", led, 0.5).policy == "drop_oldest"
    assert plan_for("entity_memory", led, 0.5).policy == "entity_memory"
    assert plan_for("summary", led, 0.5, summarize=lambda *a: "s", template=TEMPLATE).memory_lines == ("s",)
    with pytest.raises(CompactionError, match="unknown"):
        plan_for("lru", led, 0.5)
    with pytest.raises(CompactionError, match="summariser"):
        plan_for("summary", led, 0.5)
    with pytest.raises(CompactionError, match="nothing to evict"):
        plan_for("entity_memory", ledger_with(1), 0.5)
    with pytest.raises(CompactionError):
        Compactor("summary", 0.5, TEMPLATE, encode)


def test_memory_body_inverts_the_template():
    assert memory_body(TEMPLATE, TEMPLATE.memory(["a", "b c"])) == "a\nb c"
    assert memory_body(TEMPLATE, "") == ""


def test_entity_memory_block_is_bounded_newest_keys_kept_memory_whole():
    from csr_ros.core.model.backends.fake import FakeBackend
    from csr_ros.core.state.compaction import Compactor
    from csr_ros.core.runtime.engine import CsrEngine

    be = FakeBackend()
    comp = Compactor("entity_memory", 0.5, be.template, be.encode)
    eng = CsrEngine(be, budget_tokens=1500, high_water_frac=0.75, compactor=comp)
    cap = comp.max_block_tokens
    assert cap is not None and cap < eng.high_water_tokens
    for k in range(300):  # every increment names a new thing: the memory would grow without end
        name = f"thing number {k}"
        eng.submit("/observations", (k + 1) * 10**9, f"I see {name} in the hall.",
                   (Fact(name, "location", "the hall by the stairs", (k + 1) * 10**9),))
        eng.flush()
        assert eng.ledger.num_tokens <= eng.budget_tokens and eng.check_invariant()
    block = eng.ledger.memory
    assert 0 < len(block.token_ids) <= cap and comp.trimmed_lines > 0
    assert "thing number 299" not in block.text or "thing number 0 " not in block.text
    # the newest evicted names are in the block, the stalest were left out of it
    evicted_keys = comp._prior(eng.ledger).newest_keys()
    assert evicted_keys[0].split(".")[0] in block.text and evicted_keys[-1].split(".")[0] not in block.text
    # every compaction made room for new increments (a block grown past the high-water mark
    # would leave nothing to evict): the retained increments are the newest ones, several of them
    assert len(eng.ledger.increments) >= 3 and eng.ledger.increments[-1].seq == 299
