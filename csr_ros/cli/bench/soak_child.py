"""The graph process of ``csr-ros bench soak``: the real graph (``csr_ros.nodes.bringup.run``)
with faults injected at scheduled wall-clock times. Not a user entry point: a soak-only harness.

    python -m csr_ros.cli.bench.soak_child SPEC.json --ros-args --params-file F -p k:=v ...

Spec (a file the soak writes once the graph is up; read at the first fault opportunity after it
exists): ``{"faults_file": path, "decode": [t...], "oom": [t...], "reconciler": [t...]}`` with
``time.time()`` instants. After each instant (that falls in this process's life) the FIRST
opportunity injects one fault, and a JSON line ``{"kind", "t"}`` is appended to ``faults_file``:

* ``decode``: a language decoding step (``step``/``multi_step`` on the model worker thread)
  raises ``RuntimeError`` (a model error during decoding);
* ``oom``: a compaction build's prefill (on the reconciler thread) raises ``MemoryError``
  (an out-of-memory during a rebuild);
* ``reconciler``: handing a finished build over raises ``RuntimeError`` inside ``run_once``, so
  the exception escapes into the reconciler node's executor thread (a bug in that thread).

Nothing is injected into the code itself: the wrappers are installed at run time, here only.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from pathlib import Path
from typing import Callable

RECONCILER_THREAD = "csr-reconciler-executor"
WORKER_THREAD = "csr-model-worker"


class FaultSchedule:
    """Due faults per kind (wall-clock instants); :meth:`take` consumes one that is due."""

    KINDS = ("decode", "oom", "reconciler")

    def __init__(self, spec_path: str, clock_s: Callable[[], float] = time.time):
        self.clock_s, self.spec_path, self.started = clock_s, Path(spec_path), clock_s()
        self.path = ""
        self._due: dict[str, list[float]] | None = None
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {k: 0 for k in self.KINDS}

    def _load(self) -> bool:
        """Read the spec once it exists; faults due before this process started are skipped."""
        if self._due is None and self.spec_path.exists():
            spec = json.loads(self.spec_path.read_text())
            self.path = spec.get("faults_file", "")
            self._due = {k: sorted(t for t in spec.get(k, []) if t >= self.started) for k in self.KINDS}
        return self._due is not None

    def take(self, kind: str) -> bool:
        """True (and the fault is recorded) when a fault of ``kind`` is due now."""
        now = self.clock_s()
        with self._lock:
            if not self._load():
                return False
            due = self._due[kind]
            if not due or due[0] > now:
                return False
            while due and due[0] <= now:  # several due at once: one fault
                due.pop(0)
            self.injected[kind] += 1
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"kind": kind, "t": now}) + "\n")
        return True


def _on_thread(name: str) -> bool:
    return threading.current_thread().name == name


def wrap_state(state, faults: FaultSchedule):
    """Install the decode and OOM faults on one KV state (instance attributes only)."""
    def failing(method, kind: str, thread: str, error: Callable[[], BaseException]):
        @functools.wraps(method)
        def call(*a, **kw):
            if _on_thread(thread) and faults.take(kind):
                raise error()
            return method(*a, **kw)
        return call

    decode_error = lambda: RuntimeError("injected model failure during decoding (soak)")  # noqa: E731
    for name in ("step", "multi_step"):
        if hasattr(state, name):
            setattr(state, name, failing(getattr(state, name), "decode", WORKER_THREAD, decode_error))
    state.prefill = failing(state.prefill, "oom", RECONCILER_THREAD,
                            lambda: MemoryError("injected out of memory during a rebuild (soak)"))
    return state


def install(spec_path: str) -> FaultSchedule:
    """Wrap ``bringup.build_backend`` (every state it makes gets the faults) and
    ``Handoff.offer`` (the reconciler fault)."""
    from csr_ros.core.reconcile import handoff
    from csr_ros.nodes import bringup

    faults = FaultSchedule(spec_path)
    build_backend = bringup.build_backend

    def faulty_backend(cfg):
        backend = build_backend(cfg)
        new_state = backend.new_state
        backend.new_state = lambda: wrap_state(new_state(), faults)
        return backend

    bringup.build_backend = faulty_backend
    offer = handoff.Handoff.offer

    def faulty_offer(self, version, payload):
        if _on_thread(RECONCILER_THREAD) and faults.take("reconciler"):
            raise RuntimeError("injected exception in the reconciler thread (soak)")
        return offer(self, version, payload)

    handoff.Handoff.offer = faulty_offer
    return faults


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    install(args[0])
    from csr_ros.nodes.bringup import run

    return run(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
