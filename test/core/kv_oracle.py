"""The cache oracle's reference, shared by the KV-state tests: a fresh, uncached forward."""

from __future__ import annotations

import random

import torch


def ids(n: int, seed: int) -> list[int]:
    """``n`` token ids in [3, 500), reproducible by ``seed``."""
    rng = random.Random(seed)
    return [rng.randrange(3, 500) for _ in range(n)]


def fresh_logits(be, seq: list[int]) -> torch.Tensor:
    """Reference: one forward over the whole sequence, no cache. Shape [len(seq), vocab], fp32."""
    with torch.inference_mode():
        return be.model(torch.tensor([seq])).logits[0].float()


def greedy_fresh(be, seq: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``seq``, each from a fresh forward."""
    out, cur = [], list(seq)
    for _ in range(n):
        out.append(int(fresh_logits(be, cur)[-1].argmax()))
        cur.append(out[-1])
    return out
