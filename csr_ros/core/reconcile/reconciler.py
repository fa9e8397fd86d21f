"""Asynchronous state reconciliation (ASR): compaction and re-prefill off the hot path.

Protocol (the inference side only ever does cheap, non-blocking calls at frame boundaries)::

    inference thread (frame boundary)              reconciler thread (run_once)
    ---------------------------------              ---------------------------------------------
    engine.needs_compaction -> request(snapshot)   plan the compaction (policy), build the new
    every accepted increment -> notify(inc)        ledger, prefill it into a FRESH KV state
                                                   (own torch thread budget; a side CUDA stream
                                                   on a GPU), replay notified increments onto it,
                                                   offer (ledger, kv) through the Handoff
    take_ready(version) -> engine.install(...)

:func:`reconcile_at_frame` does the inference side in one call. A failed or slow build never
blocks: the old state keeps serving (the engine's synchronous fallback runs only at the hard
limit), and requests are refused during an exponential backoff after a failure.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from csr_ros.core.model.device import join_stream, on_stream, set_thread_budget, side_stream
from csr_ros.core.model.streams import ChunkPacer, background, paced
from csr_ros.core.reconcile.handoff import Handoff
from csr_ros.core.reconcile.hot_path import enable_for, gate_of
from csr_ros.core.state.compaction import Compactor, Summarize, render_increments
from csr_ros.core.state.ledger import Increment, StateLedger

log = logging.getLogger("csr_ros.reconciler")
STATES = ("idle", "building", "ready", "failed")


class BuildCancelled(RuntimeError):
    """``should_stop`` asked the build to stop (not a failure)."""


MAX_NOTIFIED = 4096
"""Increments a running build may fall behind before it is cancelled (bounds memory)."""


@dataclass
class ReconcilerCounters:
    """Counters for CacheStatus / benchmarks. Times in milliseconds."""

    builds: int = 0  # states offered
    failures: int = 0
    cancelled: int = 0
    refused: int = 0  # requests refused (busy or backing off)
    replayed: int = 0  # increments replayed onto new states
    last_rebuild_ms: float = 0.0
    last_rebuild_cpu_ms: float = 0.0  # CPU time of the building thread (< wall: it was preempted)
    last_error: str = ""


class ModelSummarizer:
    """The ``summary`` policy's model call: greedy summary of the evicted increments.

    Runs on the caller's thread (the reconciler's) in a fresh KV state; never on the hot path.
    """

    INSTRUCTION = ("Summarize these robot observations in at most three short sentences: what was "
                   "seen, where, and the latest value of each changing quantity.")

    def __init__(self, backend, max_new_tokens: int = 64):
        self.backend, self.max_new_tokens = backend, max_new_tokens

    def prompt_ids(self, prior: str, evicted: Sequence[Increment], epoch_ns: int) -> list[int]:
        t = self.backend.template
        body = (f"\nEarlier summary: {prior}" if prior else "") + render_increments(evicted, epoch_ns, t)
        text = t.prefix("You condense robot observation logs.") + body + t.query(self.INSTRUCTION)
        return self.backend.bos_ids() + self.backend.encode(text)

    def __call__(self, prior: str, evicted: Sequence[Increment], epoch_ns: int) -> str:
        kv = getattr(self.backend, "new_build_state", self.backend.new_state)()  # a server's standby lane
        logits = kv.prefill(self.prompt_ids(prior, evicted, epoch_ns), 512).logits
        out: list[int] = []
        for _ in range(self.max_new_tokens):
            tok = int(logits[-1].argmax()) if hasattr(logits[-1], "argmax") else int(logits.argmax())
            if tok in self.backend.eos_ids:
                break
            out.append(tok)
            logits = kv.append([tok]).logits
        return self.backend.decode(out).strip()


def _side_stream(backend, device: str):
    """A second CUDA stream on the model's device (None on CPU). ``device`` must be empty/auto
    or name the model's own device: a separate device would need a model replica and a KV
    move, which this version does not do (refused with a clear message)."""
    dev = getattr(backend, "device", "cpu")
    dev_type = getattr(dev, "type", str(dev))
    if device not in ("", "auto") and str(device) != str(dev):
        raise ValueError(f"reconciler.device={device!r}: building on a device other than the model's "
                         f"({dev}) is not supported; leave it empty (a side stream on {dev})")
    return side_stream(dev, "low") if dev_type == "cuda" else None  # below the hot path's stream


class Reconciler:
    """Builds compacted states off the hot path and hands them over (see the module doc).

    Thread model: :meth:`request`, :meth:`notify`, :meth:`take_ready` are called by the inference
    side; :meth:`run_once` by one reconciler thread (a :class:`ReconcilerThread` or a ROS node's
    executor). All shared fields are guarded by one lock held only for bookkeeping.
    """

    def __init__(self, backend, policy: str = "entity_memory", evict_frac: float = 0.5, threads: int = 1,
                 clock_ns: Callable[[], int] = time.monotonic_ns, store=None, summarizer: Summarize | None = None,
                 *, compactor: Compactor | None = None, retry_backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                 device: str = "", chunk_tokens: int = 512, yield_to_hot_path: bool = False,
                 hot_path_threads: int = 0):
        self.backend, self.threads, self.clock_ns = backend, threads, clock_ns
        # CPU: the build pauses at half-layer checkpoints while a query runs, which may then use
        # hot_path_threads torch threads (csr_ros.core.reconcile.hot_path)
        # GPU: the build parks there too, so a query's Python launches never share the GIL with it
        self.yields_to_hot_path = (enable_for(backend, hot_threads=hot_path_threads, cuda=True)
                                   if yield_to_hot_path else False)
        if compactor is None:
            if policy == "summary" and summarizer is None:
                summarizer = ModelSummarizer(backend)
            compactor = Compactor(policy, evict_frac, backend.template, backend.encode, summarizer)
        self.compactor = compactor
        restored = store.restore() if store is not None else None
        if restored is not None:
            self.compactor.seed(restored.evicted_memory, restored.ledger.memory.covers_through_seq)
        self.retry_backoff_s, self.max_backoff_s = retry_backoff_s, max_backoff_s
        self.chunk_tokens = chunk_tokens
        self._stream = _side_stream(backend, device)
        self.handoff: Handoff[tuple[StateLedger, object]] = Handoff()
        self.counters = ReconcilerCounters()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._cancel = threading.Event()
        self._state = "idle"
        self.phase = "idle"  # what the build is doing: idle | planning | prefill | replay (diagnostics)
        self._snapshot: StateLedger | None = None
        self.target_version = -1  # version of the state being built (or last built)
        self._notified: list[Increment] = []
        self._fail_streak = 0
        self._retry_at_ns = 0

    # ------------------------------------------------------------ inference side
    @property
    def state(self) -> str:
        """``idle`` | ``building`` | ``ready`` | ``failed`` (CacheStatus.reconciler_state)."""
        return self._state

    @property
    def accepting(self) -> bool:
        """True when :meth:`request` would accept a snapshot now."""
        return self._state in ("idle", "failed") and self.clock_ns() >= self._retry_at_ns

    def request(self, snapshot: StateLedger) -> bool:
        """Ask for a compacted version of ``snapshot`` (non-blocking). False when busy/backing off."""
        with self._lock:
            if not self.accepting:
                self.counters.refused += 1
                return False
            self._snapshot = snapshot.copy()
            self.target_version = snapshot.version + 1
            self._notified = []
            self._cancel.clear()
            self._state = "building"
        self._wake.set()
        return True

    def notify(self, inc: Increment) -> None:
        """An increment was accepted after the snapshot (replayed onto the new state).

        A build that falls ``MAX_NOTIFIED`` increments behind is cancelled (it could only be
        replaced at once): the list stays bounded even when a build hangs. The engine keeps every
        increment itself; the next frame boundary asks for a fresh build.
        """
        with self._lock:
            if self._state != "building":
                return
            if len(self._notified) >= MAX_NOTIFIED:
                self._cancel.set()
                return
            self._notified.append(inc)

    def take_ready(self, current_version: int) -> tuple[StateLedger, object] | None:
        """The built ``(ledger, kv)`` if newer than ``current_version`` (frame boundary only)."""
        got = self.handoff.take_if_newer(current_version)
        with self._lock:
            if self._state == "ready" and self.handoff.peek_version() is None:
                self._state = "idle"
        if got is None:
            return None
        join_stream(self._stream)  # the inference stream must see the finished KV
        return got[1]

    def cancel(self) -> None:
        """Ask a running build to stop at its next chunk (e.g. the state moved on)."""
        self._cancel.set()

    # ------------------------------------------------------------ reconciler side
    def wait_for_request(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` until a request is pending (for a plain thread's loop)."""
        fired = self._wake.wait(timeout_s)
        self._wake.clear()
        return fired or self._snapshot is not None

    def _set_threads(self) -> None:
        if self.threads <= 0 or not hasattr(self.backend, "model"):
            return
        set_thread_budget(self.threads)  # this thread's own intra-op budget

    def run_once(self, should_stop: Callable[[], bool] | None = None) -> bool:
        """Do the pending build in the caller's thread; True when a new state was offered."""
        with self._lock:
            snap, self._snapshot = self._snapshot, None
        if snap is None:
            return False
        stop = (lambda: self._cancel.is_set() or should_stop()) if should_stop else self._cancel.is_set
        t0, cpu0 = time.perf_counter(), time.thread_time()
        try:
            self._set_threads()
            ledger, kv = self._build(snap, stop)
        except BuildCancelled:
            with self._lock:
                self.counters.cancelled += 1
                self._state, self._notified = "idle", []
            return False
        except Exception as e:  # noqa: BLE001 - any build failure: old state keeps serving
            self._failed(e)
            return False
        ms = (time.perf_counter() - t0) * 1e3
        with self._lock:
            self.handoff.offer(ledger.version, (ledger, kv))
            self.counters.builds += 1
            self.counters.last_rebuild_ms = ms
            self.counters.last_rebuild_cpu_ms = (time.thread_time() - cpu0) * 1e3
            self._fail_streak, self._retry_at_ns = 0, 0
            self._state, self._notified = "ready", []
        return True

    def abandon(self, e: Exception) -> None:
        """A failure that escaped :meth:`run_once` (a bug, an injected fault): treated like a
        failed build (state ``failed``, back-off, the old state keeps serving), so the
        reconciler never stays ``building`` with nobody building. Called by the thread guards."""
        self._failed(e)

    def _failed(self, e: Exception) -> None:
        with self._lock:
            self._fail_streak += 1
            backoff_s = min(self.max_backoff_s, self.retry_backoff_s * 2 ** (self._fail_streak - 1))
            self._retry_at_ns = self.clock_ns() + int(backoff_s * 1e9)
            self.counters.failures += 1
            self.counters.last_error = f"{type(e).__name__}: {e}"
            self._state, self._notified = "failed", []
        log.warning("state rebuild failed (%s); the old state keeps serving, retry in %.2f s",
                    self.counters.last_error, backoff_s)

    def _stream_ctx(self):
        return on_stream(self._stream)

    def _build(self, snap: StateLedger, stop: Callable[[], bool]) -> tuple[StateLedger, object]:
        try:
            with gate_of(self.backend).background(), background():  # no graph runner off the hot path
                return self._build_steps(snap, stop)
        finally:
            self.phase = "idle"

    def _build_steps(self, snap: StateLedger, stop: Callable[[], bool]) -> tuple[StateLedger, object]:
        """Plan, prefill the compacted prompt, replay what arrived meanwhile (phases for diagnostics)."""
        self.phase = "planning"
        ledger, _plan = self.compactor.compact(snap)  # may call the summariser (model)
        # a serving-engine backend warms the compacted prompt on its standby lane (promoted on install)
        kv = getattr(self.backend, "new_build_state", self.backend.new_state)()
        with self._stream_ctx():
            self.phase = "prefill"
            pace = ChunkPacer(self._stream, depth=1)  # GPU: at most one chunk queued ahead of a query
            if kv.prefill(ledger.token_ids(), self.chunk_tokens, paced(stop, pace)) is None:
                raise BuildCancelled()
            self.phase = "replay"
            self._replay(ledger, kv, stop)
            if self._stream is not None:
                self._stream.synchronize()
        return ledger, kv

    def _replay(self, ledger: StateLedger, kv, stop: Callable[[], bool], rounds: int = 8) -> None:
        """Append the increments notified during the build (one forward per round)."""
        for _ in range(rounds):
            with self._lock:
                incs = [i for i in self._notified if i.seq > ledger.last_seq]
                self._notified = []
            if not incs:
                return
            if stop():
                raise BuildCancelled()
            ids: list[int] = []
            for inc in incs:
                ledger.append(inc)
                ids.extend(inc.token_ids)
            kv.append(ids)
            self.counters.replayed += len(incs)


