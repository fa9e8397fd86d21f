"""The open-request batch on a real KV state: batched decoding gives every request exactly the
greedy tokens it gets alone; a request joining mid-stream does not disturb the others; a swapped
state re-opens the answers where they stopped."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csr_ros.core.runtime.engine import CsrEngine  # noqa: E402
from csr_ros.core.runtime.language import LanguageBatch  # noqa: E402

pytestmark = pytest.mark.core

QUESTIONS = ["What is on the table?", "Where is the red cup now?", "Is the kitchen door open or closed?",
             "Who waved at the robot?"]
OBS = ["red cup on the kitchen table", "person waving near the door", "kitchen door is open",
       "blue box on the floor, 1.2 m ahead", "battery at 80 percent"]


@pytest.fixture(scope="module")
def tiny():
    from csr_ros.core.model.backends.hf import load_shape

    return load_shape("tiny", device="cpu")


def make_engine(backend) -> CsrEngine:
    eng = CsrEngine(backend, budget_tokens=8192, clock_ns=lambda: 0)
    for i, text in enumerate(OBS):
        eng.submit("/camera/objects", (i + 1) * 1_000_000_000, text)
    eng.flush()
    return eng


def alone(backend, question: str, n: int) -> tuple[int, ...]:
    """The reference: one request, decoded by the engine's own query path."""
    return make_engine(backend).query(question, max_new_tokens=n).token_ids


def drive(batch: LanguageBatch, k: int, joins: dict[int, list[tuple[str, str]]] | None = None,
          on_frame=None) -> dict[str, list[int]]:
    """Run frames until every request is final; ``joins``: frame -> requests joining then."""
    joins = joins or {}
    done: dict[str, list[int]] = {}
    frame = 0
    while frame in joins or batch.num_open or frame <= max(joins, default=0):
        for rid, q in joins.get(frame, []):
            batch.join(rid, q)
        if on_frame is not None:
            on_frame(frame)
        for out in batch.advance(k):
            if out.is_final:
                assert not out.text.startswith("error"), out.text
                done[out.request_id] = out
        frame += 1
        assert frame < 500
    return {rid: out for rid, out in done.items()}


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "one-forward-per-request"])
def test_batched_equals_alone_and_joiner_does_not_disturb(tiny, batched):
    n = 12
    eng = make_engine(tiny)
    batch = LanguageBatch(eng, max_new_tokens=n, batched=batched)
    got = {}

    def record(_frame):  # the requests' own records (their generated ids, not re-encoded text)
        got.update((r.rid, r) for r in batch._open.values())

    drive(batch, k=2, joins={0: [("a", QUESTIONS[0]), ("b", QUESTIONS[1])], 3: [("c", QUESTIONS[2])],
                             4: [("d", QUESTIONS[3])]}, on_frame=record)
    for rid, q in zip("abcd", QUESTIONS):
        ref = alone(tiny, q, n)
        assert tuple(got[rid].out) == ref, rid
    assert eng.kv.open_branches() == [] and eng.check_invariant()


def test_batch_runs_one_forward_per_token_step(tiny):
    eng = make_engine(tiny)
    batch = LanguageBatch(eng, max_new_tokens=50)
    for rid, q in zip("abc", QUESTIONS):
        batch.join(rid, q)
    batch.advance(1)  # admission: one prefill per question, then one step
    before = eng.kv.forwards
    batch.advance(3)
    assert eng.kv.forwards - before == 3  # three token steps, all requests in each
    assert len(eng.kv.open_branches()) == 3


def test_final_texts_match_the_engine_query(tiny):
    eng = make_engine(tiny)
    outs = drive(LanguageBatch(eng, max_new_tokens=10), k=3,
                 joins={0: [(str(i), q) for i, q in enumerate(QUESTIONS[:3])]})
    for i, q in enumerate(QUESTIONS[:3]):
        assert outs[str(i)].text == make_engine(tiny).query(q, max_new_tokens=10).text


def test_partials_concatenate_to_the_final(tiny):
    eng = make_engine(tiny)
    batch = LanguageBatch(eng, max_new_tokens=16)
    batch.join("a", QUESTIONS[0])
    pieces, final = [], None
    while final is None:
        for o in batch.advance(2):
            if o.is_final:
                final = o.text
            else:
                pieces.append(o.text)
    assert pieces and "".join(pieces) == final[:len("".join(pieces))]


def test_state_appends_between_steps_keep_answers(tiny):
    """Increments appended while answers are open do not change them (they answer the state as
    it was when they were asked), and the ledger invariant holds throughout."""
    n = 10
    eng = make_engine(tiny)
    batch = LanguageBatch(eng, max_new_tokens=n)

    def append(frame):
        eng.submit("/scan", (10 + frame) * 1_000_000_000, f"obstacle {frame} m ahead")
        eng.flush()
        assert eng.check_invariant()

    outs = drive(batch, k=1, joins={0: [("a", QUESTIONS[0]), ("b", QUESTIONS[1])]}, on_frame=append)
    for rid, q in zip("ab", QUESTIONS):
        assert outs[rid].text == make_engine(tiny).query(q, max_new_tokens=n).text


