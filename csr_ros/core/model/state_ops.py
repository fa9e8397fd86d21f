"""What every KV-state implementation shares, torch-free: chunked prefill and truncate checks.

The state interface (``append``, ``prefill``, ``truncate``, branches, ``step``, ``score`` ...) has
several implementations: :class:`csr_ros.core.model.kv_state.KVState` (in-process tensors),
:class:`csr_ros.core.model.backends.remote_state.RemoteState` (a serving engine's prefix cache)
and :class:`csr_ros.core.model.backends.fake.FakeState` (tests). The parts that are the same
logic in all of them live here once.
"""

from __future__ import annotations

from typing import Callable, Sequence


class ChunkedPrefill:
    """Mixin: :meth:`prefill` as a loop of :meth:`_prefill_chunk` (default: ``self.append``)."""

    def _prefill_chunk(self, ids: Sequence[int]):
        return self.append(ids)

    def prefill(self, ids: Sequence[int], chunk_tokens: int = 1024,
                should_stop: Callable[[], bool] | None = None):
        """Append a long token list in chunks of ``chunk_tokens`` (bounded activation memory).

        ``should_stop()`` is polled between chunks; when it returns True the prefill stops early
        (the state then holds only the chunks done so far) and None is returned; else the last
        chunk's output."""
        out, step = None, max(1, chunk_tokens)
        for start in range(0, len(ids), step):
            if should_stop is not None and should_stop():
                return None
            out = self._prefill_chunk(ids[start:start + step])
        return out


def check_truncate(state_tokens: int, length: int, open_branches: int) -> None:
    """Raise unless a state of ``state_tokens`` may be cut back to ``length`` tokens now."""
    if open_branches:
        raise RuntimeError("truncate() with open branches would corrupt their horizon")
    if not 0 <= length <= state_tokens:
        raise ValueError(f"cannot truncate a {state_tokens}-token state to {length}")
