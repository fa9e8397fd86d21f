"""CPU packed attention for small mask-free appends == SDPA with a lower-right causal mask. <1 s."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from csr_ros.core.model import attention, cpu_attention

pytestmark = pytest.mark.core


@pytest.mark.parametrize("n,past,hq,hkv", [(1, 40, 4, 2), (7, 33, 6, 2), (32, 100, 9, 3), (5, 20, 4, 4)])
def test_packed_equals_sdpa_lower_right(n, past, hq, hkv):
    g = torch.Generator().manual_seed(n * 100 + past)
    q = torch.randn(1, hq, n, 16, generator=g)
    k, v = torch.randn(1, hkv, past + n, 16, generator=g), torch.randn(1, hkv, past + n, 16, generator=g)
    assert cpu_attention.accepts(q, k, None)
    got = cpu_attention.packed_cpu_attention(q, k, v, 0.3)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n, past + n), scale=0.3,
                                         enable_gqa=hq != hkv).transpose(1, 2)
    assert got.shape == (1, n, hq, 16)
    assert torch.allclose(got, ref, atol=1e-5)


def test_declines_masks_prefills_and_large_appends():
    q, k = torch.zeros(1, 4, 8, 16), torch.zeros(1, 2, 8, 16)
    assert not cpu_attention.accepts(q, k, None)  # a prefill (q == kv): SDPA's causal kernel
    assert not cpu_attention.accepts(q, torch.zeros(1, 2, 20, 16), torch.ones(1, 1, 8, 20, dtype=torch.bool))
    big = torch.zeros(1, 4, cpu_attention.MAX_Q + 1, 16)
    assert not cpu_attention.accepts(big, torch.zeros(1, 2, 400, 16), None)


def test_csr_attention_switch():
    q, k, v = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16)
    on = attention.csr_attention(q, k, v, None, 0.25)
    attention.set_packed_gqa(True, cpu=False)
    try:
        off = attention.csr_attention(q, k, v, None, 0.25)
    finally:
        attention.set_packed_gqa(True, cpu=True)
    assert torch.allclose(on, off, atol=1e-5)
