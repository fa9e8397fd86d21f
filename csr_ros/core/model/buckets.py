"""Bucketed token counts: every append length up to a bound runs on a captured forward.

A CUDA graph has fixed shapes, so :class:`csr_ros.core.model.cuda_graphs.StepRunner` captures one
graph set per *bucket* and runs an append of ``n`` tokens on the smallest bucket ``b >= n``: the
``b - n`` extra rows carry a pad token at the last valid position. Everything a captured segment
computes (embedding, norms, projections, rotary, MLP) is row-wise, so the pad rows never change a
valid row; between the segments (eager) only the ``n`` valid rows are written to the cache and
attend, so padding never enters the cache, the ledger or a logit, and the KV length after a
padded append is the exact one. On a CPU the same padded forward runs eagerly (tests prove it
equal to the exact forward).

Shapes: ids and positions ``[1, b]``; hidden ``[1, b, hidden]``; of q ``[1, Hq, b, D]`` and k, v
``[1, Hkv, b, D]`` only ``[..., :n, :]`` is used.
"""

from __future__ import annotations

from typing import Sequence

DEFAULT_MAX_TOKENS = 256
"""Largest append served by a captured graph (longer appends: the plain forward)."""

_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256,
           320, 384, 448, 512)
"""Candidate bucket sizes: steps of at most ~25 % from 16 tokens on (pad overhead <= ~25 % of rows,
which costs nothing while a small append is bound by reading the weights)."""


def bucket_sizes(max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[int, ...]:
    """Bucket sizes up to ``max_tokens`` (always including ``max_tokens`` itself, > 0)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return tuple(sorted({s for s in _LADDER if s < max_tokens} | {int(max_tokens)}))


def bucket_for(n: int, sizes: Sequence[int]) -> int | None:
    """The smallest of ``sizes`` (sorted ascending) holding ``n`` tokens, or None when none does."""
    if n < 1:
        return None
    for s in sizes:
        if s >= n:
            return int(s)
    return None


def pad_to(ids: Sequence[int], positions: Sequence[int], size: int, pad_id: int = 0) -> tuple[list[int], list[int]]:
    """``ids`` and ``positions`` padded to ``size`` rows: pad token ``pad_id`` at the last valid
    position (a position the model already handles, so rotary tables never overflow)."""
    ids, positions = [int(i) for i in ids], [int(p) for p in positions]
    if len(ids) != len(positions) or not ids:
        raise ValueError("ids and positions must be non-empty and of equal length")
    extra = size - len(ids)
    if extra < 0:
        raise ValueError(f"{len(ids)} tokens do not fit a {size}-token bucket")
    return ids + [pad_id] * extra, positions + [positions[-1]] * extra
