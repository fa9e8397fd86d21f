"""Server faults against real llama.cpp servers (SmolLM2 GGUF): killed with SIGKILL, restarted
on the same port with an empty prefix cache, stalled with SIGSTOP. Each test starts its own
servers (one slot, one thread each) so the session's shared servers are not disturbed.

Defined behaviour (see test/core/test_server_faults.py for the same with a fake server): the
live state fails over to the standby server first (warmed there before it is moved), a server
that returns is re-warmed before it takes requests again, a stalled server is waited on once
(``query_timeout_s`` / ``score_timeout_s``) and then refused at once until it answers.
"""

from __future__ import annotations

import signal

import pytest

from csr_ros.core.model.backends.llama_server import LlamaServer, ServerNotInstalled, server_binary
from csr_ros.core.model.backends.openai import load_server
from csr_ros.core.model.backends.server_client import RequestPolicy, ServerError, ServerUnavailable
from csr_ros.core.runtime.engine import CsrEngine

pytestmark = pytest.mark.server
S = 1_000_000_000
POLICY = RequestPolicy(warm_timeout_s=60.0, query_timeout_s=3.0, score_timeout_s=3.0, retries=1,
                       retry_backoff_s=0.05)


@pytest.fixture
def pair():
    try:
        server_binary()
    except ServerNotInstalled as e:
        pytest.skip(str(e))
    made = [LlamaServer.start(ctx_tokens=2048, parallel=1, threads=1)]
    made.append(LlamaServer.start(ctx_tokens=2048, parallel=1, threads=1))
    yield made
    for s in made:
        s.stop()


def _restart(servers, i):
    port = int(servers[i].url.rsplit(":", 1)[1])
    servers[i] = LlamaServer.start(ctx_tokens=2048, parallel=1, threads=1, port=port)


def _engine(be) -> CsrEngine:
    eng = CsrEngine(be, budget_tokens=1536)
    for k, text in enumerate(["red cup on the kitchen table", "blue box on the shelf", "battery 87 percent"]):
        eng.submit("/objects", k * S, text)
        eng.flush()
    return eng


def _query_cached(eng) -> int:
    eng.query("Where is the red cup?", max_new_tokens=4)
    return eng.kv.last_usage.cached


def test_killed_and_restarted_servers_fail_over_and_are_rewarmed(pair):
    be = load_server([s.url for s in pair], timeout_s=POLICY, start_monitor=False)
    eng, health = _engine(be), be.pool.health
    pair[0].proc.send_signal(signal.SIGKILL)
    pair[0].proc.wait()
    with pytest.raises(ServerError):  # refused (after a retry): the server is marked away
        eng.query("Where is the red cup?", max_new_tokens=4)
    assert health.counters.outages == 1 and be.unavailable()
    with pytest.raises(ServerUnavailable):  # no second wait: refused at once
        eng.query("Where is the red cup?", max_new_tokens=4)
    health.poll_once()  # fail-over: warmed on the standby server, then moved there
    assert be.pool.primary.url == pair[1].url and health.counters.failovers == 1 and not be.unavailable()
    assert _query_cached(eng) >= eng.ledger.num_tokens
    _restart(pair, 0)  # a new process, empty cache
    health.poll_once()
    c = health.counters
    assert c.servers_away == 0 and c.rewarms == 1
    pair[1].proc.send_signal(signal.SIGKILL)  # now the other one
    pair[1].proc.wait()
    health.poll_once()  # the probe finds it away; the next round fails over to the re-warmed spare
    health.poll_once()
    assert be.pool.primary.url == pair[0].url and health.counters.failovers == 2
    assert _query_cached(eng) >= eng.ledger.num_tokens  # the spare copy was warm
    _restart(pair, 1)
    health.poll_once()
    assert health.counters.servers_away == 0 and health.counters.rewarms == 2
    health.close()


def test_a_server_restarted_empty_is_rewarmed_before_the_next_query(pair):
    be = load_server([pair[0].url], timeout_s=POLICY, start_monitor=False)
    eng, health = _engine(be), be.pool.health
    health.poll_once()  # the probe's connection is open
    pair[0].stop()
    _restart(pair, 0)
    health.poll_once()
    assert health.counters.restarts_detected == 1 and health.counters.rewarms == 1
    assert _query_cached(eng) >= eng.ledger.num_tokens
    health.close()


def test_a_stalled_server_is_waited_on_once(pair):
    be = load_server([pair[0].url], timeout_s=POLICY, start_monitor=False)
    eng, health = _engine(be), be.pool.health
    pair[0].proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(ServerError):
            eng.query("Where is the red cup?", max_new_tokens=4)  # one query_timeout_s
        assert health.counters.stalls == 1
        with pytest.raises(ServerUnavailable):  # refused without a request, not after a second timeout
            eng.query("Where is the red cup?", max_new_tokens=4)
        assert health.counters.refused_while_away == 1 and health.counters.stalls == 1
    finally:
        pair[0].proc.send_signal(signal.SIGCONT)
    health.poll_once()
    assert health.counters.rewarms == 1 and _query_cached(eng) >= eng.ledger.num_tokens
    health.close()
