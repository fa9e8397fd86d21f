"""Compaction policies: pure functions ledger -> plan (no torch, no model, no ROS).

A plan says which retained increments are evicted, which stay, and the memory lines that will
represent the evicted ones. :func:`apply_plan` turns a plan into the next ledger version (the
only step that needs the tokenizer, passed in as ``encode``). Prefilling that ledger into a KV
cache is the reconciler's job, off the hot path.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.ledger import Increment, MemoryBlock, StateLedger, total_tokens
from csr_ros.core.state.template import PromptTemplate

log = logging.getLogger("csr_ros.compaction")

Encode = Callable[[str], list[int]]
# (prior memory body, evicted increments, epoch_ns) -> summary text; the model call of `summary`.
Summarize = Callable[[str, Sequence[Increment], int], str]
POLICIES = ("drop_oldest", "entity_memory", "summary")


class CompactionError(RuntimeError):
    """A compaction cannot be planned (nothing to evict, a failed summary, an unknown policy)."""


@dataclass(frozen=True)
class CompactionPlan:
    """What a compaction does; ``memory_lines`` replace the previous memory block's lines."""

    policy: str
    evicted: tuple[Increment, ...]
    retained: tuple[Increment, ...]
    memory_lines: tuple[str, ...] | None  # None: keep the previous memory block as it is
    entity_memory: EntityMemory | None = None  # entity_memory: the evicted memory after this plan

    @property
    def represents_evicted(self) -> bool:
        """True when the new memory block stands for the evicted increments (all but drop_oldest)."""
        return self.policy != "drop_oldest"

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


def plan_drop_oldest(ledger: StateLedger, evict_frac: float,
                     prior_lines: Sequence[str] | None = None) -> CompactionPlan:
    """The CSR reference behaviour: drop the oldest fraction of increments; memory unchanged.

    The dropped increments are *not* represented anywhere (callers count them as evicted by
    policy). ``prior_lines`` replaces the memory block's lines; None keeps the block as it is.
    """
    evicted, retained = split_oldest(ledger.increments, evict_token_target(ledger, evict_frac))
    return CompactionPlan("drop_oldest", evicted, retained, None if prior_lines is None else tuple(prior_lines))


def plan_entity_memory(ledger: StateLedger, evict_frac: float, prior: EntityMemory | None = None) -> CompactionPlan:
    """Evict the oldest fraction; the memory block renders what ALL evicted increments said.

    Args:
        prior: entity memory of the increments evicted by earlier compactions (those up to
            ``ledger.memory.covers_through_seq``); None for the first compaction.
    Returns:
        a plan whose ``memory_lines`` render ``prior`` + the newly evicted increments per key
        (newest value, first value, times, counts) and whose ``entity_memory`` is that memory.
    """
    evicted, retained = split_oldest(ledger.increments, evict_token_target(ledger, evict_frac))
    mem = (prior.copy() if prior is not None else EntityMemory()).observe_all(evicted)
    return CompactionPlan("entity_memory", evicted, retained, tuple(mem.render(ledger.epoch_ns)), mem)


def memory_body(template: PromptTemplate, text: str) -> str:
    """The lines inside a rendered memory block (inverse of ``template.memory``)."""
    if not text:
        return ""
    head, tail = template.memory(["\x00"]).split("\x00")
    if text.startswith(head) and text.endswith(tail):
        return text[len(head):len(text) - len(tail)]
    return text.strip()


def render_increments(incs: Sequence[Increment], epoch_ns: int, template: PromptTemplate) -> str:
    """The increments as they read in the state (times relative to ``epoch_ns``)."""
    return "".join(template.increment((i.stamp_ns - epoch_ns) / 1e9, i.source, i.text) for i in incs)


