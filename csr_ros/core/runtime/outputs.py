"""What the frame scheduler returns: action chunks, status snapshots, events and its counters.

Plain records (no threads, no model): the scheduler produces them, the nodes turn them into
messages. :class:`StatusOut` holds copies of the counters themselves (engine, scheduler, intake)
plus the few gauges no counter keeps; every name ``csr_ros/CacheStatus`` and ``/diagnostics``
report is a property derived from them, so there is no second list of fields to keep in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from csr_ros.core.model.backends.server_health import ServerFaultCounters
from csr_ros.core.runtime.engine import EngineCounters
from csr_ros.core.runtime.intake import InboxCounters
from csr_ros.core.state.ledger_disk import StoreCounters


@dataclass(frozen=True)
class ChunkOut:
    """An action chunk (csr_ros/ActionChunk). Times in ns on the scheduler's clock.

    ``stamp_ns``: when step 0 is due (step i at ``stamp_ns + i * dt_s``); ``data``: row-major
    ``horizon x len(names)``, clamped; ``action``: registry entry ("" from a learned head).
    """

    stamp_ns: int
    observation_stamp_ns: int
    state_version: int
    names: tuple[str, ...]
    dt_s: float
    horizon: int
    data: tuple[float, ...]
    action: str
    valid_until_ns: int
    is_hold: bool


@dataclass(frozen=True)
class SchedulerEvent:
    kind: str  # "policy_failure" | "append_failure" | "swap" | "swap_refused" | "clock_jump"
    detail: dict = field(default_factory=dict)


@dataclass
class SchedulerCounters:
    frames: int = 0
    frame_overruns: int = 0
    decisions: int = 0
    policy_failures: int = 0
    append_failures: int = 0
    holds_published: int = 0  # hold periods: publisher ticks that got the hold chunk (no valid chunk)
    refused_requests: int = 0
    instructions_rejected: int = 0
    restamped: int = 0  # observations whose own stamp was off this clock (receive time used)
    clock_jumps: int = 0  # jumps back of the clock (each starts an episode segment)
    last_frame_ms: float = 0.0
    last_error: str = ""


def _counter(group: str, name: str) -> property:
    """A read-only attribute that is ``self.<group>.<name>``."""
    return property(lambda self: getattr(getattr(self, group), name), doc=f"``{group}.{name}``")


@dataclass(frozen=True)
class StatusOut:
    """One status snapshot: gauges plus copies of the counters, taken by
    :meth:`csr_ros.core.runtime.scheduler.FrameScheduler.status`.

    Gauges: ``state_version`` (ledger version served), ``cached_tokens`` / ``budget_tokens``
    (tokens), ``reconciler_state`` (idle | building | ready | failed), ``last_ttft_ms`` /
    ``last_rebuild_ms`` (ms), ``open_requests`` (answers streaming), ``language_tokens`` (generated
    since start). The properties below are the names the messages use.
    """

    state_version: int
    cached_tokens: int
    budget_tokens: int
    reconciler_state: str
    last_ttft_ms: float
    last_rebuild_ms: float
    open_requests: int = 0
    language_tokens: int = 0
    engine: EngineCounters = field(default_factory=EngineCounters)
    scheduler: SchedulerCounters = field(default_factory=SchedulerCounters)
    inbox: InboxCounters = field(default_factory=InboxCounters)
    server: ServerFaultCounters = field(default_factory=ServerFaultCounters)
    store: StoreCounters = field(default_factory=StoreCounters)

    # The names csr_ros/CacheStatus and /diagnostics use, each read from its one counter.
    increments_total = _counter("engine", "increments_total")
    increments_rejected = _counter("engine", "increments_rejected")
    sync_fallbacks = _counter("engine", "sync_evictions")
    frames = _counter("scheduler", "frames")
    frame_overruns = _counter("scheduler", "frame_overruns")
    decisions = _counter("scheduler", "decisions")
    policy_failures = _counter("scheduler", "policy_failures")
    holds_published = _counter("scheduler", "holds_published")
    clock_jumps = _counter("scheduler", "clock_jumps")
    requests_refused = _counter("scheduler", "refused_requests")
    instructions_rejected = _counter("scheduler", "instructions_rejected")
    increments_coalesced = _counter("inbox", "coalesced")
    servers_away = _counter("server", "servers_away")
    server_outages = _counter("server", "outages")
    server_rewarms = _counter("server", "rewarms")
    server_failovers = _counter("server", "failovers")
    server_refused_while_away = _counter("server", "refused_while_away")
    server_error = _counter("server", "last_server_error")
    ledger_disk_ok = _counter("store", "disk_ok")
    ledger_backlog_records = _counter("store", "backlog_records")
    ledger_write_failures = _counter("store", "write_failures")
    ledger_records_dropped = _counter("store", "records_dropped")
    ledger_torn_records_dropped = _counter("store", "torn_records_dropped")
    ledger_disk_error = _counter("store", "last_disk_error")

    @property
    def evictions(self) -> int:
        """Compactions installed: asynchronous swaps plus synchronous evictions."""
        return self.engine.swaps + self.engine.sync_evictions

    def report(self) -> dict[str, object]:
        """Every gauge and every derived name, in declaration order (diagnostics key/values)."""
        gauges = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("engine", "scheduler", "inbox", "server", "store")}
        derived = {n: getattr(self, n) for n, v in vars(type(self)).items() if isinstance(v, property)}
        return {**gauges, **derived}

    def fault(self) -> str:
        """What is failing outside the process ('' when nothing): a serving engine away, or the
        ledger's disk refusing writes. ``/diagnostics`` reports it as ERROR."""
        if self.servers_away:
            return f"serving engine away, holding ({self.server_error})"
        if not self.ledger_disk_ok:
            return (f"ledger disk failing, serving from memory: {self.ledger_backlog_records} records held "
                    f"({self.ledger_disk_error})")
        return ""


def fault_counters(engine) -> dict:
    """Copies of the fault counters of ``engine``'s serving engines and ledger store (the
    ``server`` and ``store`` groups of :class:`StatusOut`; absent ones stay at their defaults)."""
    out = {}
    server = getattr(engine.backend, "fault_counters", None)
    if server is not None:
        out["server"] = server()
    store = getattr(engine.store, "counters", None)
    if store is not None:
        out["store"] = store
    return out
