"""The graph runner's explicit forward (CPU, tiny shapes): equal to transformers' own forward, its
replay plumbing (static inputs/outputs) through a stand-in for CUDA capture, and the fallbacks."""

from __future__ import annotations

import random

import pytest
import torch

from csr_ros.core.model import cuda_graphs
from csr_ros.core.model.cuda_graphs import Captured, Segments, StepRunner, unsupported_reason
from csr_ros.core.model.kv_state import KVState

pytestmark = pytest.mark.core
ATOL = 1e-4  # fp32 logits


def ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 500) for _ in range(n)]


def fresh_logits(model, seq: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([seq])).logits[0, -1].float()


@pytest.fixture(scope="module")
def qwen3():
    """A tiny random Qwen3 (per-head q/k norms), csr attention."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from csr_ros.core.model import attention

    cfg = Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=4096)
    torch.manual_seed(1)
    m = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    m.set_attn_implementation(attention.register())
    return m


def run_appends(kv: KVState, sizes: list[int]) -> tuple[list[torch.Tensor], list[int]]:
    outs, seq = [], []
    for k, n in enumerate(sizes):
        chunk = ids(n, 100 + k)
        outs.append(kv.append(chunk).logits[-1])
        seq += chunk
    return outs, seq


@pytest.mark.parametrize("which", ["tiny", "qwen3"])
def test_explicit_forward_equals_hf(which, tiny, qwen3):
    model = tiny.model if which == "tiny" else qwen3
    assert unsupported_reason(model) is None
    runner = StepRunner(model, sizes=(1, 5, 17), capture=False)
    sizes = [17, 1, 5, 1, 40, 5, 1]  # 40 is not a runner size: plain forward in between
    got, seq = run_appends(KVState(model, "cpu", 16, runner=runner), sizes)
    ref, _ = run_appends(KVState(model, "cpu", 16), sizes)
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, atol=ATOL)
    assert torch.allclose(got[-1], fresh_logits(model, seq), atol=ATOL)
    assert runner.stats["explicit"] == 6 and runner.stats["declined"] == 1


def greedy_decode(kv: KVState, state: list[int], q: list[int], steps: int) -> list[int]:
    kv.append(state)
    bid, lg = kv.open_branch(q)
    toks = [int(lg.argmax())]
    for _ in range(steps):
        toks.append(int(kv.step({bid: toks[-1]})[bid].argmax()))
    kv.close_branch(bid)
    return toks


class ReplayStandIn:
    """Stands in for a CUDA graph on the CPU: replaying reruns segment ``i`` on the static inputs
    and writes into the SAME output tensors, as a real replay does."""

    def __init__(self, segs: Segments, i: int, st: dict, outs: list):
        self.segs, self.i, self.st, self.outs = segs, i, st, outs

    def replay(self) -> None:
        for dst, src in zip(self.outs[self.i], self.segs.run(self.i, self.st)):
            dst.copy_(src)


def stand_in_capture(segs: Segments, n: int, device, dtype, width: int) -> Captured:
    st = {"ids": torch.zeros(1, n, dtype=torch.long), "pos": torch.arange(n)[None],
          "attn": torch.zeros(1, n, width, dtype=dtype)}
    outs = [tuple(t.clone() for t in segs.run(i, st)) for i in range(segs.n_layers + 1)]
    return Captured(st, [ReplayStandIn(segs, i, st, outs) for i in range(segs.n_layers + 1)], outs)


def test_replay_path_gives_the_plain_greedy_tokens(tiny, monkeypatch):
    captured = []

    def spy(*args):
        captured.append(args[1])
        return stand_in_capture(*args)

    monkeypatch.setattr(cuda_graphs, "capture", spy)
    runner = StepRunner(tiny.model, sizes=(1, 12), capture=False)
    runner.capture = True  # replay path, with the stand-in capture
    state, q = ids(70, 1), ids(12, 2)
    got = greedy_decode(KVState(tiny.model, "cpu", 16, runner=runner), state, q, 10)
    assert got == greedy_decode(KVState(tiny.model, "cpu", 16), state, q, 10)
    assert captured == [12, 1]  # captured once per size, then reused
    assert runner.stats["graph"] == 11 and runner.stats["declined"] == 1  # the 70-token append


def test_failed_capture_falls_back_to_the_plain_forward(tiny, monkeypatch):
    def broken(*args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "capture", broken)
    runner = StepRunner(tiny.model, sizes=(1,), capture=False)
    runner.capture = True
    state, q = ids(30, 3), ids(4, 4)
    got = greedy_decode(KVState(tiny.model, "cpu", 16, runner=runner), state, q, 4)
    assert got == greedy_decode(KVState(tiny.model, "cpu", 16), state, q, 4)
    assert runner.stats["graph"] == 0 and not runner.accepts(1)  # not retried


def test_declines_long_appends_other_attention_busy_and_plain_caches(tiny):
    runner = StepRunner(tiny.model, sizes=(1, 3), capture=False)
    kv = KVState(tiny.model, "cpu", 16, runner=runner)
    kv.append(ids(20, 5))  # longer than the largest bucket: plain forward
    b1, _ = kv.open_branch(ids(3, 6))
    b2, _ = kv.open_branch(ids(3, 7))  # sees the state only, not b1: masked, through the runner
    kv.step({b2: 9})  # masked (b1 is in the way), 1 token
    assert runner.stats["explicit"] == 3 and runner.stats["declined"] == 1
    with runner._lock:  # another thread holds it: the caller takes the plain path
        assert runner.forward([1], [0], lambda i, k, v: (k, v)) is None
    tiny.model.set_attn_implementation("sdpa")
    try:
        assert not runner.accepts(1)
    finally:
        from csr_ros.core.model import attention

        tiny.model.set_attn_implementation(attention.register())
    assert KVState(tiny.model, "cpu", None, runner=runner)._runner is None  # DynamicLayer cache


def test_unsupported_models_and_cpu_backend(tiny, monkeypatch):
    from csr_ros.core.model.backends.hf import make_runner

    assert make_runner(tiny.model, True) is None  # CPU: no graphs
    assert make_runner(tiny.model, "explicit").capture is False
    with pytest.raises(ValueError):
        StepRunner(tiny.model, capture=True)  # CUDA graphs on a CPU model
    monkeypatch.setattr(tiny.model.config, "model_type", "gemma")
    assert "gemma" in unsupported_reason(tiny.model)
    assert make_runner(tiny.model, "explicit") is None