def _swap_at(frame_no: int, eng, batch, backend):
    """An ``on_frame`` hook: at ``frame_no`` suspend the batch and install a rebuilt state with
    the same tokens (a new version), as a reconciler swap does."""

    def swap(frame):
        if frame == frame_no:
            batch.suspend()
            ledger = eng.snapshot().compacted(eng.ledger.memory, eng.ledger.increments)
            kv = backend.new_state()
            kv.prefill(ledger.token_ids())
            eng.install(ledger, kv)

    return swap


def test_swap_reopens_answers_where_they_stopped(tiny):
    """A swapped-in state with the same tokens (a new version) continues every answer exactly."""
    n = 12
    eng = make_engine(tiny)
    batch = LanguageBatch(eng, max_new_tokens=n)

    swap = _swap_at(2, eng, batch, tiny)

    outs = drive(batch, k=2, joins={0: [("a", QUESTIONS[0]), ("b", QUESTIONS[1])]}, on_frame=swap)
    assert eng.ledger.version == 1 and eng.counters.swaps == 1
    for rid, q in zip("ab", QUESTIONS):
        assert outs[rid].text == make_engine(tiny).query(q, max_new_tokens=n).text


def test_lost_kv_after_a_sync_eviction_is_reopened(tiny):
    n = 10
    eng = make_engine(tiny)
    batch = LanguageBatch(eng, max_new_tokens=n)

    def rebuild(frame):
        if frame == 2:  # what a synchronous eviction does: a fresh KV of the same ledger
            eng._rebuild(eng.ledger.copy())

    outs = drive(batch, k=2, joins={0: [("a", QUESTIONS[0])]}, on_frame=rebuild)
    assert outs["a"].text == make_engine(tiny).query(QUESTIONS[0], max_new_tokens=n).text


def test_failure_fails_the_requests_and_leaves_the_state(tiny, monkeypatch):
    eng = make_engine(tiny)
    batch = LanguageBatch(eng, max_new_tokens=20)
    batch.join("a", QUESTIONS[0])
    batch.join("b", QUESTIONS[1])
    batch.advance(1)
    physical = eng.kv.physical_length

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(eng.kv, "_forward", boom)  # every forward fails, half-way or not
    outs = batch.advance(1)
    assert sorted(o.request_id for o in outs) == ["a", "b"]
    assert all(o.is_final and o.text.startswith("error: model failure") for o in outs)
    assert eng.kv.physical_length < physical and eng.kv.open_branches() == [] and eng.check_invariant()
    assert batch.num_open == 0


@pytest.mark.model
def test_smollm2_batched_equals_alone():
    from csr_ros.core.model.backends.embedded import ModelNotAvailable
    from csr_ros.core.model.backends.hf import load_hf

    try:
        be = load_hf("embedded", device="cpu")
    except ModelNotAvailable as e:
        pytest.skip(str(e))
    n = 10
    eng = make_engine(be)
    batch = LanguageBatch(eng, max_new_tokens=n)
    outs = drive(batch, k=2, joins={0: [("a", QUESTIONS[0]), ("b", QUESTIONS[1])], 2: [("c", QUESTIONS[2])]})
    ref_engine = make_engine(be)  # query() crops its branch: one state serves every reference
    for rid, q in zip("abc", QUESTIONS):
        assert outs[rid].text == ref_engine.query(q, max_new_tokens=n).text, rid


