"""Mask-free attention for appends onto a KV cache.

When tokens are appended onto a cache, transformers materialises a boolean ``[q, kv]`` mask and
SDPA falls back to a slower kernel. Appending ``q`` tokens onto ``kv - q`` cached ones is exactly
a *lower-right* causal mask, which SDPA takes as a lazy bias
(:func:`torch.nn.attention.bias.causal_lower_right`) and never materialises; GQA is native
(``enable_gqa=True``), so the KV heads are not repeated. An explicit 4-D mask (branch decoding,
closed-set scoring) is passed through unchanged.

Registered with transformers as ``"csr_sdpa"``; because no mask function is registered under that
name, transformers skips building the mask and passes ``attention_mask=None`` unless the caller
gave an explicit 4-D mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTN_NAME = "csr_sdpa"
_REGISTERED = False


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
    gqa = query.shape[1] != key.shape[1]
    kwargs = {"scale": scaling, "enable_gqa": gqa}
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
