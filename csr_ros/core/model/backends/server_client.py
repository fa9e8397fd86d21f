"""HTTP clients of the serving engines: one keep-alive connection per :class:`LaneClient`
(one per remote state, so one per thread) and one connection per open stream, whose closing
cancels the generation on the server. Plain ``http.client``; the request bodies and answer
parsing of each server API are in :mod:`csr_ros.core.model.backends.server_dialects`.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from csr_ros.core.model.backends.server_dialects import Dialect, Lane, StreamEvent, Usage

__all__ = ["Http", "LaneClient", "Lane", "RequestPolicy", "ServerError", "ServerUnavailable", "SseStream",
           "TokenStream", "Usage"]


class ServerError(RuntimeError):
    """A server answered with an error, an unexpected body, or not at all (the message says which).

    ``reason``: ``http`` (it answered: an error status or a bad body), ``connect`` (refused, reset,
    unreachable: a dead server), ``stall`` (no answer within the request's timeout), ``away``
    (:class:`ServerUnavailable`)."""

    def __init__(self, message: str, reason: str = "http"):
        super().__init__(message)
        self.reason = reason


class ServerUnavailable(ServerError):
    """Refused at once, without a request: the server is away (dead, stalled, or being re-warmed
    after its return; :class:`csr_ros.core.model.backends.server_health.ServerHealth`)."""

    def __init__(self, message: str):
        super().__init__(message, "away")


def _reason(e: OSError) -> str:
    return "stall" if isinstance(e, TimeoutError) else "connect"


@dataclass(frozen=True)
class RequestPolicy:
    """Timeouts per request kind (seconds: connect, and each read of the answer) and retries.

    A request whose connection is refused or reset is retried ``retries`` times, after
    ``retry_backoff_s``, then twice that, ...; a stalled one (timed out) is not retried."""

    warm_timeout_s: float = 120.0
    query_timeout_s: float = 30.0
    score_timeout_s: float = 10.0
    retries: int = 2
    retry_backoff_s: float = 0.05

    @classmethod
    def uniform(cls, timeout_s: float) -> "RequestPolicy":
        return cls(timeout_s, timeout_s, timeout_s)


class Http:
    """One keep-alive HTTP/1.1 connection to one server. Not thread-safe (one per owner)."""

    def __init__(self, url: str, timeout_s: float, api_key: str = ""):
        u = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"server url {url!r}: expected http://host:port")
        self.scheme, self.host, self.base = u.scheme, u.hostname, u.path.rstrip("/")
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._conn: http.client.HTTPConnection | None = None
        self.reconnects = 0  # keep-alive connections found closed by the server (a restart drops them)

    def _new(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout_s)

    def _send(self, conn, method: str, path: str, body: dict | None) -> http.client.HTTPResponse:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, self.base + path, data, self.headers)
        return conn.getresponse()

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        """``(status, body bytes)``; a stale keep-alive connection is re-opened once."""
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self._new()
            try:
                resp = self._send(self._conn, method, path, body)
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady) as e:
                self.close()
                if attempt:
                    raise ServerError(f"{self.host}:{self.port}{path}: {e!r}", "connect") from e
                self.reconnects += 1
            except OSError as e:
                self.close()
                raise ServerError(f"{self.host}:{self.port}{path}: {e!r}", _reason(e)) from e
            except http.client.HTTPException as e:
                self.close()
                raise ServerError(f"{self.host}:{self.port}{path}: {e!r}", "connect") from e
        raise AssertionError("unreachable")

    def post(self, path: str, body: dict) -> dict:
        status, raw = self.request("POST", path, body)
        return _json_or_raise(status, raw, f"POST {self.base}{path}")

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def stream(self, path: str, body: dict) -> "SseStream":
        """A streamed POST on its own connection (closing the stream aborts the generation)."""
        conn = self._new()
        try:
            resp = self._send(conn, "POST", path, body)
        except OSError as e:
            conn.close()
            raise ServerError(f"{self.host}:{self.port}{path}: {e!r}", _reason(e)) from e
        except http.client.HTTPException as e:
            conn.close()
            raise ServerError(f"{self.host}:{self.port}{path}: {e!r}", "connect") from e
        if resp.status != 200:
            raw = resp.read()
            conn.close()
            _json_or_raise(resp.status, raw, f"POST {self.base}{path}")
        return SseStream(conn, resp)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _json_or_raise(status: int, raw: bytes, what: str) -> dict:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = None
    if status != 200 or not isinstance(data, dict):
        raise ServerError(f"{what}: HTTP {status}: {raw[:300]!r}")
    return data


class SseStream:
    """Server-sent events of one streamed request: ``events()`` yields the JSON ``data:`` items."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._conn, self._resp = conn, resp
        self.closed = False

    def events(self) -> Iterator[dict]:
        while not self.closed:
            line = self._resp.readline()
            if not line:
                return
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            try:
                ev = json.loads(payload)
            except ValueError as e:
                raise ServerError(f"bad stream event {payload[:200]!r}") from e
            if isinstance(ev, dict) and "error" in ev and not ev.get("choices"):
                raise ServerError(f"stream error: {ev['error']}")
            yield ev

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._conn.close()


# ==================================================================================== the client
class TokenStream:
    """Tokens of one streamed generation, read one by one (``next_token()``; None at the end)."""

    def __init__(self, sse: SseStream, parse: Callable[[dict], StreamEvent], t0: float,
                 on_error: Callable[[ServerError], None] | None = None):
        self._sse, self._parse, self._on_error = sse, parse, on_error
        self._events = sse.events()
        self._queue: list[int] = []
        self.finish = ""  # why it ended ("eos", "length", ...); "" while running
        self.usage: Usage | None = None
        self.t_open = t0
        self.ttft_s: float | None = None  # request sent -> first token read

    def next_token(self) -> int | None:
        while not self._queue:
            if self.finish:
                return None
            try:
                ev = self._parse(next(self._events))
            except StopIteration:
                self.finish = self.finish or "closed"
                return None
            except (OSError, http.client.HTTPException) as e:  # the server died or stalled mid-answer
                err = ServerError(f"stream: {e!r}", _reason(e) if isinstance(e, OSError) else "connect")
                if self._on_error is not None:
                    self._on_error(err)
                raise err from e
            self.usage = ev.usage or self.usage
            self._queue.extend(ev.tokens)
            if ev.done:
                self.finish = ev.finish or "stop"
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self.t_open
        return self._queue.pop(0)

    def close(self) -> None:
        self._sse.close()


class LaneClient:
    """The four requests of a remote state on one lane, through one dialect.

    ``policy``: timeouts per request kind and retries (a number: one timeout for all).
    ``health``: the :class:`~csr_ros.core.model.backends.server_health.ServerHealth` of the pool:
    a request to a server it knows is away is refused at once (:class:`ServerUnavailable`), and a
    server that does not answer is reported to it. None: no such bookkeeping (the re-warm's own).
    """

    def __init__(self, lane: Lane, dialect: Dialect, policy: "RequestPolicy | float", api_key: str = "",
                 health=None):
        self.lane, self.dialect, self.health = lane, dialect, health
        self.policy = policy if isinstance(policy, RequestPolicy) else RequestPolicy.uniform(float(policy))
        self.api_key = api_key
        self._http = {"warm": Http(lane.url, self.policy.warm_timeout_s, api_key),
                      "score": Http(lane.url, self.policy.score_timeout_s, api_key)}

    def _call(self, fn: Callable[[], object]):
        """``fn()`` with the health check first, and retries of a refused or reset connection."""
        if self.health is not None:
            self.health.check(self.lane.url)
        for attempt in range(self.policy.retries + 1):
            try:
                return fn()
            except ServerError as e:
                if e.reason in ("http", "away"):  # it answered (or is known away): nothing to retry
                    raise
                if e.reason == "stall" or attempt == self.policy.retries:
                    if self.health is not None:
                        self.health.failed(self.lane.url, e)
                    raise
                if self.health is not None:
                    self.health.retried()
                time.sleep(self.policy.retry_backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _post(self, kind: str, req: tuple[str, dict]) -> dict:
        return self._call(lambda: self._http[kind].post(*req))

    def warm(self, prompt) -> tuple[list[int], Usage | None]:
        """Evaluate ``prompt`` into the server's prefix cache (generates at most one token)."""
        d = self._post("warm", self.dialect.warm_req(prompt, self.lane))
        return self.dialect.parse_tokens(d), self.dialect.parse_usage(d)

    def stream(self, prompt, max_tokens: int, cache: bool = True) -> TokenStream:
        t0 = time.perf_counter()
        req = self.dialect.stream_req(prompt, self.lane, max_tokens, cache)
        sse = self._call(lambda: Http(self.lane.url, self.policy.query_timeout_s, self.api_key).stream(*req))
        report = (lambda e: self.health.failed(self.lane.url, e)) if self.health is not None else None
        return TokenStream(sse, self.dialect.stream_parser(), t0, report)

    def next_logprobs(self, prompt, k: int, want: Sequence[int]) -> tuple[dict[int, float] | None, Usage | None]:
        """Log-probabilities of the next token (top ``k`` plus ``want`` where the server can)."""
        d = self._post("score", self.dialect.logprob_req(prompt, self.lane, k, want))
        return self.dialect.parse_logprobs(d, want), self.dialect.parse_usage(d)

    def choose(self, prompt, allowed: Sequence[int]) -> tuple[int | None, Usage | None]:
        """One greedy token restricted (by a logit bias) to ``allowed``."""
        d = self._post("score", self.dialect.choice_req(prompt, self.lane, allowed))
        toks = self.dialect.parse_tokens(d)
        return (toks[0] if toks else None), self.dialect.parse_usage(d)

    def close(self) -> None:
        for h in self._http.values():
            h.close()
