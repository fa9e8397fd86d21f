"""Split-KV attention (CPU, tiny shapes, fp32): the pure-torch split/merge reference equals SDPA for
lower-right causal GQA appends; the Triton kernel equals the reference where Triton runs (CUDA, or
``TRITON_INTERPRET=1`` with triton installed; skipped otherwise); csr_attention routes to it only
when switched on and falls back on a kernel error. < 1 s."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from csr_ros.core.model import attention, split_kv

pytestmark = pytest.mark.core
ATOL = 1e-5

# (Hq, Hkv, n new tokens, S cached incl. new, D, split tokens)
CASES = [(4, 2, 1, 50, 16, 16), (4, 2, 5, 70, 16, 16), (8, 2, 7, 300, 32, 64), (4, 4, 3, 3, 16, 2),
         (6, 2, 4, 37, 16, 7), (4, 1, 9, 9, 16, 4)]


def sdpa(q, k, v):
    """Torch's own SDPA, lower-right causal, native GQA: ``[B, n, Hq, D]``."""
    from torch.nn.attention.bias import causal_lower_right

    n, s = q.shape[2], k.shape[2]
    mask = causal_lower_right(n, s) if n > 1 else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)


def qkv(hq, hkv, n, s, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, hq, n, d, generator=g), torch.randn(2, hkv, s, d, generator=g),
            torch.randn(2, hkv, s, d, generator=g))


@pytest.mark.parametrize("case", CASES)
def test_reference_equals_sdpa(case):
    hq, hkv, n, s, d, split = case
    q, k, v = qkv(hq, hkv, n, s, d)
    got = split_kv.split_kv_reference(q, k, v, split_tokens=split)
    assert got.shape == (2, n, hq, d)
    assert torch.allclose(got, sdpa(q, k, v), atol=ATOL)
    # one split is plain attention; splits that see no key at all (the new rows' future) weigh 0
    assert torch.allclose(split_kv.split_kv_reference(q, k, v, split_tokens=s), got, atol=ATOL)


def test_reference_scale_and_empty_split_weights():
    q, k, v = qkv(4, 2, 6, 40, 16, seed=3)
    assert torch.allclose(split_kv.split_kv_reference(q, k, v, 0.3, split_tokens=5),
                          F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(6, 40, dtype=torch.bool).tril(34),
                                                         scale=0.3, enable_gqa=True).transpose(1, 2), atol=ATOL)
    o = torch.zeros(1, 1, 2, 3, 4)
    o[:, :, 0] = 1.0
    lse = torch.tensor([[[[0.0, 0.0, 0.0], [float("-inf")] * 3]]])
    assert torch.equal(split_kv.merge_splits(o, lse), torch.ones(1, 1, 3, 4))  # the empty split counts 0


def test_num_splits_bounds():
    assert split_kv.num_splits(122880, 8) == 66  # ~528 programs over 8 KV heads
    assert split_kv.num_splits(300, 8) == 1  # never below MIN_SPLIT_TOKENS per split
    assert split_kv.num_splits(10, 10_000) == 1


@pytest.mark.skipif(not split_kv.available(), reason="Triton kernel needs CUDA or TRITON_INTERPRET=1 with triton")
@pytest.mark.parametrize("case", CASES)
def test_triton_kernel_equals_the_reference(case):
    hq, hkv, n, s, d, split = case
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (t.to(dev) for t in qkv(hq, hkv, n, s, d))
    got = split_kv.split_kv_attention(q, k, v, splits=3, block_n=16)
    assert torch.allclose(got.cpu(), sdpa(q, k, v).cpu(), atol=1e-4)


def test_csr_attention_routes_to_split_kv_only_when_on(monkeypatch):
    calls = []

    def fake_kernel(q, k, v, scaling=None):
        calls.append(q.shape[2])
        return split_kv.split_kv_reference(q, k, v, scaling, split_tokens=8)

    monkeypatch.setattr(split_kv, "split_kv_attention", fake_kernel)
    monkeypatch.setitem(attention._SPLIT, "devices", ("cpu",))
    monkeypatch.setitem(attention._SPLIT, "min_kv", 32)
    q, k, v = qkv(4, 2, 5, 40, 16)
    ref = attention.csr_attention(q, k, v, None)
    assert calls == []  # off by default
    attention.set_split_kv(True)
    try:
        assert torch.allclose(attention.csr_attention(q, k, v, None), ref, atol=ATOL) and calls == [5]
        attention.csr_attention(q, k[:, :, :20], v[:, :, :20], None)  # short cache: SDPA
        attention.csr_attention(q, k, v, torch.ones(1, 1, 5, 40, dtype=torch.bool))  # masked: SDPA
        assert calls == [5]

        def broken(*args, **kwargs):
            raise RuntimeError("triton compile error")

        monkeypatch.setattr(split_kv, "split_kv_attention", broken)
        assert torch.allclose(attention.csr_attention(q, k, v, None), ref, atol=ATOL)  # fell back to SDPA
        assert attention._SPLIT["on"] is False  # and stays off
    finally:
        attention.set_split_kv(False)
