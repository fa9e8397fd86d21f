"""The KV state on a tiny random model: the cache oracle (incremental == fresh prefill)."""

from __future__ import annotations

import pytest
import torch

from kv_oracle import fresh_logits, greedy_fresh, ids

pytestmark = pytest.mark.core
ATOL = 1e-4  # fp32 logits; observed differences are ~1e-6


def test_incremental_appends_equal_fresh_prefill(tiny, tiny_ref):
    kv = tiny.new_state()
    chunks = [ids(n, s) for s, n in enumerate([17, 1, 40, 5, 64, 2])]
    seq = []
    for c in chunks:
        out = kv.append(c)
        seq += c
        ref = fresh_logits(tiny_ref, seq)[-1]
        assert torch.allclose(out.logits[-1], ref, atol=ATOL)
    assert kv.token_ids() == seq and kv.cache_seq_length() == len(seq)


def test_query_branch_is_cropped_and_greedy_matches_fresh(tiny, tiny_ref):
    kv = tiny.new_state()
    state = ids(80, 1)
    kv.append(state)
    q = ids(12, 2)
    bid, logits = kv.open_branch(q)
    toks, tok = [], int(logits.argmax())
    for _ in range(8):
        toks.append(tok)
        tok = int(kv.step({bid: tok})[bid].argmax())
    assert toks == greedy_fresh(tiny_ref, state + q, 8)
    kv.close_branch(bid)
    assert kv.token_ids() == state and kv.physical_length == len(state) == kv.cache_seq_length()
    # the state keeps growing correctly after a query
    more = ids(9, 3)
    out = kv.append(more)
    assert torch.allclose(out.logits[-1], fresh_logits(tiny_ref, state + more)[-1], atol=ATOL)


def test_batched_branches_equal_each_alone(tiny):
    state = ids(50, 4)
    prompts = [ids(n, 10 + n) for n in (5, 9, 3)]

    def run(batched: bool) -> list[list[int]]:
        kv = tiny.new_state()
        kv.append(state)
        outs = []
        if not batched:
            for p in prompts:
                bid, lg = kv.open_branch(p)
                seq = [int(lg.argmax())]
                for _ in range(6):
                    seq.append(int(kv.step({bid: seq[-1]})[bid].argmax()))
                kv.close_branch(bid)
                outs.append(seq)
            return outs
        bids, seqs = [], []
        for p in prompts:
            bid, lg = kv.open_branch(p)
            bids.append(bid)
            seqs.append([int(lg.argmax())])
        for _ in range(6):
            res = kv.step({b: s[-1] for b, s in zip(bids, seqs)})  # ONE forward for all
            for b, s in zip(bids, seqs):
                s.append(int(res[b].argmax()))
        return seqs

    assert run(True) == run(False)


def test_state_append_under_open_branches_keeps_them_intact(tiny, tiny_ref):
    kv = tiny.new_state()
    state = ids(30, 5)
    kv.append(state)
    q = ids(6, 6)
    bid, lg = kv.open_branch(q)
    first = int(lg.argmax())
    new = ids(7, 7)
    kv.append(new)  # an increment arrives while the request is open
    nxt = kv.step({bid: first})[bid]
    ref = fresh_logits(tiny_ref, state + q + [first])[-1]  # the request's snapshot semantics
    assert torch.allclose(nxt, ref, atol=ATOL)
    # a request opened now sees the new increment
    bid2, lg2 = kv.open_branch(q)
    assert torch.allclose(lg2, fresh_logits(tiny_ref, state + new + q)[-1], atol=ATOL)
    kv.close_branch(bid)  # not the last in the tail: removed from the middle
    nxt2 = kv.step({bid2: int(lg2.argmax())})[bid2]
    ref2 = fresh_logits(tiny_ref, state + new + q + [int(lg2.argmax())])[-1]
    assert torch.allclose(nxt2, ref2, atol=ATOL)
    kv.close_branch(bid2)
    assert kv.token_ids() == state + new and kv.cache_seq_length() == len(state + new)


