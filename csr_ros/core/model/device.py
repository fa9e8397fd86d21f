"""Device resources of the calling thread: torch intra-op threads and CUDA streams.

The runtime, the reconciler and the nodes decide *which* thread gets how many cores and which
work runs on a side stream; this module is where that touches torch, so nothing outside
:mod:`csr_ros.core.model` imports it. Every function is a no-op (or returns None) where it does
not apply: torch not importable, a CPU device, ``n <= 0``.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager


def set_thread_budget(n: int) -> int:
    """Set the calling thread's torch intra-op threads to ``n`` (> 0). Returns the previous
    count when it changed, else 0 (also for ``n <= 0``: left as is)."""
    if n <= 0:
        return 0
    import torch

    prev = torch.get_num_threads()
    if prev == n:
        return 0
    torch.set_num_threads(n)
    return prev


def device_type(device: Any) -> str:
    """``"cuda"``, ``"cpu"``, ...: the type of a torch device or of its string form."""
    return getattr(device, "type", str(device).split(":")[0])


def side_stream(device: Any, priority: str = "default"):
    """A new CUDA stream on ``device`` with ``priority`` ``high`` | ``low`` | ``default``
    (:mod:`csr_ros.core.model.streams`); None when it is not a CUDA device."""
    if device_type(device) != "cuda":
        return None
    from csr_ros.core.model.streams import priority_stream

    return priority_stream(device, priority)


def on_stream(stream) -> ContextManager:
    """Run the block's kernels on ``stream`` (None: a null context). Work already queued on the
    device's default stream and on its hot stream (e.g. reads of a state that was just swapped
    out and freed) finishes before ``stream`` reuses that memory."""
    if stream is None:
        return contextlib.nullcontext()
    import torch

    from csr_ros.core.model.streams import hot_streams

    stream.wait_stream(torch.cuda.default_stream(stream.device))
    for hot in hot_streams(stream.device):
        stream.wait_stream(hot)
    return torch.cuda.stream(stream)


def join_stream(stream) -> None:
    """Make the calling thread's current stream wait for everything queued on ``stream`` (so a
    state built there is complete before it is read). None: nothing to do."""
    if stream is None:
        return
    import torch

    torch.cuda.current_stream(stream.device).wait_stream(stream)
