"""The CPU fast path's quantized weights on the tiny random model: the cache oracle holds on the
SAME quantized weights (incremental appends, branches, crops, rebuilds == a fresh prefill), and a
scheme that cannot run falls back to fp32. ~3 s on 2 cores."""

from __future__ import annotations

import pytest
import torch

from kv_oracle import fresh_logits, greedy_fresh, ids

from csr_ros.core.model import quant

pytestmark = pytest.mark.core
REL = 2.0 ** -6  # the kernels return bf16: logits may differ by a bf16 step or two of the largest one


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Logits of the same quantized weights through different forward splits agree within
    ``REL`` of the largest logit (observed: 0 or one bf16 step)."""
    return float((a - b).abs().max()) <= REL * float(b.abs().max())


@pytest.fixture(scope="module", params=["int4", "int8"])
def qbe(request):
    from csr_ros.core.model.backends.hf import load_shape

    return load_shape("tiny", device="cpu", seed=0, weights=request.param)


def test_scheme_applied_and_runner_explicit(qbe):
    assert qbe.weights.fast and qbe.weights.note == ""
    layer = qbe.model.get_decoder().layers[0]
    assert isinstance(layer.mlp.up_proj, (quant.Int4Linear, quant.Int8Linear))
    assert qbe.runner is not None and not qbe.runner.capture  # explicit segmented forward on the CPU


def test_quantized_weights_change_logits_but_stay_close(qbe, tiny):
    seq = ids(40, 9)
    q, ref = fresh_logits(qbe, seq)[-1], fresh_logits(tiny, seq)[-1]
    diff = float((q - ref).abs().max())
    assert 0 < diff < 0.5 * float(ref.abs().max())


def test_quantized_append_equals_quantized_prefill(qbe):
    kv = qbe.new_state()
    seq = []
    for s, n in enumerate([17, 1, 32, 5, 64, 2, 96]):
        c = ids(n, s)
        out = kv.append(c)
        seq += c
        assert close(out.logits[-1], fresh_logits(qbe, seq)[-1])
    assert kv.token_ids() == seq and kv.cache_seq_length() == len(seq)
    assert qbe.runner.stats["explicit"] > 0  # the 1/32/64/96-token appends took the runner


def test_quantized_branches_and_crop_match_fresh_greedy(qbe):
    kv = qbe.new_state()
    state = ids(70, 1)
    kv.prefill(state, chunk_tokens=32)
    q1, q2 = ids(12, 2), ids(7, 3)
    (b1, l1), (b2, l2) = kv.open_branch(q1), kv.open_branch(q2)  # two open: masked forwards
    toks = {b1: [int(l1.argmax())], b2: [int(l2.argmax())]}
    for _ in range(6):
        out = kv.step({b: t[-1] for b, t in toks.items()})
        for b in toks:
            toks[b].append(int(out[b].argmax()))
    assert toks[b1] == greedy_fresh(qbe, state + q1, 7)
    assert toks[b2] == greedy_fresh(qbe, state + q2, 7)
    kv.close_branch(b1), kv.close_branch(b2)
    kv.truncate(50)  # crop, then grow again: same as a fresh prefill of the new sequence
    more = ids(9, 4)
    out = kv.append(more)
    assert close(out.logits[-1], fresh_logits(qbe, state[:50] + more)[-1])
    rebuilt = qbe.new_state()  # a rebuild (fresh state, chunked prefill) gives the same logits
    assert close(rebuilt.prefill(state[:50] + more, chunk_tokens=16).logits[-1], out.logits[-1])


def test_fallback_to_fp32_when_unavailable(monkeypatch):
    from csr_ros.core.model.backends.hf import load_shape

    monkeypatch.setitem(quant.KERNELS, "int4", "_no_such_kernel")  # a torch without the int4 kernel
    be = load_shape("tiny", device="cpu", seed=0, weights="auto")
    assert be.weights.scheme == "fp32" and "no aten._no_such_kernel" in be.weights.note
    assert be.runner is None and type(be.model.get_decoder().layers[0].mlp.up_proj) is torch.nn.Linear


def test_resolve_and_reasons():
    assert quant.resolve("auto", torch.device("cpu")) == "int4"
    assert quant.resolve("auto", torch.device("cuda")) == "fp32"
    with pytest.raises(ValueError, match="unknown weights scheme"):
        quant.resolve("int3", torch.device("cpu"))
    assert "fp32 model" in quant.unavailable_reason("int4", torch.nn.Linear(32, 8).bfloat16())
    assert quant.unavailable_reason("fp32", torch.nn.Linear(32, 8).bfloat16()) is None
    assert quant.unavailable_reason("int8", torch.nn.Linear(32, 8)) is None
