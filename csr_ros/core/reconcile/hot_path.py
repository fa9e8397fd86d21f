"""Hot-path priority on a shared CPU: a background rebuild pauses while a query runs.

On a GPU the reconciler builds on a second CUDA stream and the hot path does not feel it. On a
small CPU (2 cores: one torch thread for inference, one for the reconciler) the two forwards still
share the interpreter lock, caches and memory bandwidth: measured with SmolLM2 on 2 cores, a
32-token query took 227 ms p50 / 281 ms p99 alone and 284 / 427 ms while a rebuild ran beside it.

:class:`HotPathGate` removes that overlap. The hot path (a question's first token, closed-set
scoring, a frame's policy and language step) enters :meth:`HotPathGate.hot`; a background thread
registered with :meth:`HotPathGate.background` waits at every checkpoint of its own forwards
(forward pre-hooks, :meth:`HotPathGate.attach`, :func:`checkpoint_modules`) while any hot
section is open, and the
hot section takes the cores the paused build leaves idle (``hot_threads``). (Waiting at the start
of a hot section for a running build to park was tried and made both sides slower: a build is
often between forwards, where it never parks.) A layer
of a 512-token rebuild chunk on SmolLM2 is ~25 ms, so a query waits at most about that long for
the core it needs. A wait is bounded (``max_wait_s``; after a cut wait the background runs
unhindered for as long again) so that a busy hot path slows a rebuild by at most half but never
stalls it, and threads that are not registered never wait (the hooks cost one set
lookup per layer).

Opt-in (``reconciler.yield_to_hot_path``); ``csr-ros bench evict`` runs with it by default
(``--hot-threads 0``). Checkpoints sit before each layer's attention and before its MLP, so with
256-token rebuild chunks a query meets at most ~15 ms of a running build. Measured with SmolLM2
on 2 cores (budget 1024, 3 increments/s, 1 query/s, entity memory evicting 80 %): over 100
cycles query TTFT p99/p50 1.23 with the gate (see the README for the same run without it). The price is rebuild
time (~2.3 s instead of ~2 s), which must stay inside the budget's headroom at the increment
rate: at 1.5 queries/s and 60 % evicted, paused rebuilds took 3-4 s, replay chased new
increments, and most cycles ended in a synchronous eviction. It is off in the node's default
configuration because a frame (policy + language) is a hot section at the control rate, which
leaves a paused build little time; turn it on where queries are sparse or the headroom long.

One gate per model (:func:`gate_of`), shared by the engine (hot side) and the reconciler
(background side). No rclpy, no transformers import: hooks go on any ``torch.nn.Module`` list.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from csr_ros.core.model.device import set_thread_budget


@dataclass
class GateCounters:
    """What the gate did (diagnostics; bench JSON)."""

    waits: int = 0  # checkpoints at which a background thread waited
    waited_s: float = 0.0  # total time background threads waited, s
    timeouts: int = 0  # waits cut at max_wait_s (the hot path stayed busy)


class HotPathGate:
    """Hot sections pause registered background threads at their checkpoints (see module doc)."""

    def __init__(self, max_wait_s: float = 1.0, hot_threads: int = 0):
        self.max_wait_s = max_wait_s
        self.hot_threads = hot_threads  # torch threads of a hot section (0: unchanged)
        self._local = threading.local()
        self.enabled = False
        self.counters = GateCounters()
        self._lock = threading.Lock()
        self._busy = 0
        self._idle = threading.Event()
        self._idle.set()
        self._background: set[int] = set()
        self._hooks: list = []
        self._free_until = 0.0  # after a cut wait, background threads run unhindered until then

    @contextlib.contextmanager
    def hot(self) -> Iterator[None]:
        """A hot-path section (re-entrant, any number of threads)."""
        if not self.enabled:
            yield
            return
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        with self._lock:
            self._busy += 1
            self._idle.clear()
        prev = set_thread_budget(self.hot_threads) if depth == 0 else 0
        try:
            yield
        finally:
            if prev:
                set_thread_budget(prev)
            self._local.depth = depth
            with self._lock:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        """Mark the calling thread as one that yields at checkpoints while inside."""
        me = threading.get_ident()
        with self._lock:
            self._background.add(me)
        try:
            yield
        finally:
            with self._lock:
                self._background.discard(me)

    def checkpoint(self) -> None:
        """Called at layer boundaries by every thread; only background threads ever wait."""
        if self._idle.is_set() or threading.get_ident() not in self._background:
            return
        t0 = time.monotonic()
        if t0 < self._free_until:
            return
        if not self._idle.wait(self.max_wait_s):
            self.counters.timeouts += 1
            # fairness: a hot path that never pauses gets at most half of the background's time
            self._free_until = time.monotonic() + self.max_wait_s
        self.counters.waits += 1
        self.counters.waited_s += time.monotonic() - t0

    def attach(self, layers) -> int:
        """Register a forward pre-hook calling :meth:`checkpoint` on each module of ``layers``
        (the decoder layers). Returns the number of hooks; idempotent."""
        if self._hooks:
            return len(self._hooks)
        for layer in layers:
            self._hooks.append(layer.register_forward_pre_hook(lambda _m, _a: self.checkpoint()))
        return len(self._hooks)

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def decoder_layers(model) -> list:
    """The decoder layers of a transformers causal LM (``model.model.layers`` and the like), or []."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if obj is not None:
            return list(obj)
    return []


def checkpoint_modules(layers) -> list:
    """Where a background forward may pause: before each layer's attention and before its MLP
    (half a layer: a query waits at most that long), or before the whole layer when it has neither."""
    out = []
    for layer in layers:
        parts = [p for p in (getattr(layer, "self_attn", None), getattr(layer, "mlp", None)) if p is not None]
        out.extend(parts or [layer])
    return out


def gate_of(backend) -> HotPathGate:
    """The one gate of ``backend``'s model (created on first use, disabled until enabled)."""
    gate = getattr(backend, "_hot_path_gate", None)
    if gate is None:
        gate = HotPathGate()
        try:
            backend._hot_path_gate = gate
        except AttributeError:  # a backend with __slots__: a private gate per call, never enabled
            pass
    return gate


def enable_for(backend, max_wait_s: float = 1.0, hot_threads: int = 0, cuda: bool = False) -> bool:
    """Turn the gate of a CPU model on (hooks on its decoder layers). ``hot_threads`` > 0: a hot
    section runs with that many torch threads (the cores a paused rebuild leaves idle). A CUDA
    model keeps it off unless ``cuda`` (there the parked build stops launching kernels from
    Python, so the hot path's launches do not share the GIL with it); a backend without a local
    model (fake, serving engine) keeps it off. Returns whether it is on."""
    model = getattr(backend, "model", None)
    device = str(getattr(backend, "device", "cpu"))
    if model is None or (device.startswith("cuda") and not cuda):
        return False
    layers = decoder_layers(model)
    if not layers:
        return False
    gate = gate_of(backend)
    gate.max_wait_s, gate.hot_threads = max_wait_s, hot_threads
    gate.attach(checkpoint_modules(layers))
    gate.enabled = True
    return True
