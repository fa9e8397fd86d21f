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
from dataclasses import dataclass, field
from typing import Callable, Sequence

from csr_ros.core.compaction import apply_plan, plan_drop_oldest
from csr_ros.core.ledger import Fact, Increment, LedgerError, StateLedger, total_tokens
from csr_ros.core.template import DEFAULT_SYSTEM

log = logging.getLogger("csr_ros.engine")


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
    last_ttft_ms: float = 0.0
    last_rebuild_ms: float = 0.0


class CsrEngine:
    """Cached state of one model. Not thread-safe: one owner thread calls everything here."""

    def __init__(self, backend, budget_tokens: int = 2048, high_water_frac: float = 0.75,
                 evict_frac: float = 0.5, system_prompt: str = "",
                 clock_ns: Callable[[], int] = time.monotonic_ns):
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
        self._events: list[EngineEvent] = []

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
        self.pending.append(inc)
        self.counters.increments_total += 1

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

    def _enforce_hard_limit(self, incoming: int) -> None:
        if self.ledger.num_tokens + incoming <= self.budget_tokens:
            return
        t0 = time.perf_counter()
        before = self.ledger.num_tokens
        plan = plan_drop_oldest(self.ledger, self.evict_frac)
        ledger = apply_plan(self.ledger, plan, self.template, self.backend.encode)
        self._rebuild(ledger)
        ms = (time.perf_counter() - t0) * 1e3
        self.counters.sync_evictions += 1
        self.counters.last_rebuild_ms = ms
        detail = {"tokens_before": before, "tokens_after": self.ledger.num_tokens,
                  "evicted": len(plan.evicted), "rebuild_ms": ms}
        self._events.append(EngineEvent("sync_eviction", detail))
        log.warning("synchronous eviction at the hard limit (%d tokens): %s", self.budget_tokens, detail)

    def _rebuild(self, ledger: StateLedger) -> None:
        kv = self.backend.new_state()
        kv.prefill(ledger.token_ids())
        self.ledger, self.kv = ledger, kv

    def install(self, ledger: StateLedger, kv) -> int:
        """Swap in a state built elsewhere (frame boundary only). Replays newer increments.

        Returns the number of increments replayed. Raises ValueError if it is not newer, or if
        the current KV has open branches (their KV would be lost).
        """
        if ledger.version <= self.ledger.version:
            raise ValueError(f"state version {ledger.version} is not newer than {self.ledger.version}")
        if self.kv.open_branches():
            raise ValueError("cannot swap while branches are open")
        missing = self.ledger.increments_after(ledger.last_seq)
        if missing:
            ids: list[int] = []
            for inc in missing:
                ledger.append(inc)
                ids.extend(inc.token_ids)
            kv.append(ids)
        if kv.token_ids() != ledger.token_ids():
            raise ValueError("handed-over KV does not hold exactly the ledger's tokens")
        self.ledger, self.kv = ledger, kv
        self.counters.swaps += 1
        self._events.append(EngineEvent("swap", {"version": ledger.version, "replayed": len(missing)}))
        return len(missing)

    def drain_events(self) -> list[EngineEvent]:
        out, self._events = self._events, []
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
        return self.kv.score(self.query_ids(question, lead_in, focus_lines), cands)

    def check_invariant(self) -> bool:
        """The KV cache holds exactly the ledger's tokens, in order."""
        return self.kv.token_ids() == self.ledger.token_ids() and self.kv.length == self.ledger.num_tokens
