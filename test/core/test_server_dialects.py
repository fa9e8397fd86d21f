"""Serving-engine dialects without a real engine: answer parsing of llama.cpp / vLLM / SGLang
bodies, the metrics parser, and a RemoteState driven through a small vLLM-shaped HTTP server
(request and answer shapes as vLLM documents them; the real-server tests are in test/server)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from csr_ros.core.model.backends.remote_state import RemoteState
from csr_ros.core.model.backends.server_dialects import Lane, LlamaCppDialect, SglangDialect, VllmDialect, make_dialect
from csr_ros.core.model.backends.server_pool import ServerCounters, ServerPool, parse_prometheus, prefix_hit_rate

pytestmark = pytest.mark.core
EOS = 2


def test_metrics_hit_rate_of_vllm_and_sglang():
    vllm = ('# HELP x\nvllm:prefix_cache_queries_total{model_name="m"} 400.0\n'
            'vllm:prefix_cache_hits_total{model_name="m"} 300.0\nvllm:num_requests_running{a="b"} 1\n')
    assert prefix_hit_rate(parse_prometheus(vllm)) == pytest.approx(0.75)
    assert prefix_hit_rate(parse_prometheus('sglang:cache_hit_rate{tp_rank="0"} 0.9\n')) == pytest.approx(0.9)
    assert prefix_hit_rate(parse_prometheus("llamacpp:prompt_tokens_total 12\n")) is None


def test_llamacpp_bodies_and_answers():
    d = LlamaCppDialect()

    path, body = d.warm_req([1, 2, 3], Lane("http://x", 1))
    assert path == "/completion" and body["id_slot"] == 1 and body["cache_prompt"] and body["n_predict"] <= 1
    ev = d.parse_event({"tokens": [7], "stop": True, "stop_type": "eos",
                        "timings": {"prompt_n": 32, "cache_n": 1088, "prompt_ms": 5.0}})
    assert (ev.tokens, ev.done, ev.finish) == ([7], True, "eos") and ev.usage.evaluated == 32
    lp = d.parse_logprobs({"completion_probabilities": [{"top_logprobs": [{"id": 5, "logprob": -0.1},
                                                                          {"id": 9, "logprob": -2.5}]}]}, [9])
    assert lp == {5: -0.1, 9: -2.5}


def test_vllm_and_sglang_answers():
    v = VllmDialect(model="m")
    ev = v.parse_event({"choices": [{"text": "x", "logprobs": {"tokens": ["token_id:42"]}, "finish_reason": None}]})
    assert ev.tokens == [42] and not ev.done
    u = v.parse_usage({"usage": {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 96}}})
    assert (u.evaluated, u.cached) == (4, 96)
    s = SglangDialect()
    parse = s.stream_parser()  # cumulative output_ids (SGLang's default) -> only the new ones
    assert parse({"output_ids": [5], "meta_info": {}}).tokens == [5]
    last = parse({"output_ids": [5, 6], "meta_info": {"finish_reason": {"type": "length"}, "prompt_tokens": 9,
                                                       "cached_tokens": 8}})
    assert (last.tokens, last.finish, last.usage.evaluated) == ([6], "length", 1)
    with pytest.raises(ValueError):
        make_dialect("nope")


class _FakeVllm(BaseHTTPRequestHandler):
    """/v1/completions: greedy answer [10, 11, 12] then EOS; prefix cache = the previous prompt."""

    last_prompt: list = []
    bodies: list = []

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):
        self._send(200, {"data": [{"id": "fake-model"}]} if self.path == "/v1/models" else {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        p, prev = body["prompt"], type(self).last_prompt
        hit = next((i for i, (a, b) in enumerate(zip(p, prev)) if a != b), min(len(p), len(prev)))
        type(self).last_prompt = p
        usage = {"prompt_tokens": len(p), "prompt_tokens_details": {"cached_tokens": hit}}
        answer = [10, 11, 12, EOS]
        k = sum(1 for t in p if t in answer)  # tokens of the answer already fed
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for t in answer[k:]:
                fin = "stop" if t == EOS else None
                ch = {"choices": [{"text": "", "logprobs": {"tokens": [f"token_id:{t}"]}, "finish_reason": fin}]}
                self.wfile.write(f"data: {json.dumps(ch)}\n\n".encode())
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
            return
        top = {f"token_id:{t}": lp for t, lp in ((20, -0.5), (21, -1.5), (22, -3.0))}
        self._send(200, {"choices": [{"text": "", "logprobs": {"tokens": ["token_id:10"], "top_logprobs": [top]}}],
                         "usage": usage})

    def _send(self, code, obj):
        raw = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def fake_vllm():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeVllm)
    _FakeVllm.last_prompt, _FakeVllm.bodies = [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_remote_state_over_a_vllm_shaped_server(fake_vllm):
    pool = ServerPool([fake_vllm], VllmDialect(model="fake-model"), timeout_s=5)
    assert pool.discover_model() == "fake-model"
    kv = RemoteState(pool.client(pool.primary), pool.counters, EOS)
    kv.append([100, 101, 102])
    kv.append([103, 104])
    assert kv.last_usage.evaluated == 2  # warm-up: only the new tokens
    bid, first = kv.open_branch([200, 201])
    assert first.argmax() == 10
    out = [first.argmax()]
    while out[-1] != EOS:
        out.append(kv.step({bid: out[-1]})[bid].argmax())
    assert out == [10, 11, 12, EOS]
    kv.close_branch(bid)
    assert kv.token_ids() == [100, 101, 102, 103, 104] and kv.open_branches() == []
    body = _FakeVllm.bodies[-1]
    assert body["prompt"][:5] == [100, 101, 102, 103, 104] and body["return_tokens_as_token_ids"]
    assert kv.score([300], [[20], [21, 20], [99]]) == pytest.approx([-0.5, -2.0, -4.0])  # 99: floor
    assert kv.scores_outside_top_k == 1
    c = pool.counters.as_dict()
    assert c["warm"]["requests"] == 2 and c["query"]["requests"] == 1 and c["score"]["requests"] == 2


def test_promotion_swaps_primary_and_standby():
    pool = ServerPool(["http://a:1", "http://b:2"], LlamaCppDialect())
    a, b = pool.primary, pool.standby
    assert pool.promote(b) and (pool.primary, pool.standby) == (b, a)
    assert not pool.promote(b) and pool.counters.promotions == 1
    one = ServerPool(["http://a:1"], LlamaCppDialect())
    assert [l.slot for l in one.lanes] == [0, 1]
    shared = ServerPool(["http://a:1"], VllmDialect())
    assert shared.primary == shared.standby  # one prefix cache for every request
    c = ServerCounters()
    assert c.hit_rate() is None
