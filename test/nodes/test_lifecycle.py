"""The inference node as a managed (lifecycle) node, in-process on the fake backend with a real
rclpy Context: what is published in each state of the full transition sequence, that nothing
perceived while inactive is lost, and that a bad parameter fails configure naming it.
Cost: ~15 s (one graph per test; the fake backend answers in microseconds)."""

from __future__ import annotations

import time

import pytest

from harness import InProcessGraph, until

pytestmark = pytest.mark.nodes


@pytest.fixture
def lgraph(ros_domain_id, tmp_path):
    g = InProcessGraph(ros_domain_id, f"ledger.dir:={tmp_path / 'ledger'}", "ledger.fsync:=always")
    g.ledger_dir = tmp_path / "ledger"
    yield g
    g.close()


def _quiet(probe, key: str, frames: int = 5) -> int:
    """How many ``key`` messages arrive during ``frames`` control periods (10 Hz) from now."""
    n0 = probe.n(key)
    time.sleep(frames * 0.1)
    return probe.n(key) - n0


def _ledger_texts(directory) -> list[str]:
    from csr_ros.core.state.ledger_store import restore

    r = restore(directory)
    return [i.text for i in r.ledger.increments] if r is not None else []



def _holds_only_before_the_first_decision(chunks) -> bool:
    """Active: the hold chunk every tick until the first decision (never a silent tick, issue
    22), then policy chunks."""
    first = next(i for i, c in enumerate(chunks) if not c.is_hold)
    return not any(c.is_hold for c in chunks[first:])

def test_full_transition_sequence_and_what_each_state_publishes(lgraph):
    node, probe = lgraph.node, lgraph.probe
    published = {}
    # unconfigured: no core, no topics of its own
    assert node.lifecycle_state == "unconfigured" and node.scheduler is None
    published["unconfigured"] = {"chunks": _quiet(probe, "chunk"), "status": _quiet(probe, "status")}
    assert published["unconfigured"] == {"chunks": 0, "status": 0}

    assert lgraph.change_state("configure") and node.lifecycle_state == "inactive"      # -> inactive
    assert until(lambda: probe.n("status") > 0)                                          # status goes on
    assert until(lambda: probe.obs.get_subscription_count() > 0)
    probe.observe("the red cup is in the kitchen")                                       # perception while inactive
    assert until(lambda: probe.n("inc") >= 1)
    published["inactive (configured)"] = {"chunks": _quiet(probe, "chunk")}
    assert published["inactive (configured)"]["chunks"] == 0                             # no action before activate

    assert lgraph.change_state("activate") and node.lifecycle_state == "active"          # -> active
    assert until(lambda: probe.n("chunk") >= 3 and not probe.since("chunk", 0)[-1].is_hold)
    assert _holds_only_before_the_first_decision(probe.since("chunk", 0))
    published["active"] = {"chunks": probe.n("chunk")}

    n_before = probe.n("chunk")
    assert lgraph.change_state("deactivate") and node.lifecycle_state == "inactive"      # -> inactive
    probe.observe("the blue mug is in the garage")                                       # perception while inactive
    assert until(lambda: probe.n("inc") >= 2)
    _quiet(probe, "chunk", 8)
    after = probe.since("chunk", n_before)
    holds = [c for c in after if c.is_hold]
    assert len(holds) == 1 and after[-1].is_hold, [c.is_hold for c in after]             # the one hold, then nothing
    published["inactive (deactivated)"] = {"chunks after the hold": _quiet(probe, "chunk"), "holds": len(holds)}
    assert published["inactive (deactivated)"]["chunks after the hold"] == 0
    assert "the blue mug is in the garage" in _ledger_texts(lgraph.ledger_dir)           # recorded while inactive

    assert lgraph.change_state("activate")                                               # -> active again
    n_again = probe.n("chunk")
    assert until(lambda: probe.n("chunk") >= n_again + 3 and not probe.since("chunk", n_again)[-1].is_hold)
    assert _holds_only_before_the_first_decision(probe.since("chunk", n_again))

    assert lgraph.change_state("deactivate") and lgraph.change_state("cleanup")          # -> unconfigured
    assert node.lifecycle_state == "unconfigured" and node.scheduler is None and node.core is None
    time.sleep(0.2)
    published["unconfigured (cleaned up)"] = {"chunks": _quiet(probe, "chunk"), "status": _quiet(probe, "status")}
    assert published["unconfigured (cleaned up)"] == {"chunks": 0, "status": 0}

    assert lgraph.change_state("configure")                                              # restores the ledger
    restored = node.scheduler.engine.ledger
    assert [i.text for i in restored.increments] == ["the red cup is in the kitchen", "the blue mug is in the garage"]
    print("published per state:", published)
    node.trigger_shutdown()                                                              # -> finalized
    assert node.lifecycle_state == "finalized" and node.core is None
    assert _ledger_texts(lgraph.ledger_dir)[-1] == "the blue mug is in the garage"     # flushed and closed


@pytest.mark.parametrize("bad, named", [("budget.budget_tokens:=5", "budget.budget_tokens: 5 is outside [128, 2000000]"),
                                        ("model.backend:=bogus", "model.backend: 'bogus' is not one of")])
def test_a_bad_parameter_fails_configure_naming_it_and_its_range(ros_domain_id, bad, named):
    g = InProcessGraph(ros_domain_id, bad)
    try:
        assert not g.change_state("configure")
        assert g.node.lifecycle_state == "unconfigured" and g.node.core is None
        assert named in g.node.last_error, g.node.last_error
    finally:
        g.close()


def test_run_time_parameters_follow_the_tables_read_only_column(ros_domain_id):
    from rclpy.parameter import Parameter

    from csr_ros.core.runtime import live_params

    assert live_params.writable() == live_params.APPLIED  # every writable row is put into effect
    g = InProcessGraph(ros_domain_id, autostart=True)
    try:
        node, sched = g.node, g.node.scheduler
        assert node.set_parameters([Parameter("language.max_open_requests", value=2)])[0].successful
        assert sched.max_open == 2 and node.cfg.language.max_open_requests == 2
        assert node.set_parameters([Parameter("budget.high_water_frac", value=0.5)])[0].successful
        assert sched.engine.high_water_tokens == sched.engine.budget_tokens // 2
        refused = node.set_parameters([Parameter("budget.budget_tokens", value=8192)])[0]
        assert not refused.successful and "read-only" in refused.reason
        out_of_range = node.set_parameters([Parameter("language.tokens_per_frame", value=0)])[0]
        assert not out_of_range.successful and sched.k == 1
    finally:
        g.close()
