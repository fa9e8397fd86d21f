"""A serving engine that dies, comes back empty, or stalls, under the frame scheduler (a
llama.cpp-shaped fake on loopback, :mod:`fake_llama`; the real llama-server: test/server).

Defined behaviour: a dead (refused / reset, after bounded retries with back-off) or stalled
(timed out once) server is marked away; while it is away every request to it is refused at once
(no request waits its timeout again), the policy's scoring fails so the scheduler publishes the
hold chunk, a new question is refused at once with a final ``"refused: serving engine ..."``
answer (it does not wait), increments go on into the ledger, and ``/diagnostics`` says ERROR.
When it answers ``/health`` again, the health thread re-warms its prefix cache with the ledger's
tokens (off the hot path) and only then lets queries through: the first query after the return
finds the whole state cached. With two servers the live state fails over to the standby first.
The health thread's rounds are run by hand here (``poll_once``), so nothing depends on timing.
"""

from __future__ import annotations

import pytest
from fake_llama import FakeLlamaServer

from csr_ros.core.config import load_config
from csr_ros.core.model.backends.openai import ServerBackend
from csr_ros.core.model.backends.server_client import RequestPolicy
from csr_ros.core.model.backends.server_dialects import LlamaCppDialect
from csr_ros.core.model.backends.server_pool import ServerPool
from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.runtime.scheduler import FrameScheduler
from csr_ros.core.state.template import PromptTemplate
from csr_ros.core.state.tokenizer import ByteTokenizer

pytestmark = pytest.mark.core
MS, S = 1_000_000, 1_000_000_000
POLICY = RequestPolicy(warm_timeout_s=5.0, query_timeout_s=0.5, score_timeout_s=0.5, retries=2, retry_backoff_s=0.01)


class Clock:
    def __init__(self):
        self.t = 10 * S

    def __call__(self):
        return self.t


@pytest.fixture
def servers():
    made = []

    def make():
        made.append(FakeLlamaServer())
        return made[-1]
    yield make
    for s in made:
        s.kill()


def _backend(urls) -> ServerBackend:
    pool = ServerPool(urls, LlamaCppDialect(), POLICY)
    return ServerBackend("fake-llama", pool, ByteTokenizer(512), PromptTemplate(head="{system}\n\n", tail="\nAnswer:"))


def _scheduler(be, clock):
    eng = CsrEngine(be, budget_tokens=1 << 14, clock_ns=clock)
    cfg = load_config({"control.policy_period_s": 0.2})
    return FrameScheduler(eng, None, cfg, clock), eng


def _frames(sched, clock, n: int) -> list:
    """``n`` frames 100 ms apart (fake time); the chunk the publisher got after each."""
    out = []
    for _ in range(n):
        out += sched.run_frame()
        clock.t += 100 * MS
        out.append(sched.chunk_for_publish(clock.t))
    return out


def _answer(sched, clock, rid: str) -> str:
    assert sched.ask(rid, "where is the mug?") is None
    for _ in range(20):
        for o in sched.run_frame():
            if o.request_id == rid and o.is_final:
                return o.text
        clock.t += 100 * MS
    raise AssertionError("no answer")


def test_a_killed_server_holds_refuses_reports_and_is_rewarmed_before_queries_resume(servers):
    srv, clock = servers(), Clock()
    be = _backend([srv.url])
    sched, eng = _scheduler(be, clock)
    sched.submit_increment("/cam", clock.t, "the mug is on the table")
    assert any(c is not None and not c.is_hold for c in _frames(sched, clock, 3))
    srv.kill()
    holds_before, during = sched.status().holds_published, []
    for k in range(5):
        sched.submit_increment("/cam", clock.t, f"observation {k} while the server is down")
        published = _frames(sched, clock, 2)
        during += published
    st = sched.status()
    assert st.servers_away == 1 and st.server_outages == 1 and st.server.retries == POLICY.retries
    # the hold in every period while it is away (never a silent tick), each one counted
    assert "serving engine" in st.fault() and all(c.is_hold for c in during[2:])
    assert st.holds_published - holds_before == sum(c.is_hold for c in during)
    assert sched.counters.policy_failures >= 1 and not any(c is not None and not c.is_hold for c in published)
    refusal = sched.ask("q1", "where is the mug?")
    assert refusal.is_final and refusal.text.startswith("refused: serving engine")
    assert [i.text for i in eng.ledger.increments][-1] == "observation 4 while the server is down"
    srv.restart()  # empty caches
    n = len(srv.requests)
    be.pool.health.poll_once()  # the health thread's round: back, re-warmed, then up
    assert srv.kinds(n) == ["warm"] and srv.requests[n]["prompt"] == eng.kv.token_ids() == eng.ledger.token_ids()
    st = sched.status()
    assert st.servers_away == 0 and st.server_rewarms == 1 and st.fault() == ""
    assert _answer(sched, clock, "q2")
    q = be.pool.counters.last("query")
    assert q["cached"] >= eng.ledger.num_tokens  # the first query after the return: its question only
    assert any(c is not None and not c.is_hold for c in _frames(sched, clock, 3))


