"""Which serving engines are up, and bringing the others back, off the hot path.

A server is *up*, *away* (a request to it was refused, reset or timed out: dead or stalled) or
*rewarming* (it answers ``/health`` again and its prefix cache is being refilled). While it is not
up, every request to it is refused at once with :class:`ServerUnavailable` (no request waits a
timeout twice): the policy's scoring fails, so the scheduler publishes the hold chunk, and a
question that arrives is refused with a final ``"refused: ..."`` answer. Appends go on into the
ledger (the state is the truth; the server's cache is a copy of it).

A background thread (``csr-server-health``), every ``period_s``:

* probes each server's ``/health`` on a kept-alive connection: a refused probe marks an up
  server away; a connection the server dropped although it answers again means it restarted
  (its prefix cache is empty): it is re-warmed at once, without marking it away;
* an away server whose lane was the primary, when the other server is up: *fail-over* - the live
  state is warmed on the standby server (the standby first) and moved there, which becomes the
  primary, so queries resume without waiting for the dead one;
* an away server that answers again is re-warmed (the live state's tokens, the ledger's, in one
  warm-up request per lane) and only then marked up: the first query after it pays for its
  question only.

Counters (:class:`ServerFaultCounters`) feed ``/diagnostics`` (ERROR while a server is away).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

from csr_ros.core.model.backends.server_client import Http, ServerError, ServerUnavailable

log = logging.getLogger("csr_ros.server")
UP, AWAY, REWARMING = "up", "away", "rewarming"


@dataclass
class ServerFaultCounters:
    """``servers_away`` is a gauge (servers now away or re-warming); the rest count since start.

    ``outages``: a server found away. ``stalls``: of them, by a timeout. ``retries``: requests
    retried after a refused or reset connection. ``refused_while_away``: requests refused at once.
    ``restarts_detected``: servers found restarted (connections dropped) without an outage seen.
    ``rewarms`` / ``last_rewarm_ms`` / ``rewarm_tokens``: re-warms done, the last one's duration,
    tokens sent. ``failovers``: the live state moved to the other server.
    """

    servers_away: int = 0
    outages: int = 0
    stalls: int = 0
    retries: int = 0
    refused_while_away: int = 0
    restarts_detected: int = 0
    rewarms: int = 0
    rewarm_failures: int = 0
    rewarm_tokens: int = 0
    last_rewarm_ms: float = 0.0
    failovers: int = 0
    last_server_error: str = ""


class ServerHealth:
    """Per-URL state and the thread that brings servers back (see the module doc).

    ``rewarm(url) -> tokens``: refill ``url``'s prefix caches (raises on failure).
    ``failover(url) -> bool``: move the live state off ``url`` to the other server, if possible.
    Both are the pool's and run on this object's thread only.
    """

    def __init__(self, urls: Sequence[str], api_key: str = "", period_s: float = 0.5, probe_timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.urls = list(dict.fromkeys(urls))
        self.period_s, self.clock = period_s, clock
        self.rewarm: Callable[[str], int] = lambda url: 0
        self.failover: Callable[[str], bool] = lambda url: False
        self._probes = {u: Http(u, probe_timeout_s, api_key) for u in self.urls}
        self._state = {u: UP for u in self.urls}
        self._since = {u: 0.0 for u in self.urls}
        self._failed_over: set[str] = set()
        self._c = ServerFaultCounters()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ requests (any thread)
    def check(self, url: str) -> None:
        """Raise :class:`ServerUnavailable` when ``url`` is not up (counted)."""
        with self._lock:
            st = self._state.get(url, UP)
            if st == UP:
                return
            self._c.refused_while_away += 1
            msg = self._describe(url)
        raise ServerUnavailable(msg)

    def _describe(self, url: str) -> str:
        st, away_s = self._state[url], self.clock() - self._since[url]
        what = "being re-warmed after its return" if st == REWARMING else "away (dead or stalled)"
        return (f"serving engine {url} {what} for {away_s:.1f} s ({self._c.last_server_error}); "
                "requests to it are refused until it is back and re-warmed")

    def failed(self, url: str, e: ServerError) -> None:
        """A request to ``url`` found it dead (refused, reset) or stalled (timed out)."""
        with self._lock:
            self._c.last_server_error = f"{url}: {e}"[:300]
            if self._state.get(url) != UP:
                return
            self._state[url], self._since[url] = AWAY, self.clock()
            self._c.outages += 1
            self._c.stalls += e.reason == "stall"
            self._c.servers_away = sum(s != UP for s in self._state.values())
        log.error("serving engine %s is away (%s): holding; requests to it are refused until it is back", url, e)
        self._wake.set()

    def retried(self) -> None:
        with self._lock:
            self._c.retries += 1

    def away_reason(self, urls: Sequence[str]) -> str:
        """Why a request to any of ``urls`` would be refused now ('' when all are up)."""
        with self._lock:
            return next((self._describe(u) for u in urls if self._state.get(u, UP) != UP), "")

    def is_up(self, url: str) -> bool:
        with self._lock:
            return self._state.get(url, UP) == UP

    @property
    def counters(self) -> ServerFaultCounters:
        with self._lock:
            return dataclasses.replace(self._c)

    # ------------------------------------------------------------------ the monitor
    def _probe(self, url: str) -> str:
        """``up``, ``restarted`` (answers, but it dropped our kept-alive connection) or ``away``."""
        http = self._probes[url]
        before = http.reconnects
        try:
            status, _ = http.get("/health")
        except (ServerError, OSError):
            return AWAY
        if status != 200:
            return AWAY  # llama.cpp answers 503 while it loads the model
        return "restarted" if http.reconnects > before else UP

    def _set(self, url: str, state: str) -> None:
        with self._lock:
            if self._state[url] == UP and state != UP:
                self._since[url] = self.clock()
            self._state[url] = state
            self._c.servers_away = sum(s != UP for s in self._state.values())

    def _rewarm(self, url: str) -> bool:
        t0 = time.perf_counter()
        try:
            tokens = self.rewarm(url)
        except Exception as e:  # noqa: BLE001 - it stays away; the next poll tries again
            with self._lock:
                self._c.rewarm_failures += 1
                self._c.last_server_error = f"re-warm of {url}: {e}"[:300]
            log.warning("re-warm of %s failed: %s", url, e)
            return False
        with self._lock:
            self._c.rewarms += 1
            self._c.rewarm_tokens += tokens
            self._c.last_rewarm_ms = (time.perf_counter() - t0) * 1e3
        log.warning("serving engine %s re-warmed (%d tokens, %.0f ms)", url, tokens, self._c.last_rewarm_ms)
        return True

    def poll_once(self) -> None:
        """One round over the servers (the thread's body; tests call it directly)."""
        for url in self.urls:
            with self._lock:
                st = self._state[url]
            seen = self._probe(url)
            if st == UP:
                if seen == AWAY:
                    self.failed(url, ServerError("/health probe failed", "connect"))
                elif seen == "restarted":
                    with self._lock:
                        self._c.restarts_detected += 1
                    log.info("serving engine %s dropped its connection (a restart, or its keep-alive limit): "
                             "re-warming it while it serves", url)
                    self._rewarm(url)  # stays up: after a false alarm the re-warm is a prefix hit
                continue
            if seen == AWAY:
                if url not in self._failed_over and self.failover(url):
                    self._failed_over.add(url)
                    with self._lock:
                        self._c.failovers += 1
                continue
            self._set(url, REWARMING)
            if self._rewarm(url):
                self._failed_over.discard(url)
                self._set(url, UP)
                log.warning("serving engine %s is back", url)
            else:
                self._set(url, AWAY)

    def start(self) -> None:
        """Start the monitor thread (a daemon; it ends with :meth:`close` or this object)."""
        if self._thread is None:
            self._thread = threading.Thread(target=_monitor, args=(weakref.ref(self),), daemon=True,
                                            name="csr-server-health")
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for h in self._probes.values():
            h.close()


def _monitor(ref: "weakref.ref[ServerHealth]") -> None:
    while True:
        h = ref()
        if h is None or h._stop.is_set():
            return
        try:
            h.poll_once()
        except Exception as e:  # noqa: BLE001 - the monitor never dies
            log.error("server health poll failed: %s: %s", type(e).__name__, e)
        wake, period = h._wake, h.period_s
        del h
        wake.wait(period)
        wake.clear()