def plan_summary(ledger: StateLedger, evict_frac: float, summarize: Summarize,
                 template: PromptTemplate) -> CompactionPlan:
    """Evict the oldest fraction; the model summarises the previous memory + the evicted ones.

    Raises:
        CompactionError: the summariser returned nothing.
    """
    evicted, retained = split_oldest(ledger.increments, evict_token_target(ledger, evict_frac))
    text = " ".join(summarize(memory_body(template, ledger.memory.text), evicted, ledger.epoch_ns).split())
    if not text:
        raise CompactionError("the summariser returned an empty summary")
    return CompactionPlan("summary", evicted, retained, (text,))


def plan_for(policy: str, ledger: StateLedger, evict_frac: float, *, prior: EntityMemory | None = None,
             summarize: Summarize | None = None, template: PromptTemplate | None = None) -> CompactionPlan:
    """Dispatch to the named policy (``drop_oldest`` | ``entity_memory`` | ``summary``).

    Raises:
        CompactionError: unknown policy, ``summary`` without a summariser/template, nothing to evict.
    """
    if policy == "drop_oldest":
        plan = plan_drop_oldest(ledger, evict_frac)
    elif policy == "entity_memory":
        plan = plan_entity_memory(ledger, evict_frac, prior)
    elif policy == "summary":
        if summarize is None or template is None:
            raise CompactionError("policy 'summary' needs a summariser and the template")
        plan = plan_summary(ledger, evict_frac, summarize, template)
    else:
        raise CompactionError(f"unknown compaction policy {policy!r}; use one of {POLICIES}")
    if not plan.evicted:
        raise CompactionError(f"nothing to evict ({len(ledger.increments)} increments retained)")
    return plan


def apply_plan(ledger: StateLedger, plan: CompactionPlan, template: PromptTemplate, encode: Encode) -> StateLedger:
    """The next ledger version: same prefix, new memory block, the retained increments.

    The memory block's ``covers_through_seq``/``represented_seqs`` only advance when the plan's
    policy represents the evicted increments (not for ``drop_oldest``).
    """
    prev = ledger.memory
    if plan.memory_lines is None:
        text, ids = prev.text, prev.token_ids
    else:
        text = template.memory(list(plan.memory_lines))
        ids = prev.token_ids if text == prev.text else (tuple(encode(text)) if text else ())
    rep = plan.represents_evicted
    memory = MemoryBlock(
        text=text,
        token_ids=ids,
        covers_through_seq=max(prev.covers_through_seq, plan.covers_through_seq) if rep else prev.covers_through_seq,
        represented_seqs=prev.represented_seqs + (len(plan.evicted) if rep else 0),
    )
    return ledger.compacted(memory, plan.retained)


