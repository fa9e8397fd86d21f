"""Mask-free attention of a few appended tokens on the CPU, reading the cache once per KV head.

torch's CPU flash kernel for ``q_len = 1`` spends ~150 us per SmolLM2 layer at 512 cached
tokens (measured, one thread): it walks the history once per *query* head. Here the ``g`` query
heads of a GQA group are packed into the rows of one matrix product per KV head (two batched
GEMMs: scores, then the weighted values), so each cached K/V row is read once. The causal part
(appended token ``t`` sees the history and new tokens ``0..t``) is a mask on the last ``n``
columns of the scores only. Softmax in fp32. Same result as SDPA with a lower-right causal mask
up to fp32 rounding (test/core/test_cpu_attention.py).

Used by :func:`csr_ros.core.model.attention.csr_attention` for CPU appends of at most
:data:`MAX_Q` tokens without an explicit mask.
"""

from __future__ import annotations

import torch

MAX_Q = 128


def accepts(query: torch.Tensor, key: torch.Tensor, attention_mask) -> bool:
    """True for a CPU append of 1..MAX_Q tokens onto a longer cache, no explicit mask."""
    q_len, kv_len = query.shape[2], key.shape[2]
    return (attention_mask is None and not query.is_cuda and q_len <= MAX_Q and q_len < kv_len
            and query.shape[1] % key.shape[1] == 0)


def packed_cpu_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         scaling: float | None = None) -> torch.Tensor:
    """Lower-right causal attention of ``n`` appended tokens.

    Args:
        query: ``[B, Hq, n, D]``; key, value: ``[B, Hkv, S, D]`` with the ``n`` new tokens last.
        scaling: softmax scale (default ``1/sqrt(D)``).
    Returns:
        ``[B, n, Hq, D]`` (the layout transformers' attention modules expect).
    """
    b, hq, n, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
    g = hq // hkv
    scale = scaling if scaling is not None else d ** -0.5
    packed = query.reshape(b, hkv, g * n, d)  # rows: head j*g+r, token t -> row r*n + t
    scores = torch.matmul(packed, key.transpose(-1, -2)).float() * scale  # [B, Hkv, g*n, S]
    if n > 1:
        t = torch.arange(n, device=query.device)
        hidden = t[None, :] > t[:, None]  # [n, n]: new token t must not see new tokens after it
        tail = scores[..., s - n:].view(b, hkv, g, n, n)
        tail.masked_fill_(hidden, float("-inf"))
    probs = torch.softmax(scores, -1).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, Hkv, g*n, D]
    return out.reshape(b, hq, n, d).transpose(1, 2).contiguous()
