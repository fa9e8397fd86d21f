"""The core side of the ROS interface (no ROS): serving on/off (the lifecycle), cancelling a
request, worker calls, run-time parameters and the management operations (reset keeps the old
on-disk ledger). Fake backend, microseconds per test."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from csr_ros.core.config import load_config
from csr_ros.core.model.backends.fake import FakeBackend
from csr_ros.core.runtime import live_params, management
from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.runtime.scheduler import FrameScheduler
from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.ledger_store import LedgerStore, read_records, restore

pytestmark = pytest.mark.core


def make(store_dir=None):
    be = FakeBackend()
    store = LedgerStore(store_dir, "always") if store_dir else None
    eng = CsrEngine(be, budget_tokens=4096, store=store, memory=EntityMemory())
    return FrameScheduler(eng, None, load_config({}), time.monotonic_ns)


def frames(sched, n: int) -> list:
    return [o for _ in range(n) for o in sched.run_frame()]


def test_not_serving_holds_once_refuses_questions_and_still_appends():
    sched = make()
    frames(sched, 2)
    assert sched.chunk_for_publish(time.monotonic_ns()) is not None and sched.ask("a", "where?") is None
    sched.set_serving(False)
    first = sched.chunk_for_publish(time.monotonic_ns())
    assert first is not None and first.is_hold
    sched.submit_increment("/obs", time.monotonic_ns(), "cup in the kitchen")
    outs = frames(sched, 3)
    assert [(o.request_id, o.stop_reason) for o in outs if o.is_final] == [("a", "deactivated")]
    assert sched.chunk_for_publish(time.monotonic_ns()) is None           # nothing after the hold
    assert sched.engine.ledger.increments[-1].text == "cup in the kitchen"  # perception goes on
    refusal = sched.ask("b", "where?")
    assert refusal is not None and refusal.stop_reason == "refused" and "not active" in refusal.text
    sched.set_serving(True)
    frames(sched, 1)
    chunk = sched.chunk_for_publish(time.monotonic_ns())
    assert chunk is not None and not chunk.is_hold


def test_cancel_ends_within_one_frame_and_frees_the_slot():
    sched = make()
    live_params.apply(sched, sched.cfg.replace(language__max_open_requests=1))
    assert sched.ask("a", "where is it?", max_new_tokens=30) is None
    assert sched.ask("b", "and now?") is not None                             # the one slot is taken
    partial = [o for o in frames(sched, 3) if o.request_id == "a"]
    assert partial and not any(o.is_final for o in partial)
    assert sched.cancel("a")
    out = [o for o in frames(sched, 1) if o.is_final]
    assert [(o.request_id, o.stop_reason) for o in out] == [("a", "cancelled")] and 0 < out[0].tokens < 30
    assert sched.ask("b", "and now?") is None                                 # free again
    assert not sched.cancel("nope")


def test_worker_calls_run_at_the_next_frame_and_fail_when_stopped():
    sched = make()
    fut = sched.calls.submit(lambda: sched.engine.ledger.version + 41)
    assert not fut.done()
    frames(sched, 1)
    assert fut.result(0) == 41
    late = sched.calls.submit(lambda: 1)
    sched.calls.fail_all("stopped")
    with pytest.raises(RuntimeError, match="stopped"):
        late.result(0)


def test_reset_keeps_the_old_ledger_on_disk_and_starts_empty(tmp_path):
    sched = make(tmp_path)
    sched.submit_increment("/obs", time.monotonic_ns(), "cup is in the kitchen")
    frames(sched, 2)
    seq = sched.engine.ledger.last_seq
    archived, version = management.reset(sched)
    assert version == 1 and sched.engine.ledger.increments == [] and sched.engine.check_invariant()
    assert any(r.get("text") == "cup is in the kitchen" for r in read_records(Path(archived))[0])
    assert restore(tmp_path).ledger.increments == []                          # the new ledger
    sched.submit_increment("/obs", time.monotonic_ns(), "box is in the hall")
    frames(sched, 1)
    assert sched.engine.ledger.increments[0].seq == seq + 1                   # numbering goes on
    assert [i.text for i in restore(tmp_path).ledger.increments] == ["box is in the hall"]
    archived2, _ = management.reset(sched)
    assert archived2 != archived and sorted(p.name for p in tmp_path.iterdir()).count("ledger.csrl") == 1


def test_state_text_is_bounded_and_memory_lookup_names_what_is_missing():
    sched = make()
    sched.submit_increment("/obs", time.monotonic_ns(), "cup is in the kitchen")
    frames(sched, 1)
    text, truncated, _, tokens = management.state_text(sched, 0)
    assert "cup is in the kitchen" in text and not truncated and tokens == sched.engine.ledger.num_tokens
    short, truncated, _, _ = management.state_text(sched, 10)
    assert truncated and short == text[-10:]
    entries, n = management.memory_entries(sched, "")
    assert n == 1 and [e.key for e in entries] == ["/obs"]
    with pytest.raises(LookupError, match="unicorn"):
        management.memory_entries(sched, "unicorn")


def test_every_writable_parameter_is_applied():
    assert live_params.writable() == live_params.APPLIED
    assert live_params.refusal("budget.budget_tokens") and not live_params.refusal("language.max_new_tokens")
