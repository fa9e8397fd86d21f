"""Compaction policies: pure functions ledger -> plan (no torch, no model, no ROS).

A plan says which retained increments are evicted, which stay, and the memory lines that will
represent the evicted ones. :func:`apply_plan` turns a plan into the next ledger version (the
only step that needs the tokenizer, passed in as ``encode``). Prefilling that ledger into a KV
cache is the reconciler's job, off the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from csr_ros.core.ledger import Increment, MemoryBlock, StateLedger, total_tokens
from csr_ros.core.template import PromptTemplate

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class CompactionPlan:
    """What a compaction does; ``memory_lines`` replace the previous memory block's lines."""

    policy: str
    evicted: tuple[Increment, ...]
    retained: tuple[Increment, ...]
    memory_lines: tuple[str, ...]

    @property
    def covers_through_seq(self) -> int:
        return self.evicted[-1].seq if self.evicted else -1


def split_oldest(increments: Sequence[Increment], evict_tokens: int) -> tuple[tuple, tuple]:
    """Evict the oldest increments until at least ``evict_tokens`` tokens are gone.

    Always keeps the newest increment (the state never becomes empty of recent context).
    """
    evicted, acc = [], 0
    for inc in increments[:-1]:
        if acc >= evict_tokens:
            break
        evicted.append(inc)
        acc += inc.num_tokens
    return tuple(evicted), tuple(increments[len(evicted):])


def evict_token_target(ledger: StateLedger, evict_frac: float) -> int:
    """Tokens to evict: ``evict_frac`` of the retained increments' tokens."""
    return int(total_tokens(ledger.increments) * evict_frac)


def plan_drop_oldest(ledger: StateLedger, evict_frac: float, prior_lines: Sequence[str] = ()) -> CompactionPlan:
    """The CSR reference behaviour: drop the oldest fraction of increments; memory unchanged."""
    evicted, retained = split_oldest(ledger.increments, evict_token_target(ledger, evict_frac))
    return CompactionPlan("drop_oldest", evicted, retained, tuple(prior_lines))


def apply_plan(ledger: StateLedger, plan: CompactionPlan, template: PromptTemplate, encode: Encode) -> StateLedger:
    """The next ledger version: same prefix, new memory block, the retained increments."""
    text = template.memory(list(plan.memory_lines))
    prev = ledger.memory
    memory = MemoryBlock(
        text=text,
        token_ids=tuple(encode(text)) if text else (),
        covers_through_seq=max(prev.covers_through_seq, plan.covers_through_seq),
        represented_seqs=prev.represented_seqs + len(plan.evicted),
    )
    return ledger.compacted(memory, plan.retained)
