"""``bench ttft --query-lengths``: query latency at lengths that are not a captured size.

Before bucketed graphs only 1, 32, 64 and 96 tokens ran on captured graphs; a 45-token query fell
to the eager forward (an 8B eager step is bound by ~12-16 ms of kernel launches from Python). For
every requested length ``L`` this times a query of ``L`` tokens onto the N-token state (a branch
opened and closed, the state left as it was) and the same for the reference size: the nearest
of the old captured sizes 32, 64, 96 (ties: the larger). ``ratio = ms(L) / ms(ref)``; the issue's
bar is ``ratio <= 1.3`` (no eager cliff). ``path`` says which runner path served the L query.
"""

from __future__ import annotations

from typing import Sequence

from csr_ros.cli.bench.common import summary_ms, timed

REFERENCE_SIZES = (32, 64, 96)


def reference_size(n: int, sizes: Sequence[int] = REFERENCE_SIZES) -> int:
    """The nearest of ``sizes`` to ``n`` (ties: the larger)."""
    return min(sizes, key=lambda s: (abs(s - n), -s))


def _time_query(be, kv, q: list[int], reps: int) -> tuple[dict, str]:
    """Median/min/max ms of ``open_branch(q)`` + which runner path served it."""
    runner = be.runner
    before = dict(runner.stats) if runner is not None else {}
    samples = []
    for r in range(reps + 1):  # the first is a warm-up (kernel selection, allocator)
        t, (bid, _) = timed(lambda: kv.open_branch(q), be.device)
        kv.close_branch(bid)
        if r:
            samples.append(t)
    path = "plain"
    if runner is not None:
        grew = [k for k in ("graph", "explicit", "declined") if runner.stats[k] > before.get(k, 0)]
        path = "+".join(grew) or "plain"
    return summary_ms(samples), path


def time_query_lengths(be, kv, stream: list[int], lengths: Sequence[int], reps: int) -> dict:
    """Query latency at each of ``lengths`` and at its reference size, onto ``kv`` (unchanged after)."""
    out: dict = {}
    cache: dict[int, tuple[dict, str]] = {}
    for n in lengths:
        ref = reference_size(n)
        for size in (n, ref):
            if size not in cache:
                cache[size] = _time_query(be, kv, list(stream[:size]), reps)
        (ms, path), (ref_ms, _) = cache[n], cache[ref]
        out[str(n)] = {"query_ms": ms["median"], "ref_size": ref, "ref_ms": ref_ms["median"],
                       "ratio": ms["median"] / max(ref_ms["median"], 1e-9), "path": path, "detail": ms}
    return out
