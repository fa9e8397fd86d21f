"""Plain records of the KV state (no Cache access): branches and forward outputs.

Split out of :mod:`csr_ros.core.model.kv_state`, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Branch:
    """An open continuation of the state (bookkeeping only; its KV lives in the tail)."""

    bid: int
    horizon: int  # state tokens it attends to
    base_pos: int  # logical position of its first token
    parent: int | None
    ids: list[int] = field(default_factory=list)

    @property
    def next_pos(self) -> int:
        return self.base_pos + len(self.ids)


@dataclass
class StepOut:
    """Output rows of one forward.

    Attributes:
        logits: ``[rows, vocab]`` float32 next-token logits of the requested rows.
        hidden: ``[hidden_size]`` final-norm hidden state of the last token (when requested).
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None = None


@dataclass
class MultiOut:
    """What :meth:`KVState.multi_step` returns.

    Attributes:
        steps: stepped branch id -> next-token logits ``[vocab]``.
        opened: ``(new branch id, last logits [vocab])`` per opened prompt, in order.
        scores: the closed-set log-likelihoods (None when nothing was scored).
    """

    steps: dict[int, torch.Tensor]
    opened: list[tuple[int, torch.Tensor]]
    scores: list[float] | None = None
