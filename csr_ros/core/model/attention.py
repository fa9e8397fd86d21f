"""Mask-free attention for appends onto a KV cache.

When tokens are appended onto a cache, transformers materialises a boolean ``[q, kv]`` mask and
SDPA falls back to a slower kernel. Appending ``q`` tokens onto ``kv - q`` cached ones is exactly
a *lower-right* causal mask, which SDPA takes as a lazy bias
(:func:`torch.nn.attention.bias.causal_lower_right`) and never materialises; GQA is native
(``enable_gqa=True``), so the KV heads are not repeated. An explicit 4-D mask (branch decoding,
closed-set scoring) is passed through unchanged.

On CUDA, small appends (2..128 tokens, fp16/bf16) with GQA take :func:`packed_gqa_attention`:
every appended token sees the whole history, so a group's query heads are packed into one head's
rows there and the history's K/V is read once per KV head, not once per query head (4x fewer
bytes for Llama-3-8B at 120K tokens); the small causal part over the new tokens is merged by
log-sum-exp. ``scripts/gpu_check.sh`` checks and times it against plain SDPA before relying on it.
With :func:`set_split_kv` on, appends of up to 128 tokens onto a long cache take the split-KV
Triton kernel instead (:mod:`csr_ros.core.model.split_kv`: the sequence split across the SMs);
off by default until ``scripts/gpu_check.sh`` has checked and timed it on the GPU at hand.

Registered with transformers as ``"csr_sdpa"``; because no mask function is registered under that
name, transformers skips building the mask and passes ``attention_mask=None`` unless the caller
gave an explicit 4-D mask.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

ATTN_NAME = "csr_sdpa"
_REGISTERED = False
PACK_MAX_Q = 128  # appends of at most this many tokens pack GQA groups over the history
_PACK = {"on": True}
_SPLIT = {"on": False, "min_kv": 4096, "max_q": 128, "devices": ("cuda",)}
log = logging.getLogger(__name__)


def _lower_right_bias(q_len: int, kv_len: int):  # pragma: no cover - tiny wrapper
    from torch.nn.attention.bias import causal_lower_right

    return causal_lower_right(q_len, kv_len)


def csr_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
) -> torch.Tensor:
    """Attention of appended queries onto the whole cache.

    Args:
        query: ``[B, Hq, q, D]`` for the appended tokens.
        key, value: ``[B, Hkv, kv, D]``, cache plus the appended tokens (Hq % Hkv == 0).
        attention_mask: ``None`` for plain lower-right causal, else a 4-D mask
            ``[B or 1, 1, q, kv]`` (bool: True = attend; float: additive).
        scaling: softmax scale (default ``1/sqrt(D)``).

    Returns:
        ``[B, q, Hq, D]`` (the layout transformers' attention modules expect).
    """
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None and _SPLIT["on"] and q_len <= _SPLIT["max_q"] and kv_len >= _SPLIT["min_kv"]:
        out = _split_kv(query, key, value, scaling)
        if out is not None:
            return out
    gqa = query.shape[1] != key.shape[1]
    kwargs = {"scale": scaling, "enable_gqa": gqa}
    if (attention_mask is None and gqa and 1 < q_len <= PACK_MAX_Q and q_len < kv_len and _PACK["on"]
            and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)):
        return packed_gqa_attention(query, key, value, scaling)
    if attention_mask is not None:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, **kwargs)
    elif q_len == 1:
        out = F.scaled_dot_product_attention(query, key, value, **kwargs)
    elif q_len == kv_len:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, **kwargs)
    else:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=_lower_right_bias(q_len, kv_len), **kwargs
        )
    return out.transpose(1, 2).contiguous()


def _split_kv(query, key, value, scaling):
    """The split-KV kernel where it applies, else None; a kernel error turns it off (logged once)."""
    from csr_ros.core.model import split_kv

    if query.device.type not in _SPLIT["devices"] or not split_kv.supports(query, key):
        return None
    try:
        return split_kv.split_kv_attention(query, key, value, scaling)
    except Exception as err:  # noqa: BLE001 - no Triton, a compile error: SDPA from now on
        _SPLIT["on"] = False
        log.warning("split-KV attention failed (%r); using SDPA from now on", err)
        return None


def set_split_kv(on: bool, min_kv_tokens: int | None = None, max_q_tokens: int | None = None) -> None:
    """Turn the split-KV kernel for mask-free appends of at most ``max_q_tokens`` onto at least
    ``min_kv_tokens`` cached tokens (CUDA) on or off (benchmarks, ``scripts/gpu_check.sh``)."""
    _SPLIT["on"] = bool(on)
    if min_kv_tokens is not None:
        _SPLIT["min_kv"] = int(min_kv_tokens)
    if max_q_tokens is not None:
        _SPLIT["max_q"] = int(max_q_tokens)


def split_kv_enabled() -> bool:
    """Whether :func:`set_split_kv` turned the split-KV kernel on (and no kernel error turned it off)."""
    return bool(_SPLIT["on"])


def set_packed_gqa(on: bool) -> None:
    """Turn the packed-GQA path for small appends on CUDA on or off (benchmarks, diagnostics)."""
    _PACK["on"] = bool(on)


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool):
    """Attention and its log-sum-exp: ``[B, H, L, D]`` and ``[B, H, L]`` float32 (same heads in
    q, k, v; ``causal`` only for ``L == S``). CUDA: the flash kernel; elsewhere: math (tests)."""
    if q.is_cuda:
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        return res[0], res[1][..., : q.shape[2]].float()
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    return (torch.softmax(s, -1) @ v.float()).to(q.dtype), torch.logsumexp(s, -1)


def packed_gqa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         scaling: float | None = None) -> torch.Tensor:
    """Lower-right causal GQA attention of ``n`` appended tokens that reads the history's K/V once
    per KV head instead of once per query head.

    Every appended token sees the whole history, so the ``g`` query heads of a group are packed
    into ``g * n`` rows of ONE head over the history (no mask); the ``n x n`` causal part over the
    new tokens is separate, and the two are merged by their log-sum-exps.

    Args:
        query: ``[B, Hq, n, D]``; key, value: ``[B, Hkv, S, D]`` with the new tokens last.
    Returns:
        ``[B, n, Hq, D]``, like :func:`csr_attention`.
    """
    b, hq, n, d = query.shape
    hkv, past = key.shape[1], key.shape[2] - n
    g = hq // hkv
    scale = scaling if scaling is not None else d ** -0.5
    packed = query.reshape(b, hkv, g * n, d)  # query heads of KV head j are j*g .. j*g+g-1
    o1, l1 = attention_lse(packed, key[:, :, :past], value[:, :, :past], scale, False)
    o1, l1 = o1.reshape(b, hq, n, d), l1.reshape(b, hq, n)
    kn, vn = key[:, :, past:].repeat_interleave(g, 1), value[:, :, past:].repeat_interleave(g, 1)
    o2, l2 = attention_lse(query.contiguous(), kn, vn, scale, True)
    m = torch.maximum(l1, l2)
    w1, w2 = torch.exp(l1 - m)[..., None], torch.exp(l2 - m)[..., None]
    out = (o1.float() * w1 + o2.float() * w2) / (w1 + w2)
    return out.to(query.dtype).transpose(1, 2).contiguous()


def _hf_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Adapter with the signature of transformers' attention functions."""
    return csr_attention(query, key, value, attention_mask, scaling), None


def register() -> str:
    """Register ``csr_sdpa`` with transformers' AttentionInterface (idempotent); returns its name."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTN_NAME, _hf_forward)
        _REGISTERED = True
    return ATTN_NAME
