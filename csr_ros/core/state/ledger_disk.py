"""The ledger file's writer and its disk faults (no torch, no ROS).

:class:`AppendLog` appends whole lines to one file, each with ONE ``write`` call, and keeps the
file a sequence of complete records whatever the disk does:

* a write that fails (``ENOSPC``, ``EROFS``, ``EIO``, ``EDQUOT``, any ``OSError``) or writes only
  part of its line is rolled back (the file is cut back to its last complete record), and the
  line is kept in a bounded in-memory *backlog* instead; the log is then ``degraded``;
* while degraded, every new line joins the backlog and, at most every ``retry_period_s``, the
  backlog is written again in order (the oldest first); once it is all on disk the log is healthy;
* a backlog that would exceed ``backlog_max_records`` is *overflowed*: it is discarded and the
  owner is asked for one snapshot record of the whole state instead (:attr:`needs_snapshot`),
  written at its next consistent point; records until then are counted as dropped, the state
  they belong to is in the snapshot.

The file layer is :class:`FileOps` (tests inject disk faults there). The counters
(:class:`StoreCounters`) are what ``/diagnostics`` reports.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("csr_ros.ledger_store")


class FileOps:
    """The file-system calls the ledger makes (plain ``os``; tests subclass it to fail)."""

    def open_append(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def truncate(self, path: Path, size: int) -> None:
        os.truncate(path, size)

    def close(self, fd: int) -> None:
        os.close(fd)


@dataclass
class StoreCounters:
    """Health of the on-disk ledger (``disk_ok`` and ``backlog_records`` are gauges).

    ``write_failures``: writes that failed (each rolled back). ``backlog_written``: held records
    written once the disk came back. ``records_dropped``: records not kept because the backlog
    was full (their state is in the snapshot written instead; ``snapshots_written``).
    ``torn_records_dropped`` / ``torn_bytes_dropped``: a torn last record found at start.
    """

    disk_ok: bool = True
    backlog_records: int = 0
    write_failures: int = 0
    backlog_written: int = 0
    backlog_overflows: int = 0
    records_dropped: int = 0
    snapshots_written: int = 0
    torn_records_dropped: int = 0
    torn_bytes_dropped: int = 0
    last_disk_error: str = ""


class _Failed(Exception):
    pass


class AppendLog:
    """Whole-line appends to ``path`` with rollback and a bounded backlog (see the module doc).

    Not thread-safe by itself (the :class:`~csr_ros.core.state.ledger_store.LedgerStore` locks).
    ``good_size``: bytes of complete records already in the file (a torn tail beyond it is cut
    off when the file is opened). ``clock``: seconds, for the retry period and batched fsyncs.
    """

    def __init__(self, path: Path, good_size: int, ops: FileOps, fsync: str, batch_period_s: float,
                 clock: Callable[[], float], backlog_max_records: int = 10000, retry_period_s: float = 1.0):
        self.path, self.ops, self.fsync, self.batch_period_s = path, ops, fsync, batch_period_s
        self.clock, self.backlog_max, self.retry_period_s = clock, backlog_max_records, retry_period_s
        self.size = good_size
        self.counters = StoreCounters()
        self._backlog: deque[bytes] = deque()
        self.needs_snapshot = False
        self.closed = False
        self.fd = -1
        self._cut_tail = True  # the file may be longer than ``size`` (a torn tail)
        self._last_sync = self._last_try = clock()
        self.records_written = 0
        self.fsyncs = 0
        try:
            self._open()
        except OSError as e:  # e.g. a read-only ledger directory: serve from memory
            self._fail(e, "open")

    # ------------------------------------------------------------------ file
    def _open(self) -> None:
        if self._cut_tail and self.path.exists() and self.path.stat().st_size > self.size:
            self.ops.truncate(self.path, self.size)
        self._cut_tail = False
        if self.fd < 0:
            self.fd = self.ops.open_append(self.path)

    def _put(self, line: bytes) -> None:
        """One line onto the disk, or the file cut back to ``size`` and :class:`_Failed`."""
        try:
            if self.fd < 0 or self._cut_tail:
                self._open()
            n = self.ops.write(self.fd, line)
            if n != len(line):
                raise OSError(errno.ENOSPC, f"short write ({n} of {len(line)} bytes)")
        except OSError as e:
            self._rollback()
            raise _Failed(e) from e
        self.size += len(line)
        self.records_written += 1
        now = self.clock()
        if self.fsync == "always" or (self.fsync == "batch" and now - self._last_sync >= self.batch_period_s):
            self._sync(now)

    def _sync(self, now: float) -> None:
        try:
            self.ops.fsync(self.fd)
            self.fsyncs += 1
            self._last_sync = now
        except OSError as e:  # the data is in the page cache; the next fsync tries again
            self._note(e, "fsync")

    def _rollback(self) -> None:
        """Cut a partly written line off; if even that fails, cut before the next write."""
        try:
            if self.fd >= 0:
                self.ops.ftruncate(self.fd, self.size)
        except OSError:
            self._cut_tail = True

    # ------------------------------------------------------------------ faults
    def _note(self, e: BaseException, what: str) -> None:
        self.counters.write_failures += 1
        name = errno.errorcode.get(getattr(e, "errno", None) or 0, "")
        self.counters.last_disk_error = f"{what}: {name} {e}".replace("  ", " ")

    def _fail(self, e: BaseException, what: str) -> None:
        first = self.counters.disk_ok
        self._note(e, what)
        self.counters.disk_ok = False
        self._last_try = self.clock()
        if first:
            log.error("ledger %s: %s failed (%s): serving from memory, %d records at most held until the "
                      "disk returns", self.path, what, e, self.backlog_max)

    def _hold(self, line: bytes) -> None:
        if self.needs_snapshot:
            self.counters.records_dropped += 1
        elif len(self._backlog) >= self.backlog_max:
            self.counters.records_dropped += len(self._backlog) + 1
            self.counters.backlog_overflows += 1
            self._backlog.clear()
            self.needs_snapshot = True
            log.error("ledger %s: backlog full (%d records): a snapshot of the state is written when the "
                      "disk returns", self.path, self.backlog_max)
        else:
            self._backlog.append(line)
        self.counters.backlog_records = len(self._backlog)

    def _due(self) -> bool:
        return self.clock() - self._last_try >= self.retry_period_s

    def _drain(self) -> bool:
        """Write the backlog, oldest first; True when it is empty (and no snapshot is owed)."""
        self._last_try = self.clock()
        try:
            while self._backlog:
                self._put(self._backlog[0])
                self._backlog.popleft()
                self.counters.backlog_written += 1
        except _Failed as e:
            self._note(e.__cause__ or e, "write")
            return False
        finally:
            self.counters.backlog_records = len(self._backlog)
        if self.needs_snapshot:
            return False
        if not self.counters.disk_ok:
            self.counters.disk_ok = True
            log.warning("ledger %s: the disk is back, %d held records written", self.path,
                        self.counters.backlog_written)
        return True

    # ------------------------------------------------------------------ API
    def append(self, line: bytes) -> None:
        """Append one complete record line (never raises for a disk error: it is held)."""
        if self.closed:
            raise ValueError(f"ledger store {self.path} is closed")
        if self.counters.disk_ok or (self._due() and self._drain()):
            try:
                self._put(line)
                return
            except _Failed as e:
                self._fail(e.__cause__ or e, "write")
        self._hold(line)

    def write_snapshot(self, line: bytes) -> bool:
        """Write the snapshot owed after an overflow (the caller built it at a consistent point,
        covering every record dropped). True when it is on disk."""
        if not self.needs_snapshot or not self._due():
            return False
        self._last_try = self.clock()
        try:
            self._put(line)
        except _Failed as e:
            self._note(e.__cause__ or e, "snapshot")
            return False
        self.needs_snapshot = False
        self.counters.snapshots_written += 1
        self._drain()
        return True

    def sync(self) -> None:
        if not self.counters.disk_ok:
            self._drain()
        if self.fd >= 0 and self.counters.disk_ok:
            self._sync(self.clock())

    def close(self) -> None:
        if self.closed:
            return
        if not self.counters.disk_ok:
            self._drain()
        if self.fd >= 0 and self.counters.disk_ok and self.fsync != "never":
            self._sync(self.clock())
        if self._backlog or self.needs_snapshot:
            log.error("ledger %s closed with %d records not on disk (%s)", self.path, len(self._backlog),
                      self.counters.last_disk_error)
        if self.fd >= 0:
            try:
                self.ops.close(self.fd)
            except OSError:
                pass
        self.fd = -1
        self.closed = True
