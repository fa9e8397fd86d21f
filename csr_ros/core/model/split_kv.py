"""Split-KV (flash-decoding style) attention for small appends onto a long cache.

A query of ``n`` tokens onto an ``S``-token cache has few rows, so one attention program per
(batch, head) reads the whole sequence alone and leaves most of the GPU's SMs idle. Split-KV
partitions the sequence into ``P`` splits, lets one program per (KV head, split, row tile) read
its split's K/V ONCE for all ``g * n`` query rows of the GQA group (query heads packed, as in
:func:`csr_ros.core.model.attention.packed_gqa_attention`), keeps per-split softmax statistics
(output normalised within the split and its log-sum-exp), and merges the splits by log-sum-exp:

    out = sum_p exp(lse_p - M) * o_p / sum_p exp(lse_p - M),   M = max_p lse_p

Causality is lower-right (the ``n`` new tokens are the cache's last rows): row ``t`` sees keys
``0 .. S - n + t``; a split with no visible key has ``lse = -inf`` and weight 0.

* :func:`split_kv_reference` - the same algorithm in plain torch (any device, float32 math):
  what the CPU tests check against SDPA, and the oracle for the kernel;
* :func:`split_kv_attention` - the Triton kernel (CUDA; Triton ships with CUDA builds of torch and
  is imported lazily: this module imports without it), per-split partials in float32, merged in
  torch. ``TRITON_INTERPRET=1`` runs it on CPU tensors (slow; correctness only).

Shapes: query ``[B, Hq, n, D]``; key, value ``[B, Hkv, S, D]`` (``Hq % Hkv == 0``, ``n <= S``);
outputs ``[B, n, Hq, D]`` in the query's dtype (the layout of ``csr_attention``).
"""

from __future__ import annotations

import os

import torch

MIN_SPLIT_TOKENS = 256
"""No split shorter than this (per-split overhead: one partial row block and its statistics)."""


