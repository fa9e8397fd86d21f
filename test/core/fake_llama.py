"""A llama.cpp-shaped server on loopback for the core tier's server-fault tests: ``/health`` and
``/completion`` (token-id prompts, ``id_slot`` prefix caches, ``n_probs``, ``logit_bias``,
streaming), with the faults a real one has: killed (every connection dropped, the port closed),
restarted with empty caches on the same port, stalled (requests accepted, never answered).

Answers: a streamed answer is tokens ``ANSWER`` then EOS; a one-token request answers the first
``logit_bias`` token (else ``ANSWER[0]``) with ``n_probs`` log-probabilities of it.
``timings.prompt_n`` / ``cache_n`` are computed from the slot's cache (the longest common prefix
with the previous prompt of that slot), as llama.cpp reports them.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EOS = 2
ANSWER = [70, 71, 72]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as llama-server

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        self.server.owner._conns.add(self.connection)

    def do_GET(self):
        self._json(200, {"status": "ok"} if self.path == "/health" else {"total_slots": 2})

    def do_POST(self):
        o = self.server.owner
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with o.lock:
            o.requests.append(body)
        if o.stalled.is_set():
            o.release.wait(30)
            return
        prompt, slot = body["prompt"], body.get("id_slot", 0)
        with o.lock:
            prev = o.cache.get(slot, [])
            hit = next((i for i, (a, b) in enumerate(zip(prompt, prev)) if a != b), min(len(prompt), len(prev)))
            o.cache[slot] = list(prompt)
        timings = {"prompt_n": len(prompt) - hit, "cache_n": hit, "prompt_ms": 0.1}
        if body.get("stream"):
            return self._stream(prompt, timings)
        bias = body.get("logit_bias") or []
        tok = int(bias[0][0]) if bias else ANSWER[0]
        out = {"tokens": [tok], "stop": True, "stop_type": "limit", "timings": timings}
        if body.get("n_probs"):
            out["completion_probabilities"] = [{"top_logprobs": [{"id": tok, "logprob": -0.1}]}]
        self._json(200, out)

    def _stream(self, prompt, timings):
        fed = sum(1 for t in prompt[-len(ANSWER):] if t in ANSWER)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for i, t in enumerate(ANSWER[fed:] + [EOS]):
            ev = {"tokens": [t], "stop": t == EOS, "stop_type": "eos" if t == EOS else ""}
            if i == 0:
                ev["timings"] = timings
            self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
        self.close_connection = True

    def _json(self, code, obj):
        raw = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class FakeLlamaServer:
    """``start()`` / ``kill()`` / ``restart()`` (same port, empty caches) / ``stall()`` / ``unstall()``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.cache: dict[int, list[int]] = {}
        self.stalled, self.release = threading.Event(), threading.Event()
        self._conns: set[socket.socket] = set()
        self.port = 0
        self._srv = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        srv = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        srv.daemon_threads, srv.block_on_close, srv.owner = True, False, self
        self.port = srv.server_address[1]
        self._srv = srv
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def kill(self) -> None:
        """The process dies: the port closes and every open connection is reset."""
        self._srv.shutdown()
        self._srv.server_close()
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self._conns.clear()
        self.release.set()

    def restart(self) -> None:
        """A new process on the same port: empty prefix caches."""
        self.cache = {}
        self.release.clear()
        self.start()

    def stall(self) -> None:
        self.release.clear()
        self.stalled.set()

    def unstall(self) -> None:
        self.stalled.clear()
        self.release.set()

    def kinds(self, since: int = 0) -> list[str]:
        """What each request since ``since`` was: warm, score, choose or stream."""
        out = []
        for b in self.requests[since:]:
            out.append("stream" if b.get("stream") else "score" if b.get("n_probs") else
                       "choose" if b.get("logit_bias") else "warm")
        return out