def test_score_is_one_forward_and_matches_reference(tiny, tiny_ref):
    kv = tiny.new_state()
    state = ids(40, 8)
    kv.append(state)
    prompt, cands = ids(7, 9), [ids(1, 20), ids(3, 21), ids(5, 22)]
    before = kv.forwards
    got = kv.score(prompt, cands)
    assert kv.forwards == before + 1
    for c, g in zip(cands, got):
        lp = torch.log_softmax(fresh_logits(tiny_ref, state + prompt + c), -1)
        ref = sum(float(lp[len(state) + len(prompt) - 1 + j, t]) for j, t in enumerate(c))
        assert g == pytest.approx(ref, abs=1e-3)
    assert kv.token_ids() == state and not kv.open_branches()


def test_append_and_open_is_one_forward(tiny, tiny_ref):
    kv = tiny.new_state()
    state, inc, q = ids(60, 11), ids(16, 12), ids(8, 13)
    kv.append(state)
    before = kv.forwards
    bid, lg = kv.append_and_open(inc, q)
    assert kv.forwards == before + 1
    assert torch.allclose(lg, fresh_logits(tiny_ref, state + inc + q)[-1], atol=ATOL)
    kv.close_branch(bid)
    assert kv.token_ids() == state + inc


def test_truncate_and_errors(tiny):
    kv = tiny.new_state()
    kv.append(ids(20, 14))
    kv.truncate(12)
    assert kv.length == 12 == kv.cache_seq_length()
    with pytest.raises(ValueError):
        kv.append([])
    with pytest.raises(ValueError):
        kv.truncate(99)
    bid, _ = kv.open_branch(ids(3, 15))
    with pytest.raises(RuntimeError):
        kv.truncate(5)
    kv.close_branch(bid)


def test_failed_forward_leaves_the_state_unchanged(tiny, monkeypatch):
    kv = tiny.new_state()
    state = ids(25, 16)
    kv.append(state)
    layer = tiny.model.model.layers[1]
    orig = layer.forward

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(layer, "forward", boom)
    with pytest.raises(RuntimeError, match="injected"):
        kv.append(ids(5, 17))
    monkeypatch.setattr(layer, "forward", orig)
    assert kv.token_ids() == state and kv.cache_seq_length() == len(state)
    kv.append(ids(5, 17))
    assert kv.length == 30


def test_in_place_layers_equal_concatenating_layers(tiny):
    """Preallocated in-place writes (growing past capacity, crops, branch moves) == DynamicCache."""
    from csr_ros.core.model.kv_layers import InPlaceLayer
    from csr_ros.core.model.kv_state import KVState

    a = KVState(tiny.model, "cpu", capacity_tokens=16)  # forces several doublings
    b = KVState(tiny.model, "cpu", capacity_tokens=None)
    assert all(isinstance(l, InPlaceLayer) for l in a._cache.layers)
    assert not any(isinstance(l, InPlaceLayer) for l in b._cache.layers)
    for kv in (a, b):
        kv.append(ids(40, 30))
    outs = []
    for kv in (a, b):
        b1, _ = kv.open_branch(ids(5, 31))
        kv.append(ids(9, 32))  # tail moved while a branch is open
        b2, _ = kv.open_branch(ids(4, 33))
        kv.close_branch(b1)  # removal from the middle of the tail
        r = kv.step({b2: 7})[b2]
        kv.close_branch(b2)
        kv.truncate(45)
        outs.append((r, kv.append(ids(3, 34)).logits[-1], kv.token_ids()))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)
    assert outs[0][2] == outs[1][2] and a.cache_seq_length() == 48
    assert a._cache.layers[0].capacity >= 64


def test_budget_from_free_memory(tiny):
    from csr_ros.core.model.backends.hf import budget_from_free_memory, kv_bytes_per_token

    per = kv_bytes_per_token(tiny.model.config, torch.float32)
    assert per == 2 * 2 * 2 * 16 * 4  # K+V, 2 layers, 2 kv heads, head dim 16, fp32
    assert budget_from_free_memory(tiny, 0.5, 10**9, free_bytes=per * 4000) == 1000
    assert budget_from_free_memory(tiny, 0.5, 300, free_bytes=per * 4000) == 300
    assert budget_from_free_memory(tiny, 0.5, 300) == 300  # CPU: the request is kept