def available() -> bool:
    """True when the Triton kernel can run here (Triton importable; CUDA or the interpreter)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken install
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def num_splits(seq_tokens: int, programs_per_split: int, target_programs: int = 528,
               min_split_tokens: int = MIN_SPLIT_TOKENS) -> int:
    """How many splits for ``seq_tokens``: about ``target_programs`` programs in all (4 per SM of
    an H100's 132), none shorter than ``min_split_tokens``; at least 1."""
    by_parallelism = max(1, target_programs // max(1, programs_per_split))
    by_length = max(1, seq_tokens // max(1, min_split_tokens))
    return max(1, min(by_parallelism, by_length))


def _pack(query: torch.Tensor, hkv: int) -> torch.Tensor:
    """``[B, Hq, n, D]`` -> ``[B, Hkv, g * n, D]``: row ``j * n + t`` = query head ``h * g + j``, token ``t``."""
    b, hq, n, d = query.shape
    return query.reshape(b, hkv, (hq // hkv) * n, d)


def _unpack(rows: torch.Tensor, hq: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, Hkv, g * n, D]`` -> ``[B, n, Hq, D]`` in ``dtype``."""
    b, _, _, d = rows.shape
    return rows.reshape(b, hq, n, d).transpose(1, 2).to(dtype).contiguous()


def merge_splits(o: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Merge per-split outputs ``o [B, Hkv, P, R, D]`` (normalised within their split) by their
    log-sum-exps ``lse [B, Hkv, P, R]`` (``-inf``: the split saw no key). Returns ``[B, Hkv, R, D]`` float32."""
    m = lse.max(dim=2, keepdim=True).values
    w = torch.exp(lse - m)  # 0 for empty splits; every row sees at least its own token
    return (o.float() * w[..., None]).sum(2) / w.sum(2)[..., None]


def split_kv_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None = None,
                       split_tokens: int = 4096) -> torch.Tensor:
    """Lower-right causal GQA attention computed split by split and merged by log-sum-exp (float32).

    Args:
        query: ``[B, Hq, n, D]`` (the appended tokens); key, value: ``[B, Hkv, S, D]``, new tokens last.
        scaling: softmax scale (default ``1/sqrt(D)``).
        split_tokens: keys per split (the last split may be shorter).
    Returns:
        ``[B, n, Hq, D]`` in the query's dtype.
    """
    b, hq, n, d = query.shape
    hkv, s_len = key.shape[1], key.shape[2]
    g, past = hq // hkv, s_len - n
    scale = scaling if scaling is not None else d ** -0.5
    q = _pack(query, hkv).float()
    last_key = past + torch.arange(g * n, device=query.device) % n  # row r sees keys <= past + r % n
    outs, lses = [], []
    for start in range(0, s_len, max(1, split_tokens)):
        k = key[:, :, start:start + split_tokens].float()
        v = value[:, :, start:start + split_tokens].float()
        idx = torch.arange(start, start + k.shape[2], device=query.device)
        s = (q @ k.transpose(-1, -2)) * scale
        s = s.masked_fill(idx[None, :] > last_key[:, None], float("-inf"))
        m = s.amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(s - m)
        denom = p.sum(-1, keepdim=True)
        outs.append((p @ v) / denom.clamp_min(1e-30))
        lses.append((m + torch.log(denom)).squeeze(-1))  # -inf where the split saw nothing
    merged = merge_splits(torch.stack(outs, 2), torch.stack(lses, 2))
    return _unpack(merged, hq, n, query.dtype)


_KERNEL = None
_VARYING = ["sqb", "sqh", "sqt", "skb", "skh", "sks", "svb", "svh", "svs", "sob", "soh", "sop", "sor",
            "slb", "slh", "slp", "past", "seq", "n_tok", "rows", "split", "group"]


def _kernel():
    """Compile-on-first-use Triton kernel (Triton imported here only)."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    # integer arguments change with every query length and cache size: no recompiling per value
    @triton.jit(do_not_specialize=_VARYING)
    def split_kv_fwd(Q, K, V, O, L, sqb, sqh, sqt, skb, skh, sks, svb, svh, svs,
                     sob, soh, sop, sor, slb, slh, slp, scale, past, seq, n_tok, rows, split, group,
                     HKV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr):
        pid_m, pid_s, pid_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        b, h = pid_bh // HKV, pid_bh % HKV
        r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = r < rows
        head, tok = h * group + r // n_tok, r % n_tok
        d = tl.arange(0, HEAD_D)
        q = tl.load(Q + b * sqb + head[:, None] * sqh + tok[:, None] * sqt + d[None, :],
                    mask=rmask[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
        start = pid_s * split
        end = tl.minimum(start + split, seq)
        for k0 in range(start, end, BLOCK_N):
            kidx = k0 + tl.arange(0, BLOCK_N)
            kmask = kidx < end
            k = tl.load(K + b * skb + h * skh + kidx[:, None] * sks + d[None, :], mask=kmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            ok = kmask[None, :] & (kidx[None, :] <= past + tok[:, None])
            s = tl.where(ok, s, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.where(ok, tl.exp(s - m_new[:, None]), 0.0)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + kidx[:, None] * svs + d[None, :], mask=kmask[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        seen = l_i > 0
        out = acc / tl.where(seen, l_i, 1.0)[:, None]
        lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(O + b * sob + h * soh + pid_s * sop + r[:, None] * sor + d[None, :], out, mask=rmask[:, None])
        tl.store(L + b * slb + h * slh + pid_s * slp + r, lse, mask=rmask)

    _KERNEL = (triton, split_kv_fwd)
    return _KERNEL


def split_kv_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None = None,
                       splits: int | None = None, block_m: int = 128, block_n: int = 64) -> torch.Tensor:
    """:func:`split_kv_reference` as a Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    ``splits``: number of sequence splits (default :func:`num_splits`). ``block_m``: query rows
    per program (a 32-token query of a 4-head GQA group is 128 rows: one tile, so each split's
    K/V is read once). ``D`` must be a power of two >= 16. Returns ``[B, n, Hq, D]``.
    """
    triton, kern = _kernel()
    b, hq, n, d = query.shape
    hkv, s_len = key.shape[1], key.shape[2]
    g = hq // hkv
    rows = g * n
    block_m = max(16, min(block_m, triton.next_power_of_2(rows)))
    tiles = triton.cdiv(rows, block_m)
    p = splits or num_splits(s_len, b * hkv * tiles)
    split = triton.cdiv(triton.cdiv(s_len, p), block_n) * block_n
    p = triton.cdiv(s_len, split)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    o = torch.empty(b, hkv, p, rows, d, device=q.device, dtype=torch.float32)
    lse = torch.empty(b, hkv, p, rows, device=q.device, dtype=torch.float32)
    scale = scaling if scaling is not None else d ** -0.5
    kern[(tiles, p, b * hkv)](
        q, k, v, o, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), o.stride(3),
        lse.stride(0), lse.stride(1), lse.stride(2), float(scale), s_len - n, s_len, n, rows, split, g,
        HKV=hkv, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_D=d, num_warps=8 if block_m * d >= 128 * 128 else 4)
    return _unpack(merge_splits(o, lse), hq, n, query.dtype)


def supports(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Shapes the kernel takes: head dim a power of two in [16, 256], ``n <= S``."""
    d = query.shape[-1]
    return 16 <= d <= 256 and d & (d - 1) == 0 and query.shape[2] <= key.shape[2]


def warm_up(hq: int, hkv: int, head_dim: int, device, dtype: torch.dtype) -> int:
    """Compile the kernel for every row-tile variant a model of this geometry uses (queries of
    1, 8, 16 and >= 32 tokens), so no query pays for a compile. Returns the variants run."""
    done = 0
    for n in (1, 8, 16, 32):
        q = torch.zeros(1, hq, n, head_dim, device=device, dtype=dtype)
        kv = torch.zeros(1, hkv, 512 + n, head_dim, device=device, dtype=dtype)
        split_kv_attention(q, kv, kv)
        done += 1
    return done
