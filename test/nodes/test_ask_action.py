"""The csr/ask action (csr_ros/action/Ask) and the management services, on an active in-process
graph (fake backend; answers are "state has N tokens", one token per 0.1-s frame).
Cost: ~25 s."""

from __future__ import annotations

import threading

import pytest

from harness import InProcessGraph, until

pytestmark = pytest.mark.nodes


@pytest.fixture(scope="module")
def agraph(ros_domain_id, tmp_path_factory):
    ledger = tmp_path_factory.mktemp("ledger")
    g = InProcessGraph(ros_domain_id, f"ledger.dir:={ledger}", autostart=True)
    g.ledger_dir = ledger
    assert until(lambda: g.probe.obs.get_subscription_count() > 0)
    g.probe.observe("red cup is in the kitchen")
    g.probe.observe("blue mug is in the garage")
    assert until(lambda: g.probe.n("inc") >= 2)
    yield g
    g.close()


class Client:
    """An action client on the probe node; goals are sent from the test thread."""

    def __init__(self, g):
        from rclpy.action import ActionClient

        from csr_ros.action import Ask

        self.Ask = Ask
        self.client = ActionClient(g.probe, Ask, "csr/ask")
        assert self.client.wait_for_server(timeout_sec=20)

    def send(self, question: str, **kw):
        feedback: list = []
        fut = self.client.send_goal_async(self.Ask.Goal(question=question, **kw),
                                          feedback_callback=lambda m: feedback.append(m.feedback))
        assert until(fut.done)
        return fut.result(), feedback

    def result(self, handle, timeout_s: float = 30.0):
        fut = handle.get_result_async()
        assert until(fut.done, timeout_s)
        return fut.result().result


def test_four_concurrent_goals_stream_feedback_and_finish_and_a_fifth_is_rejected(agraph):
    c = Client(agraph)
    goals = [c.send(f"question {i}?") for i in range(4)]
    assert all(h.accepted for h, _ in goals)
    fifth, _ = c.send("one too many?")
    assert not fifth.accepted                                       # rejected at once, not queued
    results = [c.result(h) for h, _ in goals]
    for (h, fb), r in zip(goals, results):
        assert r.stop_reason == "eos" and r.answer.startswith("state has") and r.tokens == len(r.answer)
        assert len(fb) >= 3 and fb[-1].partial == r.answer           # streamed: the text so far, then whole
        assert all(b.partial.startswith(a.partial) for a, b in zip(fb, fb[1:]))
        assert 0 < r.ttft_ms <= r.total_ms and r.state_version >= 0 and r.state_tokens > 0
    again, _ = c.send("after the four?")
    assert again.accepted and c.result(again).stop_reason == "eos"  # slots free again


def test_cancel_mid_stream_frees_the_slot(agraph):
    c = Client(agraph)
    handles = [c.send(f"fill {i}?") for i in range(4)]
    h0, fb0 = handles[0]
    assert until(lambda: len(fb0) >= 2)                             # mid-stream
    cancel = h0.cancel_goal_async()
    assert until(cancel.done)
    r0 = c.result(h0)
    assert r0.stop_reason == "cancelled" and 0 < len(r0.answer) < len("state has 999 tokens")
    late, _ = c.send("right after the cancel?")
    assert late.accepted                                            # the slot was freed
    for h, _ in handles[1:] + [(late, None)]:
        assert c.result(h).stop_reason == "eos"


def test_the_actions_greedy_answer_equals_the_topic_paths_and_the_engines(agraph):
    from csr_ros.msg import Utterance

    g, c = agraph, Client(agraph)
    question = "What happened last?"
    h, _ = c.send(question)
    by_action = c.result(h)
    n0 = g.probe.n("language")
    g.probe.ask.publish(Utterance(request_id="topic-1", text=question, is_final=True))
    assert until(lambda: any(m.is_final and m.request_id == "topic-1" for m in g.probe.since("language", n0)))
    by_topic = [m for m in g.probe.since("language", n0) if m.is_final and m.request_id == "topic-1"][0]
    sched = g.node.scheduler
    by_engine = sched.calls.submit(lambda: sched.engine.query(question)).result(timeout=30)
    assert by_action.answer == by_topic.text == by_engine.text
    assert by_action.tokens == len(by_engine.token_ids)