def test_policy_scores_ride_in_the_language_step(tiny):
    """One forward decides AND advances every answer: the scores equal a separate scoring pass
    and the answers are unchanged."""
    from csr_ros.core.runtime.actions import ActionRegistry, resolve_config_file
    from csr_ros.core.runtime.language import ScoreRider
    from csr_ros.core.runtime.policy import RegistryPolicy

    n = 10
    policy = RegistryPolicy(ActionRegistry.load(resolve_config_file("", "actions.yaml"), 10, 0.1))
    eng = make_engine(tiny)
    batch = LanguageBatch(eng, max_new_tokens=n)
    batch.join("a", QUESTIONS[0])
    batch.join("b", QUESTIONS[1])
    outs = batch.advance(1)
    for _ in range(2):
        prompt, cands = policy.score_request(eng, "greet the person")
        ref = eng.kv.score(prompt, cands)
        rider, before = ScoreRider(prompt, cands), eng.kv.forwards
        outs += batch.advance(1, rider)
        assert eng.kv.forwards - before == 1
        assert rider.scores == pytest.approx(ref, abs=1e-4)
        assert policy.decide_from_scores(rider.scores).action == policy.decide_from_scores(ref).action
    while batch.num_open:
        outs += batch.advance(2)
    finals = {o.request_id: o.text for o in outs if o.is_final}
    for rid, q in zip("ab", QUESTIONS):
        assert finals[rid] == make_engine(tiny).query(q, max_new_tokens=n).text
    assert eng.kv.open_branches() == [] and eng.check_invariant()


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
def test_scheduler_decides_inside_the_language_step(tiny, fuse):
    """On a real KV state: while answers are open, a decision frame runs k forwards when fused
    (the scoring rides in the first step) and k + 1 when not; both pick the same action."""
    from csr_ros.core.config import load_config
    from csr_ros.core.runtime.scheduler import FrameScheduler

    t = [len(OBS) * 1_000_000_000]  # the scheduler's clock starts at the engine's newest stamp
    eng = make_engine(tiny)
    cfg = load_config({"control.fuse_policy_with_language": fuse, "language.tokens_per_frame": 2,
                       "language.max_new_tokens": 64})
    sched = FrameScheduler(eng, None, cfg, lambda: t[0])
    sched.ask("a", QUESTIONS[0])
    sched.ask("b", QUESTIONS[1])
    sched.run_frame()  # admits both (two prefills), decides, steps
    per_frame, actions = [], []
    for _ in range(12):
        t[0] += 100_000_000
        before, decisions = eng.kv.forwards, sched.counters.decisions
        sched.run_frame()
        per_frame.append((sched.counters.decisions - decisions, eng.kv.forwards - before))
        actions.append(sched.chunk_for_publish(t[0]).action)
    assert sched.counters.decisions == 4 and sched.counters.policy_failures == 0
    assert {f for d, f in per_frame if d} == {2 if fuse else 3} and {f for d, f in per_frame if not d} == {2}
    assert len(set(actions)) == 1 and eng.check_invariant()


def test_a_request_leaving_mid_stream_does_not_disturb_the_others(tiny):
    n = 12
    eng = make_engine(tiny)
    batch = LanguageBatch(eng, max_new_tokens=n)
    got = {}

    def leave(frame):
        got.update((r.rid, r) for r in batch._open.values())
        if frame == 2:
            assert batch.leave("a") and not batch.leave("a")
            assert len(eng.kv.open_branches()) == 1

    outs = drive(batch, k=2, joins={0: [("a", QUESTIONS[0]), ("b", QUESTIONS[1])]}, on_frame=leave)
    assert set(outs) == {"b"} and tuple(got["b"].out) == alone(tiny, QUESTIONS[1], n)
    assert eng.kv.open_branches() == [] and eng.check_invariant()


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "one-forward-per-request"])
def test_memory_context_answers_in_their_own_state_beside_state_answers(tiny, batched):
    """``memory.answer_context: memory`` on the live path: the request is decoded from its short
    fresh prompt (exactly what answer.generate gives), a state answer in the same batch is not
    disturbed, a swap of the shared state does not touch it, and every piece names its context."""
    from csr_ros.core.runtime import answer
    from csr_ros.core.state.entity_memory import EntityMemory
    from csr_ros.core.state.focus import FocusMatcher, focus_for
    from csr_ros.core.state.ledger import Fact

    n = 10
    eng = CsrEngine(tiny, budget_tokens=8192, clock_ns=lambda: 0, memory=EntityMemory())
    for i, text in enumerate(OBS):
        eng.submit("/camera/objects", (i + 1) * 10**9, text, [Fact("red cup", "location", f"room {i}", (i + 1) * 10**9)])
    eng.flush()

    from csr_ros.core.config import load_config

    contexts = answer.AnswerContexts(load_config().memory)  # the live path: an answer frame, no lead-in

    def prompt(question):
        if "cup" in question:
            return contexts.build(eng, question, context="memory")
        return answer.build(eng, question, focus_for(question, eng.memory, eng.ledger.epoch_ns, FocusMatcher()))

    ref = answer.generate(eng, prompt(QUESTIONS[1]), n)
    batch = LanguageBatch(eng, max_new_tokens=n, batched=batched, prompt_ids=prompt)
    seen: dict[str, set[str]] = {}

    swap = _swap_at(2, eng, batch, tiny)

    joins = {0: [("a", QUESTIONS[0]), ("m", QUESTIONS[1])]}
    done, frame = {}, 0
    while frame == 0 or batch.num_open:
        for rid, q in joins.get(frame, []):
            batch.join(rid, q)
        swap(frame)
        for out in batch.advance(2):
            seen.setdefault(out.request_id, set()).add(out.context)
            if out.is_final:
                done[out.request_id] = out
        frame += 1
        assert frame < 100
    assert done["m"].text == ref.text and ref.context == "memory"
    assert ref.text.startswith("The red cup is in the")  # the frame leads the streamed answer too
    assert done["a"].text == make_engine(tiny).query(QUESTIONS[0], max_new_tokens=n).text
    assert seen == {"a": {"state"}, "m": {"memory"}}
    assert eng.kv.open_branches() == [] and eng.check_invariant()
