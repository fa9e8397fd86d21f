"""The serving-engine backend against a real llama.cpp server (SmolLM2 GGUF, 2 slots)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from csr_ros.core.model.backends.remote_state import NOT_CHOSEN
from csr_ros.core.runtime.engine import CsrEngine

pytestmark = pytest.mark.server

S = 1_000_000_000
OBS = ["red cup on the kitchen table", "blue box on the shelf", "person: bring me the red cup",
       "battery 87 percent", "green bottle near the sink"]


def _post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def _engine(be, n_obs: int = 5) -> CsrEngine:
    eng = CsrEngine(be, budget_tokens=1536)
    for k in range(n_obs):
        eng.submit("/objects", k * S, OBS[k % len(OBS)])
        eng.flush()  # warmed as it arrives
    return eng


def test_tokenizer_agrees_and_server_reads_our_exact_prompt(llama_server, server_backend):
    be = server_backend
    for text in (be.template.prefix(), " Where is the red cup?", "person: bring me the red cup", " naïve café 🤖"):
        ours = be.encode(text)
        theirs = _post(llama_server.url, "/tokenize", {"content": text, "add_special": False,
                                                       "parse_special": True})["tokens"]
        assert theirs == ours, text
    # an increment line: the server's own tokenizer splits its padded time differently, which is
    # why csr_ros sends token ids; the server still reads exactly our text from them
    line = be.template.increment(12.3, "/objects", "red cup")
    ids = be.encode(line)
    back = _post(llama_server.url, "/detokenize", {"tokens": ids})["content"]
    assert back == line


def test_warm_increments_make_the_query_pay_only_for_the_question(server_backend):
    eng = _engine(server_backend)
    warm = eng.kv.last_usage
    assert warm.cached >= len(eng.ledger.prefix_ids) and warm.evaluated == len(eng.ledger.increments[-1].token_ids)
    q = eng.query_ids("Where is the red cup?")
    r = eng.query("Where is the red cup?", max_new_tokens=8)
    u = eng.kv.last_usage
    assert (u.evaluated, u.cached) == (len(q), eng.ledger.num_tokens)  # the server's own counters
    assert r.text.strip() and eng.check_invariant()
    # a plain client: increment and question in one request -> the server evaluates both
    inc = eng.submit("/battery", 9 * S, "battery 80 percent").token_ids
    eng.query("Where is the red cup?", max_new_tokens=1)
    shared = next(i for i, (a, b) in enumerate(zip(inc + (-1,), q)) if a != b)  # both start with "\n"
    assert eng.kv.last_usage.evaluated == len(inc) + len(q) - shared
    rep = server_backend.report()["counters"]
    assert rep["query"]["requests"] >= 2 and rep["warm"]["cached_tokens"] > rep["warm"]["evaluated_tokens"]


def test_same_answer_and_scores_as_the_in_process_model(server_backend):
    from csr_ros.core.model.backends.hf import load_hf

    hf = load_hf("embedded", device="cpu")
    remote, local = _engine(server_backend), _engine(hf)
    assert remote.ledger.token_ids() == local.ledger.token_ids()  # one tokenizer, one template
    a = remote.query("Where is the red cup?", max_new_tokens=6)
    b = local.query("Where is the red cup?", max_new_tokens=6)
    assert a.token_ids[:2] == b.token_ids[:2]  # Q4_1 kernels vs dequantized fp32: same greedy start
    cands, lead = ["kitchen", "shelf", "floor"], "The red cup is on the"
    sr = remote.score("Where is the red cup?", cands, lead_in=lead)
    sl = local.score("Where is the red cup?", cands, lead_in=lead)
    assert max(range(3), key=sr.__getitem__) == max(range(3), key=sl.__getitem__)
    assert all(abs(x - y) < 0.5 for x, y in zip(sr, sl)), (sr, sl)


def test_streamed_branches_language_batch_and_forced_tokens(server_backend):
    from csr_ros.core.runtime.language import LanguageBatch

    eng = _engine(server_backend)
    want = eng.query("What did the person ask for?", max_new_tokens=10)
    lb = LanguageBatch(eng, max_new_tokens=10)
    lb.join("r1", "What did the person ask for?")
    outs = []
    for _ in range(6):
        outs += lb.advance(2)
    finals = [o for o in outs if o.is_final]
    assert finals and finals[0].text == want.text
    assert "".join(o.text for o in outs if not o.is_final) == want.text[:len("".join(o.text for o in outs if not o.is_final))]
    # a forced token restarts the stream from it; closing leaves the state as it was
    bid, first = eng.kv.open_branch(eng.query_ids("Say something."))
    forced = server_backend.encode(" Hello")[0]
    nxt = eng.kv.step({bid: forced})[bid]
    assert isinstance(nxt.argmax(), int)
    eng.kv.close_branch(bid)
    assert eng.kv.open_branches() == [] and eng.check_invariant()


def test_answers_longer_than_one_request_continue(server_backend):
    be = server_backend
    eng = _engine(be)
    long_ = eng.query("Describe everything you observed in detail.", max_new_tokens=40)
    old = be.max_new_tokens
    try:
        be.max_new_tokens = 7  # new states stream 7 tokens per request, then continue
        eng2 = _engine(be)
        short = eng2.query("Describe everything you observed in detail.", max_new_tokens=40)
    finally:
        be.max_new_tokens = old
    assert short.token_ids == long_.token_ids and eng2.kv.forwards > eng.kv.forwards


def test_one_token_choice_when_no_log_probabilities(server_backend, monkeypatch):
    eng = _engine(server_backend)
    monkeypatch.setattr(server_backend.pool.dialect, "parse_logprobs", lambda d, want: None)
    s = eng.score("Answer yes or no: is there a red cup?", ["yes", "no"])
    assert sorted(s) == [NOT_CHOSEN, 0.0] and eng.kv.one_token_choices == 1


def test_chosen_by_parameter_for_the_ros_graph(llama_server):
    from csr_ros.core.model.backends.openai import ServerBackend
    from csr_ros.core.config import load_config
    from csr_ros.nodes.bringup import build_backend

    cfg = load_config({"model.backend": "openai", "server.urls": [llama_server.url], "server.dialect": "llamacpp"})
    be = build_backend(cfg)
    assert isinstance(be, ServerBackend) and [str(l) for l in be.pool.lanes] == [
        f"{llama_server.url}#slot0", f"{llama_server.url}#slot1"]
    eng = _engine(be, 2)
    assert eng.query("Where is the red cup?", max_new_tokens=3).text and eng.check_invariant()