def test_candidates_are_scored_in_the_result(agraph):
    c = Client(agraph)
    h, _ = c.send("Where is the red cup?", candidates=["kitchen", "garage", "attic"], max_new_tokens=3)
    r = c.result(h)
    assert r.stop_reason == "length" and r.tokens == 3 and len(r.candidate_scores) == 3
    assert max(range(3), key=lambda i: r.candidate_scores[i]) in (0, 1)  # named in the state, attic is not


def test_services(agraph):
    from csr_ros.srv import CompactState, GetEntityMemory, GetStateText, ResetState

    g = agraph
    mem = g.call("csr/get_entity_memory", GetEntityMemory, GetEntityMemory.Request(entity=""))
    assert mem.success and {e.key for e in mem.entries} >= {"red cup.location", "blue mug.location"}
    one = g.call("csr/get_entity_memory", GetEntityMemory, GetEntityMemory.Request(entity="red cup"))
    assert one.success and [(e.key, e.last_value, e.first_value, e.count) for e in one.entries] == [
        ("red cup.location", "kitchen", "kitchen", 1)]
    unknown = g.call("csr/get_entity_memory", GetEntityMemory, GetEntityMemory.Request(entity="unicorn"))
    assert not unknown.success and "unicorn" in unknown.message

    text = g.call("csr/get_state_text", GetStateText, GetStateText.Request(max_chars=0))
    assert text.success and "red cup is in the kitchen" in text.text and not text.truncated
    short = g.call("csr/get_state_text", GetStateText, GetStateText.Request(max_chars=20))
    assert short.truncated and len(short.text) == 20 and text.text.endswith(short.text)

    compact = g.call("csr/compact", CompactState, CompactState.Request())
    assert compact.success and compact.version_after == compact.version_before + 1
    assert compact.tokens_before > 0 and compact.tokens_after > 0 and "compacted" in compact.message
    compacted = g.call("csr/get_state_text", GetStateText, GetStateText.Request(max_chars=0))
    assert "red cup is in the kitchen" not in compacted.text and "red cup.location: kitchen" in compacted.text

    before = sorted(p.name for p in g.ledger_dir.iterdir())
    reset = g.call("csr/reset_state", ResetState, ResetState.Request())
    assert reset.success and reset.archived_ledger and reset.state_version == compact.version_after + 1
    archived = sorted(p.name for p in g.ledger_dir.iterdir())
    assert before == ["ledger.csrl"] and len(archived) == 2 and "ledger.csrl" in archived
    from csr_ros.core.state.ledger_store import read_records
    records, _, _ = read_records(g.ledger_dir / [n for n in archived if n != "ledger.csrl"][0])
    assert any(r.get("text") == "red cup is in the kitchen" for r in records)  # the old ledger, kept
    after = g.call("csr/get_state_text", GetStateText, GetStateText.Request(max_chars=0))
    assert "red cup" not in after.text and after.state_version == reset.state_version
    g.probe.observe("green box is in the hall")                   # the new state takes increments
    assert until(lambda: g.node.scheduler.engine.ledger.num_tokens > after.state_tokens)


def test_deactivate_cancels_open_goals_and_rejects_new_ones(agraph):
    from action_msgs.msg import GoalStatus

    g, c = agraph, Client(agraph)
    h, fb = c.send("still answering when deactivated?")
    assert h.accepted and until(lambda: len(fb) >= 1)
    assert g.change_state("deactivate")
    res = h.get_result_async()
    assert until(res.done)
    assert res.result().status == GoalStatus.STATUS_ABORTED and res.result().result.stop_reason == "deactivated"
    refused, _ = c.send("while inactive?")
    assert not refused.accepted
    assert g.change_state("activate")
    again, _ = c.send("active again?")
    assert again.accepted and c.result(again).stop_reason == "eos"
