"""The mask-free attention equals SDPA with the explicit mask transformers would build."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from csr_ros.core.model.attention import csr_attention

pytestmark = pytest.mark.core


@pytest.mark.parametrize("q_len, kv_len, hq, hkv", [(1, 40, 4, 2), (7, 40, 4, 2), (40, 40, 4, 4), (5, 33, 6, 2)])
def test_matches_reference_with_explicit_mask(q_len, kv_len, hq, hkv):
    torch.manual_seed(q_len * 100 + kv_len)
    q = torch.randn(1, hq, q_len, 16)
    k, v = torch.randn(1, hkv, kv_len, 16), torch.randn(1, hkv, kv_len, 16)
    mask = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
    rep = hq // hkv
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=mask)
    got = csr_attention(q, k, v, None)
    assert got.shape == (1, q_len, hq, 16)
    assert torch.allclose(got, ref.transpose(1, 2), atol=1e-5)
    # an explicit 4-D mask is honoured as given
    custom = torch.rand(q_len, kv_len) > 0.3
    custom[:, 0] = True
    ref2 = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=custom)
    assert torch.allclose(csr_attention(q, k, v, custom[None, None]), ref2.transpose(1, 2), atol=1e-5)


@pytest.mark.parametrize("q_len, kv_len, hq, hkv", [(7, 40, 4, 2), (32, 300, 8, 2), (2, 3, 6, 3)])
def test_packed_gqa_equals_reference(q_len, kv_len, hq, hkv):
    """Packed GQA groups over the history + causal new part, merged by log-sum-exp (the CUDA small-
    append path; here its math twin) == SDPA with the explicit lower-right mask."""
    from csr_ros.core.model.attention import packed_gqa_attention

    torch.manual_seed(q_len + kv_len)
    q = torch.randn(1, hq, q_len, 16)
    k, v = torch.randn(1, hkv, kv_len, 16), torch.randn(1, hkv, kv_len, 16)
    mask = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
    rep = hq // hkv
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=mask)
    got = packed_gqa_attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, 0.25)  # HF's q layout
    assert torch.allclose(got, ref.transpose(1, 2), atol=1e-5)
    assert torch.allclose(csr_attention(q, k, v, None, 0.25), got, atol=1e-5)  # CPU keeps plain SDPA
