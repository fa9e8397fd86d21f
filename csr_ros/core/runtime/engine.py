"""The CSR engine: ledger + KV state + template + budget, driven by one owner thread.

Perception increments are rendered and tokenized once (:meth:`CsrEngine.submit`), queued, and
appended to the KV cache in one forward (:meth:`flush`) or together with the next query
(:meth:`query`: pending increments + question in ONE forward, the cheapest path). Queries run as
branches of the KV state and are cropped away, so the state only ever grows by increments.

Budget: at ``high_water_frac * budget_tokens`` the engine reports ``needs_compaction`` (the
reconciler then builds a compacted state off the hot path and hands it over through
:meth:`install`). If the state would exceed ``budget_tokens`` anyway, a synchronous drop-oldest
eviction runs on the spot: counted, logged, and the reason the reconciler exists.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from csr_ros.core.state.compaction import CompactionError, CompactionPlan, apply_plan, plan_drop_oldest
from csr_ros.core.state.heap import release_free_memory
from csr_ros.core.reconcile.hot_path import gate_of
from csr_ros.core.state.ledger import Fact, Increment, LedgerError, StateLedger, total_tokens
from csr_ros.core.state.template import DEFAULT_SYSTEM

log = logging.getLogger("csr_ros.engine")
EVENTS_KEPT = 256  # events kept for drain_events(): bounded memory when nobody drains them


@dataclass(frozen=True)
class QueryResult:
    """A generated answer.

    Attributes:
        text: decoded answer. token_ids: generated ids (without EOS).
        ttft_s: seconds from the call to the first generated token (includes pending appends).
        total_s: seconds for the whole answer. state_version / state_tokens: state it read.
    """

    text: str
    token_ids: tuple[int, ...]
    ttft_s: float
    total_s: float
    state_version: int
    state_tokens: int


@dataclass(frozen=True)
class EngineEvent:
    """Something the owner (a node, a benchmark) may want to publish or log."""

    kind: str  # "sync_eviction" | "swap" | "high_water"
    detail: dict = field(default_factory=dict)


@dataclass
class EngineCounters:
    increments_total: int = 0
    increments_rejected: int = 0
    sync_evictions: int = 0
    swaps: int = 0
    evicted_by_policy: int = 0  # increments dropped by drop_oldest (neither kept nor in memory)
    store_errors: int = 0  # failed writes to the on-disk ledger (logged; serving goes on)
    last_ttft_ms: float = 0.0
    last_rebuild_ms: float = 0.0


class CsrEngine:
    """Cached state of one model. Not thread-safe: one owner thread calls everything here.

    Optional collaborators: ``compactor`` (:class:`csr_ros.core.state.compaction.Compactor`, the policy
    of the synchronous fallback; None = drop_oldest), ``store``
    (:class:`csr_ros.core.state.ledger_store.LedgerStore`: every accepted increment and every new state
    version is appended to it; an existing ledger in it is restored here, see ``restored``) and
    ``memory`` (:class:`csr_ros.core.state.entity_memory.EntityMemory` updated on every accept).
    """

    def __init__(self, backend, budget_tokens: int = 2048, high_water_frac: float = 0.75,
                 evict_frac: float = 0.5, system_prompt: str = "",
                 clock_ns: Callable[[], int] = time.monotonic_ns, compactor=None, store=None, memory=None):
        self.backend = backend
        self.template = backend.template
        self.budget_tokens = budget_tokens
        self.high_water_tokens = int(budget_tokens * high_water_frac)
        self.evict_frac = evict_frac
        self.clock_ns = clock_ns
        prefix = tuple(backend.bos_ids() + backend.encode(self.template.prefix(system_prompt or DEFAULT_SYSTEM)))
        if len(prefix) >= budget_tokens // 2:
            raise ValueError(f"system prefix ({len(prefix)} tokens) leaves no room in a {budget_tokens}-token budget")
        self.ledger = StateLedger(prefix_ids=prefix, epoch_ns=-1)
        self.kv = backend.new_state()
        self.kv.append(list(prefix))
        self.pending: list[Increment] = []
        self.counters = EngineCounters()
        self._events: deque[EngineEvent] = deque(maxlen=EVENTS_KEPT)  # undrained: the oldest go
        self.compactor, self.store, self.memory = compactor, store, memory
        if compactor is not None and getattr(compactor, "max_block_tokens", 0) is None:
            # the memory block may take at most 3/4 of the room between prefix and high water
            compactor.max_block_tokens = max(1, 3 * (self.high_water_tokens - len(prefix)) // 4)
        self.restored = None  # what the store held at start (csr_ros.core.state.ledger_store.Restored)
        if store is not None:
            self._open_store(store)

    # -------------------------------------------------------------- intake
    @property
    def last_seq(self) -> int:
        return self.pending[-1].seq if self.pending else self.ledger.last_seq

    def make_increment(self, source: str, stamp_ns: int, text: str, facts: Sequence[Fact] = (),
                       seq: int | None = None) -> Increment:
        """Render and tokenize an observation ONCE (relative to the state's pinned epoch)."""
        if self.ledger.epoch_ns < 0:
            self.ledger.epoch_ns = stamp_ns
        t_s = (stamp_ns - self.ledger.epoch_ns) / 1e9
        ids = tuple(self.backend.encode(self.template.increment(t_s, source, text)))
        return Increment(self.last_seq + 1 if seq is None else seq, source, stamp_ns, text, ids, tuple(facts))

    def accept(self, inc: Increment) -> None:
        """Queue an increment for the next append (validates order and size)."""
        if inc.seq <= self.last_seq:
            self.counters.increments_rejected += 1
            raise LedgerError(f"increment seq {inc.seq} is not newer than {self.last_seq}")
        if inc.num_tokens == 0 or inc.num_tokens > self.budget_tokens // 4:
            self.counters.increments_rejected += 1
            raise LedgerError(f"increment of {inc.num_tokens} tokens (limit {self.budget_tokens // 4})")
        if self.store is not None and self.store.needs_snapshot:  # a consistent point: nothing half done
            self._persist(lambda s: s.write_snapshot(self.snapshot(), self.counters.increments_total,
                                                     self.counters.evicted_by_policy))
        self.pending.append(inc)
        self.counters.increments_total += 1
        if self.memory is not None:
            self.memory.observe(inc)
        if self.ledger.epoch_ns >= 0:
            self._persist(lambda s: s.set_epoch(self.ledger.epoch_ns))
        self._persist(lambda s: s.append_increment(inc))

    def submit(self, source: str, stamp_ns: int, text: str, facts: Sequence[Fact] = ()) -> Increment:
        inc = self.make_increment(source, stamp_ns, text, facts)
        self.accept(inc)
        return inc

    # -------------------------------------------------------------- appends
    def _take_pending(self) -> list[int]:
        """Move pending increments into the ledger (after the budget check); returns their ids."""
        if not self.pending:
            return []
        self._enforce_hard_limit(total_tokens(self.pending))
        ids: list[int] = []
        for inc in self.pending:
            self.ledger.append(inc)
            ids.extend(inc.token_ids)
        self.pending = []
        return ids

    def flush(self, want_hidden: bool = False):
        """Append all pending increments in ONE forward. Returns the StepOut (or None)."""
        ids = self._take_pending()
        if not ids:
            return None
        try:
            return self.kv.append(ids, want_hidden=want_hidden)
        except Exception:
            self._resync_after_failure()
            raise

    def _resync_after_failure(self) -> None:
        """A failed append leaves the KV short of the ledger: rebuild the tail (keep invariants)."""
        have = self.kv.length
        missing = self.ledger.token_ids()[have:]
        if missing:
            self.kv.append(missing)

    @property
    def needs_compaction(self) -> bool:
        return self.ledger.num_tokens + total_tokens(self.pending) >= self.high_water_tokens

    def snapshot(self) -> StateLedger:
        """A copy of the state as it will be once the pending increments are appended (what the
        reconciler compacts; safe to read from another thread)."""
        snap = self.ledger.copy()
        for inc in self.pending:
            snap.append(inc)
        return snap

    def _plan_sync(self) -> tuple[StateLedger, CompactionPlan]:
        if self.compactor is not None:
            return self.compactor.compact(self.ledger, allow_model=False)
        plan = plan_drop_oldest(self.ledger, self.evict_frac)
        return apply_plan(self.ledger, plan, self.template, self.backend.encode), plan

    def _enforce_hard_limit(self, incoming: int) -> None:
        for _ in range(4):  # a grown memory block can leave one compaction still over the budget
            if self.ledger.num_tokens + incoming <= self.budget_tokens or not self.compact_now("hard_limit"):
                return

    def compact_now(self, reason: str = "requested") -> bool:
        """Synchronous compaction on the caller's thread (the fallback; counted and logged).

        Returns False when nothing can be evicted (the state then stays as it is).
        """
        t0 = time.perf_counter()
        old = self.ledger
        try:
            ledger, plan = self._plan_sync()
        except CompactionError as e:  # e.g. nothing left to evict: serve over budget, loudly
            log.error("synchronous eviction impossible: %s", e)
            return False
        self._rebuild(ledger)
        self._record_compaction(old, ledger)
        ms = (time.perf_counter() - t0) * 1e3
        self.counters.sync_evictions += 1
        self.counters.last_rebuild_ms = ms
        detail = {"reason": reason, "tokens_before": old.num_tokens, "tokens_after": ledger.num_tokens,
                  "evicted": len(plan.evicted), "rebuild_ms": ms}
        self._events.append(EngineEvent("sync_eviction", detail))
        log.warning("synchronous eviction (%s, budget %d tokens): %s", reason, self.budget_tokens, detail)
        return True

    def _rebuild(self, ledger: StateLedger) -> None:
        kv = self.backend.new_state()
        kv.prefill(ledger.token_ids())
        self.ledger, self.kv = ledger, kv

    def install(self, ledger: StateLedger, kv) -> int:
        """Swap in a state built elsewhere (frame boundary only); no forward runs here.

        Increments newer than the handed-over state become *pending* (appended with the next
        query or flush, in one forward). Returns their number. Raises ValueError if it is not
        newer, if the current KV has open branches (their KV would be lost), or if the KV does
        not hold exactly the ledger's tokens.
        """
        if ledger.version <= self.ledger.version:
            raise ValueError(f"state version {ledger.version} is not newer than {self.ledger.version}")
        if self.kv.open_branches():
            raise ValueError("cannot swap while branches are open")
        if kv.token_ids() != ledger.token_ids():
            raise ValueError("handed-over KV does not hold exactly the ledger's tokens")
        newer = self.ledger.increments_after(ledger.last_seq) + [i for i in self.pending if i.seq > ledger.last_seq]
        self._record_compaction(self.ledger, ledger)
        self.ledger, self.kv, self.pending = ledger, kv, newer
        promote = getattr(self.backend, "promote", None)  # serving engines: its lane becomes primary
        if promote is not None:
            promote(kv)
        self.counters.swaps += 1
        self._events.append(EngineEvent("swap", {"version": ledger.version, "pending": len(newer)}))
        return len(newer)

    def _record_compaction(self, old: StateLedger, new: StateLedger) -> None:
        """Count what ``new`` neither keeps nor represents, and append the version to the store."""
        kept = {i.seq for i in new.increments}
        gone = sum(1 for i in old.increments if i.seq <= new.last_seq and i.seq not in kept)
        dropped = gone - (new.memory.represented_seqs - old.memory.represented_seqs)
        self.counters.evicted_by_policy += dropped
        policy = self.compactor.policy if self.compactor is not None else "drop_oldest"
        self._persist(lambda s: s.append_compaction(new, policy, dropped))

    def _persist(self, write: Callable) -> None:
        if self.store is None:
            return
        try:
            write(self.store)
        except (OSError, ValueError) as e:  # durability is lost, serving goes on (counted)
            self.counters.store_errors += 1
            log.error("ledger store write failed: %s", e)

    def _open_store(self, store) -> None:
        """Begin a new on-disk ledger, or restore the state an existing one describes.

        A restored state that exceeds the budget (the process died with increments pending)
        keeps its newest increments pending, so the next append evicts as before the restart.
        """
        restored = store.restore()
        store.begin(self.ledger.prefix_ids, {"model": getattr(self.backend, "name", "")})
        if restored is None:
            return
        self.restored, ledger, over = restored, restored.ledger.copy(), []
        while ledger.increments and ledger.num_tokens > self.budget_tokens:
            over.insert(0, ledger.increments.pop())
        if over:
            ledger.last_seq = over[0].seq - 1
        self._rebuild(ledger)
        self.pending = over
        self.counters.increments_total = restored.increments
        self.counters.evicted_by_policy = restored.evicted_by_policy
        if self.memory is not None:
            self.memory.merge(restored.memory)
        if self.compactor is not None:
            self.compactor.seed(restored.evicted_memory, ledger.memory.covers_through_seq)
        release_free_memory()  # the decoded records of a long ledger are garbage now

    def reset(self) -> str:
        """A new, empty state: the pinned prefix only, one version newer (a reconciler build of
        the old state is then stale), sequence numbers going on. The on-disk ledger is kept under
        a new name and a new one begun (:meth:`LedgerStore.archive`). Open branches go with the
        old KV (end the answers first). Returns the archive's path ("" without a store)."""
        old = self.ledger
        archived = ""
        if self.store is not None:
            archived = str(self.store.archive())
            self.store.begin(old.prefix_ids, {"model": getattr(self.backend, "name", ""),
                                              "reset_after_version": old.version})
        self._rebuild(StateLedger(prefix_ids=old.prefix_ids, epoch_ns=-1, version=old.version + 1,
                                  last_seq=max(old.last_seq, self.last_seq)))
        self.pending = []
        if self.memory is not None:
            self.memory = type(self.memory)(self.memory.max_value_chars, self.memory.max_keys)
        if self.compactor is not None:
            self.compactor.forget()
        self._events.append(EngineEvent("reset", {"version": self.ledger.version, "archived": archived}))
        log.warning("state reset to version %d (old ledger kept as %s)", self.ledger.version, archived or "-")
        return archived

    def drain_events(self) -> list[EngineEvent]:
        out = list(self._events)
        self._events.clear()
        return out

    # -------------------------------------------------------------- queries
    def query_ids(self, question: str, lead_in: str = "", focus_lines: Sequence[str] | None = None) -> list[int]:
        return self.backend.encode(self.template.query(question, list(focus_lines or []), lead_in))

    def query(self, question: str, max_new_tokens: int = 48, lead_in: str = "",
              focus_lines: Sequence[str] | None = None) -> QueryResult:
        """Greedy answer from the state; pending increments ride along in the same forward."""
        t0 = time.perf_counter()
        q = self.query_ids(question, lead_in, focus_lines)
        state_ids = self._take_pending()
        with gate_of(self.backend).hot():  # a CPU rebuild pauses for the first token
            bid, logits = self.kv.append_and_open(state_ids, q)
        try:
            tok = int(logits.argmax())
            ttft = time.perf_counter() - t0
            out, eos = [], self.backend.eos_ids
            while tok not in eos and len(out) < max_new_tokens:
                out.append(tok)
                if len(out) == max_new_tokens:
                    break
                tok = int(self.kv.step({bid: tok})[bid].argmax())
        finally:
            self.kv.close_branch(bid)
        self.counters.last_ttft_ms = ttft * 1e3
        return QueryResult(self.backend.decode(out), tuple(out), ttft, time.perf_counter() - t0,
                           self.ledger.version, self.ledger.num_tokens)

    def score(self, question: str, candidates: Sequence[str], lead_in: str = "",
              focus_lines: Sequence[str] | None = None) -> list[float]:
        """Log-likelihood of each candidate answer (closed set), one batched pass."""
        self.flush()
        cands = [self.backend.encode(c if c.startswith(" ") else " " + c) for c in candidates]
        with gate_of(self.backend).hot():
            return self.kv.score(self.query_ids(question, lead_in, focus_lines), cands)

    def check_invariant(self) -> bool:
        """The KV cache holds exactly the ledger's tokens, in order."""
        return self.kv.token_ids() == self.ledger.token_ids() and self.kv.length == self.ledger.num_tokens
