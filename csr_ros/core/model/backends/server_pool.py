"""The serving engines a remote backend talks to: two *lanes*, a primary and a standby.

A lane is where one state's prompt cache lives (a URL, plus a slot id on llama.cpp, whose prompt
cache is per slot). The engine's live state runs on the primary; the reconciler warms a compacted
state on the standby, and :meth:`ServerPool.promote` swaps their roles when that state is
installed (the CSR paper's two-resource setup):

* two URLs: one lane per server (``--url`` and ``--url2``);
* one URL: two lanes on the same server: llama.cpp slots ``slot_ids`` (the compacted prompt is
  warmed in the other slot, so the live slot's cache survives until the swap), or for vLLM /
  SGLang the same server twice (their prefix caches are shared by all requests).

Counters (thread-safe: the inference and the reconciler threads both report) add up the prompt
tokens each server says it evaluated vs took from its prefix cache, and the warm-up times.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Sequence

from csr_ros.core.model.backends.server_client import Http, LaneClient, RequestPolicy, ServerError
from csr_ros.core.model.backends.server_dialects import Dialect, Lane, Usage
from csr_ros.core.model.backends.server_health import ServerHealth

log = logging.getLogger("csr_ros.server")
KINDS = ("warm", "query", "score", "full")


@dataclass
class KindCounters:
    requests: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    evaluated_tokens: int = 0  # as reported by the server (requests that report it)
    cached_tokens: int = 0
    unreported: int = 0  # requests whose answer carried no prompt accounting
    total_ms: float = 0.0  # client-side wall time of these requests
    last: dict = field(default_factory=dict)  # Usage of the latest request, as a dict


class ServerCounters:
    """Per request kind (warm, query, score, full): prompt tokens evaluated vs cached, times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by = {k: KindCounters() for k in KINDS}
        self.promotions = 0

    def record(self, kind: str, usage: Usage | None, ms: float, failed: bool = False) -> None:
        with self._lock:
            c = self._by[kind]
            c.requests += 1
            c.total_ms += ms
            if failed:
                c.failures += 1
                return
            if usage is None or usage.evaluated is None:
                c.unreported += 1
                if usage is not None:
                    c.prompt_tokens += usage.prompt_tokens
                return
            c.prompt_tokens += usage.prompt_tokens
            c.evaluated_tokens += usage.evaluated
            c.cached_tokens += usage.cached or 0
            c.last = asdict(usage)

    def hit_rate(self, kinds: Sequence[str] = ("warm", "query", "score")) -> float | None:
        """Cached / (cached + evaluated) prompt tokens over ``kinds`` (None: nothing reported)."""
        with self._lock:
            cached = sum(self._by[k].cached_tokens for k in kinds)
            ev = sum(self._by[k].evaluated_tokens for k in kinds)
        return cached / (cached + ev) if cached + ev else None

    def last(self, kind: str) -> dict:
        with self._lock:
            return dict(self._by[kind].last)

    def as_dict(self) -> dict:
        with self._lock:
            out = {k: {**asdict(c)} for k, c in self._by.items()}
        out["promotions"] = self.promotions
        out["hit_rate"] = self.hit_rate()
        return out


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum of every sample per metric name (labels folded) of a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and not line.startswith("#"):
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                continue
    return out


def prefix_hit_rate(metrics: dict[str, float]) -> float | None:
    """The prefix-cache hit rate a server exports: vLLM (hits / queries counters, or the older
    gauge) or SGLang (``sglang:cache_hit_rate``). None when it exports neither."""
    hits = next((v for k, v in metrics.items() if re.search(r"prefix_cache_hits(_total)?$", k)), None)
    queries = next((v for k, v in metrics.items() if re.search(r"prefix_cache_queries(_total)?$", k)), None)
    if hits is not None and queries:
        return hits / queries
    for name in ("vllm:gpu_prefix_cache_hit_rate", "sglang:cache_hit_rate"):
        if name in metrics:
            return metrics[name]
    return None