def test_a_server_restarted_empty_between_requests_is_found_and_rewarmed(servers):
    srv, clock = servers(), Clock()
    be = _backend([srv.url])
    sched, eng = _scheduler(be, clock)
    sched.submit_increment("/cam", clock.t, "the mug is on the table")
    _frames(sched, clock, 3)
    be.pool.health.poll_once()  # the probe's kept-alive connection is open
    srv.kill()
    srv.restart()  # back before anything noticed: no request failed
    n = len(srv.requests)
    be.pool.health.poll_once()
    st = be.pool.health.counters
    assert st.restarts_detected == 1 and st.rewarms == 1 and st.outages == 0
    assert srv.kinds(n) == ["warm"] and srv.cache[0] == eng.kv.token_ids()
    assert _answer(sched, clock, "q")
    assert be.pool.counters.last("query")["cached"] >= eng.ledger.num_tokens


def test_a_stalled_server_is_waited_on_once_then_refused_at_once_until_it_answers(servers):
    srv, clock = servers(), Clock()
    be = _backend([srv.url])
    sched, eng = _scheduler(be, clock)
    sched.submit_increment("/cam", clock.t, "the mug is on the table")
    _frames(sched, clock, 3)
    srv.stall()
    _frames(sched, clock, 3)  # the first scoring request times out (score_timeout_s), no retry
    st = be.pool.health.counters
    assert st.outages == 1 and st.stalls == 1 and st.retries == 0
    n = len(srv.requests)
    holds_before = sched.status().holds_published
    published = _frames(sched, clock, 20)
    assert len(srv.requests) == n  # refused at once: nothing more sent to the stalled server
    assert all(c.is_hold for c in published) and sched.status().servers_away == 1  # the hold every tick
    assert sched.status().holds_published - holds_before == len(published)  # each counted
    srv.unstall()
    be.pool.health.poll_once()
    assert be.pool.health.counters.rewarms == 1 and sched.status().servers_away == 0
    assert _answer(sched, clock, "q")


def test_two_servers_the_live_state_fails_over_to_the_standby_first(servers):
    a, b, clock = servers(), servers(), Clock()
    be = _backend([a.url, b.url])
    sched, eng = _scheduler(be, clock)
    sched.submit_increment("/cam", clock.t, "the mug is on the table")
    _frames(sched, clock, 3)
    assert be.pool.primary.url == a.url
    a.kill()
    _frames(sched, clock, 2)
    nb = len(b.requests)
    be.pool.health.poll_once()  # a is away: the live state is warmed on b, then moved there
    assert b.kinds(nb) == ["warm"] and b.requests[nb]["prompt"] == eng.kv.token_ids()
    assert be.pool.primary.url == b.url and be.pool.health.counters.failovers == 1
    assert sched.ask("q0", "x") is None  # the primary is up: questions are taken
    assert _answer(sched, clock, "q1")
    assert be.pool.counters.last("query")["cached"] >= eng.ledger.num_tokens
    a.restart()
    na = len(a.requests)
    be.pool.health.poll_once()  # a is back: a spare copy of the live state is warmed there
    assert a.kinds(na) == ["warm"] and be.pool.health.counters.servers_away == 0
