"""The cache oracle on the real SmolLM2: incremental appends == a fresh prefill of the same tokens.

Tolerance: next-token logits agree within 1e-3 absolute (fp32; observed ~4e-5), and greedy
tokens are identical.
"""

from __future__ import annotations

import pytest
import torch

from csr_ros.core.runtime.engine import CsrEngine

pytestmark = pytest.mark.model
LOGIT_ATOL = 1e-3

OBS = [
    ("/observations", "a red cup is on the kitchen table"),
    ("/joint_states", "shoulder=0.12 elbow=1.57 wrist=-0.30"),
    ("/observations", "the person picked up the red cup"),
    ("/observations", "the red cup is now in the living room on the sofa"),
    ("/robot_pose", "map: x=2.10 y=-0.40 yaw=1.57"),
]


def fresh(ref, seq):
    with torch.inference_mode():
        return ref.model(torch.tensor([seq])).logits[0, -1].float()


def greedy_fresh(ref, seq, n):
    out = ref.model.generate(torch.tensor([seq]), max_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones(1, len(seq), dtype=torch.long))
    toks = out[0, len(seq):].tolist()
    eos = ref.eos_ids
    return toks[: next((i for i, t in enumerate(toks) if t in eos), len(toks))]


def test_incremental_state_equals_fresh_prefill(smol, smol_ref):
    eng = CsrEngine(smol, budget_tokens=8192)
    for i, (src, text) in enumerate(OBS):
        eng.submit(src, i * 1_500_000_000, text)
        step = eng.flush()
        ref = fresh(smol_ref, eng.ledger.token_ids())
        assert (step.logits[-1] - ref).abs().max().item() < LOGIT_ATOL
    assert eng.check_invariant()


def test_greedy_answer_equals_fresh_generation(smol, smol_ref):
    eng = CsrEngine(smol, budget_tokens=8192)
    for i, (src, text) in enumerate(OBS):
        eng.submit(src, i * 1_500_000_000, text)
        if i == 2:
            eng.query("What did the person do?", max_new_tokens=4)  # a query mid-stream
    question = "Where is the red cup now?"
    r = eng.query(question, max_new_tokens=16)
    seq = eng.ledger.token_ids() + eng.query_ids(question)
    assert list(r.token_ids) == greedy_fresh(smol_ref, seq, 16)
    assert eng.check_invariant()


def test_closed_set_scores_equal_fresh_prefill(smol, smol_ref):
    eng = CsrEngine(smol, budget_tokens=8192)
    for i, (src, text) in enumerate(OBS):
        eng.submit(src, i * 10**9, text)
    rooms = ["kitchen", "living room", "bedroom"]
    got = eng.score("Where is the red cup now?", rooms, lead_in="The red cup is in the")
    prompt = eng.ledger.token_ids() + eng.query_ids("Where is the red cup now?", "The red cup is in the")
    for room, g in zip(rooms, got):
        cand = smol.encode(" " + room)
        with torch.inference_mode():
            lp = torch.log_softmax(smol_ref.model(torch.tensor([prompt + cand])).logits[0].float(), -1)
        ref = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(cand))
        assert g == pytest.approx(ref, abs=1e-2)
    assert rooms[max(range(3), key=got.__getitem__)] == "living room"
