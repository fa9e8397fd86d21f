"""Bucketed graph forwards (CPU, tiny shape, fp32): an append padded to its bucket equals the exact
append in logits AND in the KV contents (padding never reaches the cache or the ledger), through
the explicit forward and through the replay plumbing; masked branch steps too. ~3 s."""

from __future__ import annotations

import random

import pytest
import torch

from csr_ros.core.model import cuda_graphs
from csr_ros.core.model.buckets import DEFAULT_MAX_TOKENS, bucket_for, bucket_sizes, pad_to
from csr_ros.core.model.cuda_graphs import StepRunner
from csr_ros.core.model.kv_state import KVState

pytestmark = pytest.mark.core
ATOL = 1e-4  # fp32


def ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 500) for _ in range(n)]


def test_bucket_arithmetic():
    sizes = bucket_sizes(DEFAULT_MAX_TOKENS)
    assert sizes[0] == 1 and sizes[-1] == DEFAULT_MAX_TOKENS and list(sizes) == sorted(set(sizes))
    assert all(b / a <= 1.5 for a, b in zip(sizes[6:], sizes[7:]))  # pad overhead bounded from 8 tokens on
    assert bucket_sizes(100)[-1] == 100 and 112 not in bucket_sizes(100)
    assert [bucket_for(n, sizes) for n in (1, 5, 17, 45, 80, 256)] == [1, 6, 20, 48, 80, 256]
    assert bucket_for(257, sizes) is None and bucket_for(0, sizes) is None
    assert pad_to([7, 8], [10, 11], 4, pad_id=0) == ([7, 8, 0, 0], [10, 11, 11, 11])
    with pytest.raises(ValueError):
        pad_to([1, 2, 3], [0, 1, 2], 2)
    with pytest.raises(ValueError):
        bucket_sizes(0)


def assert_same_state(a: KVState, b: KVState) -> None:
    """Same ledger tokens, same cache length, same K/V rows in every layer."""
    assert a.token_ids() == b.token_ids()
    assert a.cache_seq_length() == b.cache_seq_length() == a.physical_length
    for la, lb in zip(a._cache.layers, b._cache.layers):
        assert la.keys.shape == lb.keys.shape
        assert torch.allclose(la.keys, lb.keys, atol=ATOL) and torch.allclose(la.values, lb.values, atol=ATOL)


APPENDS = [3, 5, 11, 1, 7, 20, 2, 16]  # none is a bucket size of (1, 8, 16, 32) except 1 and 16


def test_padded_bucket_append_equals_the_exact_append(tiny):
    runner = StepRunner(tiny.model, sizes=(1, 8, 16, 32), capture=False)
    padded, exact = KVState(tiny.model, "cpu", 16, runner=runner), KVState(tiny.model, "cpu", 16)
    for k, n in enumerate(APPENDS):
        chunk = ids(n, 10 + k)
        got, ref = padded.append(chunk).logits, exact.append(chunk).logits
        assert torch.allclose(got, ref, atol=ATOL)
        assert_same_state(padded, exact)  # the KV length after a padded append is the exact one
    assert runner.stats["explicit"] == len(APPENDS) and runner.stats["declined"] == 0


def test_padded_masked_branch_steps_equal_the_plain_forward(tiny):
    """Two branches open beside each other: their joint step needs the branch mask, which the
    runner applies to the valid rows of a padded bucket."""
    runner = StepRunner(tiny.model, sizes=(1, 4, 8), capture=False)

    def run(kv: KVState) -> list[torch.Tensor]:
        kv.append(ids(30, 1))
        b1, l1 = kv.open_branch(ids(3, 2))
        b2, l2 = kv.open_branch(ids(5, 3))  # must not see b1: masked
        outs = [l1, l2]
        for t in range(4):
            step = kv.step({b1: 11 + t, b2: 40 + t})  # 2 rows: bucket 4, masked
            outs += [step[b1], step[b2]]
        outs.append(kv.multi_step({b1: 7}, opens=[ids(3, 4)]).opened[0][1])  # 1 + 3 rows: bucket 4
        return outs

    padded, exact = KVState(tiny.model, "cpu", 16, runner=runner), KVState(tiny.model, "cpu", 16)
    for g, r in zip(run(padded), run(exact)):
        assert torch.allclose(g, r, atol=ATOL)
    assert_same_state(padded, exact)
    assert padded._tail_owner == exact._tail_owner
    assert runner.stats["declined"] == 1 and runner.stats["explicit"] == 7  # the 30-token append is too long


def test_padded_replay_path_equals_the_exact_append(tiny, monkeypatch):
    """The capture/replay plumbing with padding (a CPU stand-in for the CUDA graphs): static
    inputs overwritten per call, pad rows zeroed, only valid rows copied out."""
    from test_cuda_graphs import stand_in_capture

    captured = []

    def spy(*args):
        captured.append(args[1])
        return stand_in_capture(*args)

    monkeypatch.setattr(cuda_graphs, "capture", spy)
    runner = StepRunner(tiny.model, sizes=(1, 8, 16), capture=False)
    runner.capture = True
    padded, exact = KVState(tiny.model, "cpu", 16, runner=runner), KVState(tiny.model, "cpu", 16)
    for k, n in enumerate([5, 3, 13, 1, 8, 6]):
        chunk = ids(n, 50 + k)
        assert torch.allclose(padded.append(chunk).logits, exact.append(chunk).logits, atol=ATOL)
        assert_same_state(padded, exact)
    assert captured == [8, 16, 1]  # one capture per bucket, reused across lengths
    assert runner.stats["graph"] == 6


def test_capture_all_and_too_long_appends(tiny, monkeypatch):
    from test_cuda_graphs import stand_in_capture

    monkeypatch.setattr(cuda_graphs, "capture", stand_in_capture)
    runner = StepRunner(tiny.model, sizes=(1, 4), capture=False)
    assert runner.capture_all() == 0  # nothing to capture without CUDA graphs
    runner.capture = True
    assert runner.capture_all() == 2 and set(runner._graphs) == {1, 4}
    assert not runner.accepts(5) and runner.accepts(3)
    assert runner.forward([1] * 5, range(5), lambda i, k, v: (k, v)) is None  # too long: declined
