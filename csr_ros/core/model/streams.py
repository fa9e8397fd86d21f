"""CUDA stream priorities and rebuild pacing: the hot path ahead of the reconciler on one GPU.

* :func:`use_hot_stream` makes a HIGH-priority stream the calling thread's current stream (the
  inference / frame thread): its kernels' blocks are scheduled before queued blocks of lower
  priority streams whenever SMs free up;
* :func:`priority_stream` makes the reconciler's LOW-priority side stream (CUDA's default
  priority is already the lowest, so "low" = the default stream's level, below the hot path);
* :class:`ChunkPacer` bounds the rebuild's queued GPU work: after each prefill chunk it records an
  event and waits (GIL released) until no more than ``depth`` chunks are in flight, so a query
  never queues behind more than one rebuild chunk (``depth=1``);
* :func:`background` marks the calling thread as a background builder for the duration of a
  block (the graph runner serves only the hot path: a rebuild never holds its lock or makes the
  hot stream wait for its static buffers).

On a CPU (or without CUDA) every helper falls back cleanly: streams are None, pacing and stream
switches are no-ops, and :func:`background` still marks the thread.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)
PRIORITIES = ("high", "low", "default")
_HOT: dict[str, Any] = {}  # device string -> the shared high-priority stream
_LOCAL = threading.local()


def _is_cuda(device: Any) -> bool:
    return getattr(device, "type", str(device).split(":")[0]) == "cuda"


def priority_value(kind: str, priority_range: tuple[int, int]) -> int:
    """CUDA priority number for ``kind`` given ``torch.cuda.Stream.priority_range()`` =
    ``(least, greatest)`` (lower numbers are higher priorities, e.g. ``(0, -5)``)."""
    if kind not in PRIORITIES:
        raise ValueError(f"stream priority {kind!r} not in {PRIORITIES}")
    least, greatest = priority_range
    return {"high": greatest, "low": least, "default": 0}[kind]


def _key(device: Any) -> str:
    """``cuda:N`` for a CUDA device given as ``cuda``, ``cuda:N`` or a torch.device (the index
    defaults to the current device, so every spelling of one GPU finds the same hot stream)."""
    import torch

    d = torch.device(device)
    return str(d if d.index is not None else torch.device("cuda", torch.cuda.current_device()))


def priority_stream(device: Any, kind: str = "default"):
    """A new CUDA stream on ``device`` with priority ``kind`` (None off CUDA). A torch without
    stream priorities gets a plain stream (logged)."""
    if not _is_cuda(device):
        return None
    import torch

    prio = priority_value(kind, torch.cuda.Stream.priority_range())
    try:
        return torch.cuda.Stream(device=device, priority=prio)
    except (TypeError, RuntimeError) as err:
        log.warning("CUDA stream priority %s unavailable (%s); using a default-priority stream", kind, err)
        return torch.cuda.Stream(device=device)


def use_hot_stream(device: Any):
    """Make the device's shared HIGH-priority stream the calling thread's current stream (after
    it waited for the work already queued on the thread's previous stream). Returns the stream,
    or None off CUDA (nothing changes)."""
    if not _is_cuda(device):
        return None
    import torch

    key = _key(device)
    stream = _HOT.get(key)
    if stream is None:
        stream = _HOT[key] = priority_stream(device, "high")
    stream.wait_stream(torch.cuda.current_stream(device))
    torch.cuda.set_stream(stream)
    return stream


def hot_streams(device: Any) -> list:
    """The hot streams made on ``device`` so far (what a side stream must wait for before it
    reuses memory the hot path may still read)."""
    if not _is_cuda(device):
        return []
    stream = _HOT.get(_key(device))
    return [] if stream is None else [stream]


class ChunkPacer:
    """Keeps at most ``depth`` rebuild chunks in flight on ``stream`` (None: no-op)."""

    def __init__(self, stream, depth: int = 1):
        self.stream, self.depth = stream, max(1, int(depth))
        self._events: collections.deque = collections.deque()
        self.waits = 0  # chunk boundaries at which the builder waited for the GPU

    def after_chunk(self) -> None:
        """Mark the end of the chunk just queued; wait until at most ``depth - 1`` earlier ones remain."""
        if self.stream is None:
            return
        import torch

        ev = torch.cuda.Event()
        ev.record(self.stream)
        self._events.append(ev)
        while len(self._events) >= self.depth:
            self._events.popleft().synchronize()  # blocks this thread only; the GIL is released
            self.waits += 1


def paced(stop: Callable[[], bool], pacer: ChunkPacer | None) -> Callable[[], bool]:
    """``stop`` for a chunked prefill that first paces the chunk just queued (see :class:`ChunkPacer`)."""
    if pacer is None or pacer.stream is None:
        return stop

    def should_stop() -> bool:
        pacer.after_chunk()
        return stop()

    return should_stop


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Mark the calling thread as a background builder inside the block (re-entrant)."""
    depth = getattr(_LOCAL, "background", 0)
    _LOCAL.background = depth + 1
    try:
        yield
    finally:
        _LOCAL.background = depth


def in_background() -> bool:
    """True inside :func:`background` on this thread."""
    return getattr(_LOCAL, "background", 0) > 0