class Compactor:
    """The configured policy, bound to a template/tokenizer, plus the evicted-increment memory.

    ``entity_memory`` renders the memory of *all* evicted increments, so each plan builds on the
    memory of the previous compaction. The compactor keeps those memories keyed by the
    ``covers_through_seq`` they reach, so a plan for ledger L starts from the memory matching
    ``L.memory.covers_through_seq`` whichever build (async, sync fallback, or a restart via
    :meth:`seed`) produced L. Thread-safe (the reconciler thread and the engine's synchronous
    fallback may both plan).
    """

    _KEEP = 4  # memories kept (a few versions around the one being served)

    def __init__(self, policy: str, evict_frac: float, template: PromptTemplate, encode: Encode,
                 summarize: Summarize | None = None):
        if policy not in POLICIES:
            raise CompactionError(f"unknown compaction policy {policy!r}; use one of {POLICIES}")
        if policy == "summary" and summarize is None:
            raise CompactionError("policy 'summary' needs a summariser")
        self.policy, self.evict_frac = policy, evict_frac
        self.template, self.encode, self.summarize = template, encode, summarize
        self._lock = threading.Lock()
        self._evicted: dict[int, EntityMemory] = {-1: EntityMemory()}
        self.missing_prior = 0  # plans that could not find the memory of earlier evictions
        # Bound of the entity-memory block, tokens (None: unbounded). The engine sets it so that
        # prefix + block stay well below the high-water mark: a block that grew past it would
        # leave nothing to evict and every frame would fall back to a synchronous eviction.
        self.max_block_tokens: int | None = None
        self.trimmed_lines = 0  # memory lines left out of blocks by that bound (stalest keys first)

    def forget(self) -> None:
        """Drop the memory of every evicted increment (the state was reset)."""
        with self._lock:
            self._evicted.clear()

    def seed(self, evicted: EntityMemory, covers_through_seq: int) -> None:
        """Install the memory of the increments evicted up to ``covers_through_seq`` (restart)."""
        with self._lock:
            self._evicted[covers_through_seq] = evicted.copy()

    def _prior(self, ledger: StateLedger) -> EntityMemory:
        covers = ledger.memory.covers_through_seq
        with self._lock:
            prior = self._evicted.get(covers)
        if prior is None:
            self.missing_prior += 1
            log.warning("no memory of the increments evicted through seq %d: the new memory block "
                        "will only describe the newly evicted ones", covers)
            return EntityMemory()
        return prior

    def _remember(self, plan: CompactionPlan) -> None:
        if plan.entity_memory is None:
            return
        with self._lock:
            self._evicted[plan.covers_through_seq] = plan.entity_memory
            for k in sorted(self._evicted)[:-self._KEEP]:
                del self._evicted[k]

    def plan(self, ledger: StateLedger, allow_model: bool = True) -> CompactionPlan:
        """A plan for ``ledger``. With ``allow_model=False`` (hot path), ``summary`` appends the
        entity rendering of the newly evicted increments to the previous summary instead.

        Raises:
            CompactionError: nothing to evict, or the summariser failed.
        """
        if self.policy == "summary" and allow_model:
            return plan_for("summary", ledger, self.evict_frac, summarize=self.summarize, template=self.template)
        plan = plan_for("entity_memory" if self.policy == "summary" else self.policy, ledger,
                        self.evict_frac, prior=self._prior(ledger) if self.policy == "entity_memory" else None)
        if self.policy == "summary":  # model-free fallback: keep the summary, add the new facts
            body = memory_body(self.template, ledger.memory.text)
            lines = ([body] if body else []) + EntityMemory().observe_all(plan.evicted).render(ledger.epoch_ns)
            return CompactionPlan("summary", plan.evicted, plan.retained, tuple(lines))
        self._remember(plan)
        return self._bounded(plan, ledger.epoch_ns)

    def _bounded(self, plan: CompactionPlan, epoch_ns: int) -> CompactionPlan:
        """``plan`` with its entity-memory block cut to ``max_block_tokens``: the keys observed
        most recently are kept (rendered in key order); the memory itself stays whole (focus and
        later compactions still see every key)."""
        mem, cap = plan.entity_memory, self.max_block_tokens
        if mem is None or cap is None or not plan.memory_lines:
            return plan
        if len(self.encode(self.template.memory(list(plan.memory_lines)))) <= cap:
            return plan
        overhead = len(self.encode(self.template.memory([])))
        kept, used = [], overhead
        for key in mem.newest_keys():
            cost = len(self.encode(mem.line(key, epoch_ns))) + 1  # + its newline
            if used + cost > cap:
                break
            kept.append(key)
            used += cost
        lines = tuple(mem.render(epoch_ns, kept))
        while lines and len(self.encode(self.template.memory(list(lines)))) > cap:  # the estimate was low
            kept.pop()
            lines = tuple(mem.render(epoch_ns, kept))
        self.trimmed_lines += len(plan.memory_lines) - len(lines)
        return replace(plan, memory_lines=lines)

    def compact(self, ledger: StateLedger, allow_model: bool = True) -> tuple[StateLedger, CompactionPlan]:
        """The next ledger version for ``ledger`` (plan + apply) and the plan."""
        plan = self.plan(ledger, allow_model)
        return apply_plan(ledger, plan, self.template, self.encode), plan

    def compact_sync(self, ledger: StateLedger) -> StateLedger:
        """The engine's hard-limit fallback: same policy, never a model call."""
        return self.compact(ledger, allow_model=False)[0]
