"""The state ledger: pure bookkeeping of what the cached state holds (no torch, no ROS).

The ledger decides; :mod:`csr_ros.core.model.kv_state` only executes. Its invariant is that the KV cache
holds exactly ``ledger.token_ids()``, in order:

    [ pinned system prefix ][ memory block (from compaction, may be empty) ][ increment 1 ] ... [ increment n ]

Every increment is rendered and tokenized exactly once, when it is accepted; nothing already in
the state is ever re-rendered or re-tokenized. Compaction does not edit the ledger in place: it
produces a *new* ledger (a new ``version``) that the reconciler prefills off the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Fact:
    """One structured observation carried by an increment: ``entity.attribute = value`` at a time."""

    entity: str
    attribute: str
    value: str
    stamp_ns: int


@dataclass(frozen=True)
class Increment:
    """One accepted perception increment.

    Attributes:
        seq: sequence number, strictly increasing over the life of the state (never reused,
            also across compactions and restarts).
        source: where it came from (a topic name such as ``/camera/objects``).
        stamp_ns: stamp of the source message, nanoseconds (ROS time).
        text: the serialized observation (before rendering).
        token_ids: the rendered increment's token ids, tokenized once at acceptance.
        facts: structured facts extracted by the serializer (may be empty).
    """

    seq: int
    source: str
    stamp_ns: int
    text: str
    token_ids: tuple[int, ...]
    facts: tuple[Fact, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class MemoryBlock:
    """A compact rendering of evicted increments, placed between the prefix and the increments.

    Attributes:
        text: the rendered memory block.
        token_ids: its token ids (tokenized once, when the compacted ledger is built).
        covers_through_seq: the newest sequence number whose content it represents (-1: none).
        represented_seqs: number of evicted increments it represents (cumulative).
    """

    text: str = ""
    token_ids: tuple[int, ...] = ()
    covers_through_seq: int = -1
    represented_seqs: int = 0


class LedgerError(ValueError):
    """An operation would break the ledger's invariants (the message says which)."""


@dataclass
class StateLedger:
    """Ordered, append-only description of the cached state.

    Attributes:
        prefix_ids: the pinned system prefix (never evicted, never re-tokenized).
        epoch_ns: the stamp all rendered times are relative to (pinned with the prefix).
        version: state version; bumps when a compacted ledger replaces this one.
        memory: the memory block representing evicted increments.
        increments: retained increments, oldest first.
        last_seq: the newest accepted sequence number (-1 before the first).
    """

    prefix_ids: tuple[int, ...]
    epoch_ns: int = 0
    version: int = 0
    memory: MemoryBlock = field(default_factory=MemoryBlock)
    increments: list[Increment] = field(default_factory=list)
    last_seq: int = -1

    # ---------------------------------------------------------------- queries
    @property
    def num_tokens(self) -> int:
        """Total tokens the cached state holds."""
        return len(self.prefix_ids) + len(self.memory.token_ids) + sum(
            i.num_tokens for i in self.increments
        )

    @property
    def fixed_tokens(self) -> int:
        """Tokens before the first retained increment (prefix + memory block)."""
        return len(self.prefix_ids) + len(self.memory.token_ids)

    def token_ids(self) -> list[int]:
        """The exact token sequence the KV cache must hold."""
        out = list(self.prefix_ids) + list(self.memory.token_ids)
        for inc in self.increments:
            out.extend(inc.token_ids)
        return out

    def spans(self) -> list[tuple[int, int, int]]:
        """``(seq, start, end)`` token span of every retained increment in the state."""
        pos = self.fixed_tokens
        out = []
        for inc in self.increments:
            out.append((inc.seq, pos, pos + inc.num_tokens))
            pos += inc.num_tokens
        return out

    def increments_after(self, seq: int) -> list[Increment]:
        """Retained increments with a sequence number greater than ``seq`` (for replay)."""
        return [i for i in self.increments if i.seq > seq]

    # ---------------------------------------------------------------- updates
    def append(self, inc: Increment) -> tuple[int, int]:
        """Append an accepted increment; returns its ``(start, end)`` token span.

        Raises:
            LedgerError: sequence not strictly increasing, or no tokens.
        """
        if inc.seq <= self.last_seq:
            raise LedgerError(
                f"increment seq {inc.seq} is not newer than the state's last seq {self.last_seq}"
            )
        if not inc.token_ids:
            raise LedgerError(f"increment seq {inc.seq} has no tokens")
        start = self.num_tokens
        self.increments.append(inc)
        self.last_seq = inc.seq
        return start, start + inc.num_tokens

    def drop_oldest(self, count: int) -> list[Increment]:
        """Remove and return the ``count`` oldest retained increments (no memory update)."""
        if count < 0 or count > len(self.increments):
            raise LedgerError(f"cannot drop {count} of {len(self.increments)} increments")
        dropped, self.increments = self.increments[:count], self.increments[count:]
        return dropped

    def compacted(
        self, memory: MemoryBlock, retained: Sequence[Increment], version: int | None = None
    ) -> "StateLedger":
        """A new ledger: same prefix, a new memory block, ``retained`` increments, next version.

        ``retained`` must be a suffix-ordered subset of this ledger's increments.
        """
        seqs = [i.seq for i in retained]
        if seqs != sorted(seqs) or len(set(seqs)) != len(seqs):
            raise LedgerError("retained increments must be in strictly increasing seq order")
        return StateLedger(
            prefix_ids=self.prefix_ids,
            epoch_ns=self.epoch_ns,
            version=self.version + 1 if version is None else version,
            memory=memory,
            increments=list(retained),
            last_seq=self.last_seq,
        )

    def copy(self) -> "StateLedger":
        """A shallow copy safe to read from another thread while this one keeps appending."""
        return StateLedger(
            prefix_ids=self.prefix_ids,
            epoch_ns=self.epoch_ns,
            version=self.version,
            memory=self.memory,
            increments=list(self.increments),
            last_seq=self.last_seq,
        )


def total_tokens(increments: Iterable[Increment]) -> int:
    """Sum of the token counts of ``increments``."""
    return sum(i.num_tokens for i in increments)