def reconcile_at_frame(engine, reconciler: Reconciler) -> str | None:
    """The inference side of ASR at a frame boundary: swap a ready state in, else request one.

    Returns ``"swap"``, ``"request"`` or None. Never blocks and never raises for a bad handover
    (it is logged and dropped; the engine keeps its state).
    """
    if reconciler.state == "building" and reconciler.target_version <= engine.ledger.version:
        reconciler.cancel()  # the engine moved on (synchronous fallback): the build is stale
    if not engine.kv.open_branches():
        got = reconciler.take_ready(engine.ledger.version)
        if got is not None:
            try:
                engine.install(*got)
                return "swap"
            except ValueError as e:
                reconciler.counters.last_error = f"install refused: {e}"
                log.error("handed-over state refused: %s", e)
    if engine.needs_compaction and reconciler.accepting:
        return "request" if reconciler.request(engine.snapshot()) else None
    return None


class ReconcilerThread:
    """Runs :meth:`Reconciler.run_once` in a plain daemon thread (non-ROS use: bench, CLI)."""

    def __init__(self, reconciler: Reconciler, poll_s: float = 0.05, name: str = "csr-reconciler"):
        self.reconciler, self.poll_s = reconciler, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> "ReconcilerThread":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.reconciler.wait_for_request(self.poll_s):
                    self.reconciler.run_once(self._stop.is_set)
            except Exception as e:  # noqa: BLE001 - the thread must outlive any failure
                self.reconciler.abandon(e)

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self.reconciler.cancel()
        self._thread.join(timeout_s)

    def __enter__(self) -> "ReconcilerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
