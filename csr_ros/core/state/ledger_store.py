"""Durable, append-only on-disk ledger (no torch, no ROS).

One file, ``<dir>/ledger.csrl``, one record per line::

    <crc32 of the JSON, 8 hex digits> <compact JSON>\\n

Records (``"t"``): ``header`` (format, pinned prefix token ids, free-form meta), ``epoch`` (the
stamp rendered times are relative to), ``inc`` (one accepted increment: seq, source, stamp, text,
token ids, facts; written when it is accepted) and ``compaction`` (a new state version was
installed: its version, policy, memory block with token ids, and which increments it retained).
Replaying the records reproduces the engine's ledger exactly: same versions, same memory blocks,
same tokens (:func:`restore`).

Durability: each record is written with ONE ``os.write`` of the whole line (no user-space
buffer), so a killed process never loses an earlier record. ``fsync`` decides when the OS is
forced to put it on disk: ``always`` (every record), ``batch`` (when ``batch_period_s`` has
passed since the last fsync, and on :meth:`LedgerStore.sync`/``close``), ``never``. A power
loss or a crash in the middle of a write can leave a torn last record; reading tolerates exactly
that (it is dropped, and cut off when the store is reopened for writing). A bad record followed
by good ones is corruption, not a torn write: :class:`LedgerCorrupt`.

Disk faults (``ENOSPC``, ``EROFS``, ...): a failed or partial write is cut back off the file and
the record is held in a bounded in-memory backlog, written when the disk returns; serving goes on
from memory (:mod:`csr_ros.core.state.ledger_disk`, counters in :attr:`LedgerStore.counters`).
A backlog that overflows is replaced by one ``snapshot`` record of the whole state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.ledger import Fact, Increment, LedgerError, MemoryBlock, StateLedger
from csr_ros.core.state.ledger_disk import AppendLog, FileOps, StoreCounters

log = logging.getLogger("csr_ros.ledger_store")

FILE_NAME = "ledger.csrl"
FORMAT = 1
FSYNC_POLICIES = ("always", "batch", "never")


class LedgerCorrupt(RuntimeError):
    """The on-disk ledger is damaged before its last record (the message says where)."""


# ------------------------------------------------------------------------------ records
def encode_record(rec: dict) -> bytes:
    """One line: ``crc32 json\\n`` (ASCII JSON, so the line holds no raw newline)."""
    body = json.dumps(rec, separators=(",", ":"), ensure_ascii=True, sort_keys=True)
    return f"{zlib.crc32(body.encode()):08x} {body}\n".encode()


def decode_record(line: bytes) -> dict | None:
    """The record of a complete line (with its newline), or None when it fails its checksum."""
    if len(line) < 11 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        rec = json.loads(body)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def read_records(path: Path) -> tuple[list[dict], int, int]:
    """All good records of a ledger file, the length of the good part, and the torn bytes.

    Reads line by line (never the whole file into one buffer).

    Raises:
        LedgerCorrupt: a bad record that is not the last one.
    """
    records, pos, bad_at = [], 0, None
    if not path.exists():
        return records, 0, 0
    with open(path, "rb") as f:
        for line in f:
            if bad_at is not None:  # a bad record with more after it
                raise LedgerCorrupt(f"{path}: bad record at byte {bad_at} followed by more records")
            rec = decode_record(line)
            if rec is None:
                bad_at = pos
            else:
                records.append(rec)
            pos += len(line)
    if bad_at is not None:
        return records, bad_at, pos - bad_at
    return records, pos, 0


def increment_record(inc: Increment) -> dict:
    return {"t": "inc", "seq": inc.seq, "src": inc.source, "stamp": inc.stamp_ns, "text": inc.text,
            "ids": list(inc.token_ids), "facts": [[f.entity, f.attribute, f.value, f.stamp_ns] for f in inc.facts]}


def increment_from(rec: dict) -> Increment:
    facts = tuple(Fact(str(e), str(a), str(v), int(s)) for e, a, v, s in rec["facts"])
    return Increment(int(rec["seq"]), rec["src"], int(rec["stamp"]), rec["text"], tuple(rec["ids"]), facts)


def compaction_record(ledger: StateLedger, policy: str, evicted_by_policy: int) -> dict:
    m = ledger.memory
    first = ledger.increments[0].seq if ledger.increments else ledger.last_seq + 1
    return {"t": "compaction", "version": ledger.version, "policy": policy, "first_retained_seq": first,
            "retained": len(ledger.increments), "last_seq": ledger.last_seq, "evicted_by_policy": evicted_by_policy,
            "memory": {"text": m.text, "ids": list(m.token_ids), "covers": m.covers_through_seq,
                       "represented": m.represented_seqs}}


# ------------------------------------------------------------------------------ restore
@dataclass
class Restored:
    """What a ledger file says the state is.

    Attributes:
        ledger: the state (all accepted increments not evicted; may exceed the budget if the
            process died with increments pending: the engine moves the newest into pending).
        memory: entity memory of every accepted increment.
        evicted_memory: entity memory of the increments up to ``ledger.memory.covers_through_seq``
            (what the ``entity_memory`` policy builds its next memory block on).
        increments / compactions / snapshots: records replayed (a snapshot, written after the
            disk was away for longer than the backlog holds, restarts the count). evicted_by_policy: increments dropped by
            ``drop_oldest`` compactions. torn_bytes: bytes of a torn last record (ignored).
        meta: the header's meta.
    """

    ledger: StateLedger
    memory: EntityMemory
    evicted_memory: EntityMemory
    increments: int = 0
    compactions: int = 0
    snapshots: int = 0
    evicted_by_policy: int = 0
    torn_bytes: int = 0
    meta: dict = field(default_factory=dict)


def _apply_compaction(ledger: StateLedger, rec: dict) -> StateLedger:
    m = rec["memory"]
    memory = MemoryBlock(m["text"], tuple(m["ids"]), int(m["covers"]), int(m["represented"]))
    kept = [i for i in ledger.increments if i.seq >= rec["first_retained_seq"]]
    if sum(1 for i in kept if i.seq <= rec["last_seq"]) != rec["retained"]:
        raise LedgerCorrupt(f"compaction to version {rec['version']} retained {rec['retained']} increments, "
                            "the records before it do not have them")
    return ledger.compacted(memory, kept, version=int(rec["version"]))


def _apply_snapshot(ledger: StateLedger, rec: dict, everything: list[Increment]) -> StateLedger:
    """The whole state from a snapshot record (written after a backlog overflow: the records
    before it miss some increments, the snapshot has every one the state holds)."""
    m = rec["memory"]
    memory = MemoryBlock(m["text"], tuple(m["ids"]), int(m["covers"]), int(m["represented"]))
    incs = [increment_from(r) for r in rec["incs"]]
    base = StateLedger(prefix_ids=ledger.prefix_ids, epoch_ns=int(rec["epoch_ns"]))
    out = base.compacted(memory, incs, version=int(rec["version"]))
    out.last_seq = int(rec["last_seq"])
    known = {i.seq for i in everything}
    everything.extend(i for i in incs if i.seq not in known)
    return out


def restore_records(records: Sequence[dict], torn_bytes: int = 0) -> Restored | None:
    """Replay records into a :class:`Restored` (None when there is no header)."""
    if not records or records[0].get("t") != "header":
        if records:
            raise LedgerCorrupt("the first record is not a header")
        return None
    head = records[0]
    if head.get("format") != FORMAT:
        raise LedgerCorrupt(f"unsupported ledger format {head.get('format')!r}")
    ledger = StateLedger(prefix_ids=tuple(head["prefix_ids"]), epoch_ns=-1)
    everything: list[Increment] = []
    out = Restored(ledger, EntityMemory(), EntityMemory(), torn_bytes=torn_bytes, meta=dict(head.get("meta", {})))
    for rec in records[1:]:
        kind = rec.get("t")
        if kind == "inc":
            inc = increment_from(rec)
            out.ledger.append(inc)  # raises LedgerError on a sequence that goes backwards
            everything.append(inc)
            out.increments += 1
        elif kind == "epoch":
            out.ledger.epoch_ns = int(rec["epoch_ns"])
        elif kind == "compaction":
            out.ledger = _apply_compaction(out.ledger, rec)
            out.compactions += 1
            out.evicted_by_policy += int(rec.get("evicted_by_policy", 0))
        elif kind == "snapshot":
            out.ledger = _apply_snapshot(out.ledger, rec, everything)
            out.snapshots += 1
            out.increments, out.evicted_by_policy = int(rec["increments_total"]), int(rec["evicted_by_policy"])
        else:
            raise LedgerCorrupt(f"unknown record type {kind!r}")
    out.memory.observe_all(everything)
    covers = out.ledger.memory.covers_through_seq
    out.evicted_memory.observe_all(i for i in everything if i.seq <= covers)
    return out


def restore(directory: str | Path) -> Restored | None:
    """Read-only restore of the ledger in ``directory`` (None when there is none yet)."""
    records, _, torn = read_records(Path(directory) / FILE_NAME)
    return restore_records(records, torn)


# ------------------------------------------------------------------------------ the store
class LedgerStore:
    """Append-only writer of one ledger file (thread-safe; normally the engine's thread only).

    Opening cuts off a torn last record. Use :meth:`restore` to read what is there, then
    :meth:`begin` before the first append of a new ledger.
    """

    def __init__(self, directory: str | Path, fsync: str = "batch", batch_period_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic, backlog_max_records: int = 10000,
                 retry_period_s: float = 1.0, ops: FileOps | None = None):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r} is not one of {FSYNC_POLICIES}")
        self.dir = Path(directory)
        self.path = self.dir / FILE_NAME
        self.fsync = fsync
        self._lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only parent: the log below reports it (and retries)
            log.error("ledger directory %s: %s", self.dir, e)
        created = not self.path.exists()
        records, good, torn = read_records(self.path)
        self._restored = restore_records(records, torn)
        self._log_args = (ops or FileOps(), fsync, batch_period_s, clock, backlog_max_records, retry_period_s)
        self._log = AppendLog(self.path, good, *self._log_args)
        if torn:
            log.warning("%s: dropping a torn last record (%d bytes)", self.path, torn)
            self._log.counters.torn_records_dropped, self._log.counters.torn_bytes_dropped = 1, torn
        if created and self._log.fd >= 0:
            self._fsync_dir()
        self._has_header = self._restored is not None
        self._epoch_written = self._restored is not None and self._restored.ledger.epoch_ns >= 0

    @property
    def counters(self) -> StoreCounters:
        """The disk's health (what ``/diagnostics`` reports); read it under no lock: a copy."""
        with self._lock:
            return dataclasses.replace(self._log.counters)

    @property
    def records_written(self) -> int:
        return self._log.records_written

    @property
    def fsyncs(self) -> int:
        return self._log.fsyncs

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.dir, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reading
    def restore(self) -> Restored | None:
        """What was on disk when the store was opened (None for a new ledger)."""
        return self._restored

    @property
    def has_header(self) -> bool:
        return self._has_header

    # ------------------------------------------------------------------ writing
    def _write(self, rec: dict) -> None:
        """Append one record; a disk error does not raise (the record is held: see
        :mod:`csr_ros.core.state.ledger_disk`). Raises ValueError when the store is closed."""
        line = encode_record(rec)
        with self._lock:
            self._log.append(line)

    @property
    def needs_snapshot(self) -> bool:
        """The backlog overflowed: :meth:`write_snapshot` of the whole state is owed."""
        return self._log.needs_snapshot

    def write_snapshot(self, ledger: StateLedger, increments_total: int, evicted_by_policy: int) -> bool:
        """After a backlog overflow: one record of the whole state (``ledger`` with every accepted
        increment not evicted, and the totals so far), written when the disk takes it. Call it at
        a consistent point (no record of the state half written). True when it is on disk."""
        if not self._log.needs_snapshot:
            return False
        rec = {**compaction_record(ledger, "snapshot", evicted_by_policy), "t": "snapshot",
               "epoch_ns": ledger.epoch_ns, "incs": [increment_record(i) for i in ledger.increments],
               "increments_total": increments_total}
        with self._lock:
            return self._log.write_snapshot(encode_record(rec))

    def begin(self, prefix_ids: Sequence[int], meta: dict | None = None) -> None:
        """Write the header of a new ledger; on an existing one, check the prefix is the same.

        Raises:
            LedgerError: the file holds a ledger of a different pinned prefix.
        """
        if self._has_header:
            have = self._restored.ledger.prefix_ids if self._restored else ()
            if tuple(have) != tuple(prefix_ids):
                raise LedgerError(f"{self.path} holds a ledger with a different system prefix "
                                  "(another model or system prompt): use another directory")
            return
        self._write({"t": "header", "format": FORMAT, "prefix_ids": list(prefix_ids), "meta": dict(meta or {})})
        self._has_header = True

    def set_epoch(self, epoch_ns: int) -> None:
        """Record the state's epoch once (later calls are ignored)."""
        if not self._epoch_written:
            self._write({"t": "epoch", "epoch_ns": int(epoch_ns)})
            self._epoch_written = True

    def append_increment(self, inc: Increment) -> None:
        self._write(increment_record(inc))

    def append_compaction(self, ledger: StateLedger, policy: str, evicted_by_policy: int = 0) -> None:
        """Record that ``ledger`` (a new version) replaced the state."""
        self._write(compaction_record(ledger, policy, evicted_by_policy))

    def sync(self) -> None:
        """Force everything written so far onto the disk (and try the held records again)."""
        with self._lock:
            self._log.sync()

    def archive(self) -> Path:
        """Keep the ledger file under a new name (``ledger.<UTC time>.csrl``; never overwritten,
        never deleted) and start a new, empty one in its place (:meth:`begin` must follow).
        Returns the archive's path."""
        with self._lock:
            if self._log.closed:
                raise ValueError(f"ledger store {self.path} is closed")
            self._log.close()  # a final fsync (and a last try of any held records)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            dest, n = self.dir / f"ledger.{stamp}.csrl", 1
            while dest.exists():
                dest, n = self.dir / f"ledger.{stamp}.{n}.csrl", n + 1
            os.rename(self.path, dest)
            self._log = AppendLog(self.path, 0, *self._log_args)
            self._fsync_dir()
            self._restored, self._has_header, self._epoch_written = None, False, False
        return dest

    def close(self) -> None:
        with self._lock:
            self._log.close()

    def __enter__(self) -> "LedgerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