class ServerPool:
    """The lanes (primary + standby) over one or two server URLs, and what they report."""

    def __init__(self, urls: Sequence[str], dialect: Dialect, timeout_s: "float | RequestPolicy" = 120.0,
                 api_key: str = "", slot_ids: Sequence[int] = (0, 1), health_period_s: float = 0.5):
        urls = [u.rstrip("/") for u in urls if u.strip()]
        if not urls:
            raise ValueError("server.urls: at least one server URL is needed")
        self.urls, self.dialect = urls, dialect
        self.policy = timeout_s if isinstance(timeout_s, RequestPolicy) else RequestPolicy.uniform(timeout_s)
        self.timeout_s, self.api_key = self.policy.warm_timeout_s, api_key
        slots = list(slot_ids) + [0, 1][len(slot_ids):]
        pinned = dialect.name == "llamacpp"
        if len(urls) >= 2:
            self.lanes = [Lane(urls[0], slots[0] if pinned else None), Lane(urls[1], slots[0] if pinned else None)]
        else:
            self.lanes = [Lane(urls[0], slots[0] if pinned else None), Lane(urls[0], slots[1] if pinned else None)]
        self._primary = 0
        self._lock = threading.Lock()
        self.counters = ServerCounters()
        self._live: dict[Lane, weakref.ref] = {}  # per lane: the state that used it last
        self.health = ServerHealth(urls, api_key, health_period_s, min(self.policy.query_timeout_s, 2.0))
        self.health.rewarm, self.health.failover = self._rewarm, self._failover

    # ------------------------------------------------------------------ lanes
    @property
    def primary(self) -> Lane:
        return self.lanes[self._primary]

    @property
    def standby(self) -> Lane:
        return self.lanes[1 - self._primary]

    def client(self, lane: Lane) -> LaneClient:
        return LaneClient(lane, self.dialect, self.policy, self.api_key, self.health)

    # ------------------------------------------------------------------ faults (the health thread)
    def note_use(self, state) -> None:
        """``state`` just sent a request on its lane (the one to re-warm there after a restart)."""
        ref = self._live.get(state.lane)
        if ref is None or ref() is not state:
            self._live[state.lane] = weakref.ref(state)

    def _live_state(self):
        ref = self._live.get(self.primary)
        return ref() if ref is not None else None

    def _warm_on(self, lane: Lane, state) -> int:
        """Warm ``state``'s tokens (the ledger's) into ``lane``'s cache; tokens sent."""
        ids = state.token_ids()
        if not ids:
            return 0
        t0 = time.perf_counter()
        client = LaneClient(lane, self.dialect, self.policy, self.api_key, health=None)
        try:
            _, usage = client.warm(state.prompt_of(ids))
        finally:
            client.close()
        self.counters.record("warm", usage, (time.perf_counter() - t0) * 1e3)
        return len(ids)

    def _rewarm(self, url: str) -> int:
        """Refill ``url``'s caches after its return: the live state on the primary lane, and a
        spare copy of it on a standby server (so the next fail-over finds it warm)."""
        live, tokens = self._live_state(), 0
        if live is None:
            return 0
        for lane in dict.fromkeys(self.lanes):
            if lane.url == url and (lane == self.primary or lane.url != self.primary.url):
                tokens += self._warm_on(lane, live)
        return tokens

    def _failover(self, url: str) -> bool:
        """The primary's server is away: warm the live state on the standby server, move it there
        and promote that lane. False when there is no other server, or it is away too."""
        primary, standby = self.primary, self.standby
        if primary.url != url or standby.url == url or not self.health.is_up(standby.url):
            return False
        live = self._live_state()
        if live is not None:
            self._warm_on(standby, live)
            live.rebind(self.client(standby))
            self._live[standby] = weakref.ref(live)
        self.promote(standby)
        log.warning("fail-over: the live state moved from %s to %s", primary, standby)
        return True

    def promote(self, lane: Lane) -> bool:
        """Make ``lane`` the primary (its state was just installed). False if it already was."""
        with self._lock:
            idx = self.lanes.index(lane) if lane in self.lanes else -1
            if idx < 0 or idx == self._primary:
                return False
            self._primary = idx
            self.counters.promotions += 1
        log.info("promoted %s to primary (standby now %s)", lane, self.standby)
        return True

    # ------------------------------------------------------------------ start-up
    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> None:
        """Block until every server answers ``GET /health`` with 200 (raises ServerError)."""
        deadline = time.monotonic() + timeout_s
        for url in dict.fromkeys(self.urls):
            http, last = Http(url, min(self.timeout_s, 10.0), self.api_key), ""
            while True:
                try:
                    status, raw = http.get("/health")
                    if status == 200:
                        break
                    last = f"HTTP {status}: {raw[:120]!r}"
                except (OSError, ServerError, ValueError) as e:
                    last = str(e)
                    http.close()
                if time.monotonic() > deadline:
                    raise ServerError(f"server {url} not ready after {timeout_s:.0f} s ({last})")
                time.sleep(poll_s)
            http.close()

    def check_slots(self) -> None:
        """llama.cpp with one URL: the two lanes need two slots (``--parallel 2`` or more)."""
        if self.dialect.name != "llamacpp" or len(self.urls) > 1:
            return
        props = self._get_json(self.urls[0], "/props")
        total = int(props.get("total_slots", 1)) if props else 1
        if max(l.slot or 0 for l in self.lanes) >= total:
            log.warning("llama.cpp at %s has %d slot(s): the compacted state is warmed in the live slot "
                        "(start it with --parallel 2 to keep the live cache until the swap)", self.urls[0], total)
            self.lanes = [self.lanes[0], self.lanes[0]]

    def discover_model(self) -> str:
        """The first model id a ``/v1/models`` lists ('' when the server has no such endpoint)."""
        d = self._get_json(self.urls[0], "/v1/models")
        data = (d or {}).get("data") or []
        return str(data[0].get("id", "")) if data else ""

    def _get_json(self, url: str, path: str) -> dict | None:
        http = Http(url, min(self.timeout_s, 10.0), self.api_key)
        try:
            status, raw = http.get(path)
            return json.loads(raw) if status == 200 else None
        except (OSError, ServerError, ValueError):
            return None
        finally:
            http.close()

    # ------------------------------------------------------------------ reports
    def server_metrics(self) -> dict[str, dict]:
        """Per URL: the prefix-cache hit rate the server itself exports (vLLM, SGLang; None for
        llama.cpp, whose per-request ``timings`` are counted in :attr:`counters` instead)."""
        out = {}
        for url in dict.fromkeys(self.urls):
            http = Http(url, min(self.timeout_s, 10.0), self.api_key)
            try:
                status, raw = http.get("/metrics")
                m = parse_prometheus(raw.decode(errors="replace")) if status == 200 else {}
            except (OSError, ServerError):
                m = {}
            finally:
                http.close()
            out[url] = {"prefix_cache_hit_rate": prefix_hit_rate(m), "exported": bool(m)}
        return out

    def report(self) -> dict:
        return {"dialect": self.dialect.name, "lanes": [str(l) for l in self.lanes], "primary": str(self.primary),
                "counters": self.counters.as_dict(), "faults": asdict(self.health.counters),
                "server_metrics": self.server_metrics()}
