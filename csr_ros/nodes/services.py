"""The inference node's management services (typed, csr_ros/srv):

  csr/get_entity_memory  csr_ros/srv/GetEntityMemory  all keys, or one entity's / one key's
  csr/compact            csr_ros/srv/CompactState     compact the cached state now
  csr/reset_state        csr_ros/srv/ResetState       a new empty state; the old on-disk ledger kept
  csr/get_state_text     csr_ros/srv/GetStateText     the text the model sees (bounded)

Each runs its work on the model worker (the engine's only thread) through the scheduler's
worker calls and waits for it here, in the ``management`` callback group (mutually exclusive,
its own executor thread: no perception or status callback waits behind it). A request while
the node is not configured gets ``success: false`` and the reason.
"""

from __future__ import annotations

from builtin_interfaces.msg import Time

from csr_ros.core.runtime import management
from csr_ros.msg import MemoryEntry
from csr_ros.srv import CompactState, GetEntityMemory, GetStateText, ResetState

CALL_TIMEOUT_S = 60.0  # longest wait for the model worker (a compaction re-prefills the state), s


def _time(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


class ManagementServices:
    """The four services of node ``csr`` (see the module doc)."""

    def __init__(self, node, callback_group):
        self.node = node
        spec = [(GetEntityMemory, "csr/get_entity_memory", self._memory),
                (CompactState, "csr/compact", self._compact),
                (ResetState, "csr/reset_state", self._reset),
                (GetStateText, "csr/get_state_text", self._state_text)]
        self.services = [node.create_service(t, name, self._guarded(cb), callback_group=callback_group)
                         for t, name, cb in spec]

    def _guarded(self, fn):
        """Run ``fn(scheduler, request, response)`` on the worker; any failure -> success false."""
        def callback(request, response):
            sched = self.node.scheduler
            if sched is None or not hasattr(sched, "calls"):
                response.success, response.message = False, f"node csr is {self.node.lifecycle_state}, not configured"
                return response
            try:
                fut = sched.calls.submit(lambda: fn(sched, request, response))
                fut.result(timeout=CALL_TIMEOUT_S)
                response.success = True
            except Exception as e:  # noqa: BLE001 - never raise into the executor
                response.success, response.message = False, f"{type(e).__name__}: {e}"
            return response
        return callback

    @staticmethod
    def _memory(sched, request, response) -> None:
        entries, response.increments = management.memory_entries(sched, request.entity)
        response.entries = [MemoryEntry(key=e.key, first_value=e.first.value, first_stamp=_time(e.first.stamp_ns),
                                        last_value=e.last.value, last_stamp=_time(e.last.stamp_ns), count=e.count)
                            for e in entries]
        response.message = f"{len(entries)} keys"

    @staticmethod
    def _compact(sched, request, response) -> None:
        c = management.compact(sched)
        response.version_before, response.version_after = c.version_before, c.version_after
        response.tokens_before, response.tokens_after = c.tokens_before, c.tokens_after
        if not c.done:
            raise RuntimeError("nothing to evict (the state holds no evictable increment)")
        response.message = f"compacted: {c.tokens_before} -> {c.tokens_after} tokens"

    @staticmethod
    def _reset(sched, request, response) -> None:
        response.archived_ledger, response.state_version = management.reset(sched)
        response.message = "state reset" + (f"; old ledger kept as {response.archived_ledger}"
                                            if response.archived_ledger else "")

    @staticmethod
    def _state_text(sched, request, response) -> None:
        text, truncated, version, tokens = management.state_text(sched, request.max_chars)
        response.text, response.truncated, response.state_version, response.state_tokens = text, truncated, version, tokens
