"""The ledger's disk fails under a serving engine: ENOSPC, a read-only directory, a partial write,
a backlog that overflows, a torn last record. Faults are injected at the file layer
(:class:`csr_ros.core.state.ledger_disk.FileOps`): a root process ignores chmod, so a read-only
directory is an ``open`` that fails with EROFS, as the kernel answers on a read-only mount.

Defined behaviour: the engine keeps serving from memory, the store reports it (counters that
/diagnostics shows as ERROR), accepted records wait in a bounded backlog and are written when
the disk returns, and the file only ever holds complete records."""

from __future__ import annotations

import errno

import pytest

from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.state.ledger_disk import FileOps
from csr_ros.core.state.ledger_store import FILE_NAME, LedgerStore, read_records, restore

pytestmark = pytest.mark.core
S = 1_000_000_000


class FlakyDisk(FileOps):
    """A disk that fails with ``error`` while ``failing``; ``partial``: the failing write first
    puts half of its bytes on the disk (what a filling disk does) and reports a short count."""

    def __init__(self, error: int = errno.ENOSPC, partial: bool = False, fail_open: bool = False):
        self.error, self.partial, self.failing, self.fail_open = error, partial, False, fail_open

    def _raise(self):
        raise OSError(self.error, f"injected: {errno.errorcode[self.error]}")

    def open_append(self, path):
        if self.fail_open:
            self._raise()
        return super().open_append(path)

    def write(self, fd, data):
        if not self.failing:
            return super().write(fd, data)
        if self.partial:
            return super().write(fd, data[: len(data) // 2])
        self._raise()

    def fsync(self, fd):
        if self.failing:
            self._raise()
        super().fsync(fd)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _engine(fake, tmp_path, disk, clock, **kw):
    st = LedgerStore(tmp_path, fsync="always", clock=clock, retry_period_s=1.0, ops=disk, **kw)
    return CsrEngine(fake, budget_tokens=4000, store=st), st


def _file_is_clean(tmp_path) -> list[int]:
    """The file holds only complete records (no torn tail, no corruption); their inc seqs."""
    records, _, torn = read_records(tmp_path / FILE_NAME)
    assert torn == 0
    return [r["seq"] for r in records if r["t"] == "inc"]


@pytest.mark.parametrize("partial", [False, True], ids=["enospc", "enospc-partial-write"])
def test_a_full_disk_keeps_serving_holds_the_records_and_writes_them_when_it_returns(fake, tmp_path, partial):
    disk, clock = FlakyDisk(errno.ENOSPC, partial), Clock()
    eng, st = _engine(fake, tmp_path, disk, clock)
    for k in range(3):
        eng.submit("/cam", (10 + k) * S, f"before {k}")
    disk.failing = True
    for k in range(3, 8):
        eng.submit("/cam", (10 + k) * S, f"while full {k}")
        clock.t += 0.3
    assert eng.query("what is on the table?").text  # served from memory
    c = st.counters
    assert not c.disk_ok and c.backlog_records == 5 and c.write_failures >= 1 and "ENOSPC" in c.last_disk_error
    assert _file_is_clean(tmp_path) == [0, 1, 2]  # a half-written record was cut back off
    disk.failing = False
    clock.t += 1.0
    eng.submit("/cam", 18 * S, "the disk is back")
    c = st.counters
    assert c.disk_ok and c.backlog_records == 0 and c.backlog_written == 5
    assert _file_is_clean(tmp_path) == list(range(9))
    st.close()
    assert [i.seq for i in restore(tmp_path).ledger.increments] == list(range(9))


def test_a_read_only_ledger_directory_serves_from_memory_and_writes_once_writable(fake, tmp_path):
    LedgerStore(tmp_path).close()  # an existing, empty ledger file
    disk, clock = FlakyDisk(errno.EROFS, fail_open=True), Clock()
    eng, st = _engine(fake, tmp_path, disk, clock)  # the header is the first held record
    for k in range(4):
        eng.submit("/cam", (10 + k) * S, f"obs {k}")
    assert eng.query("anything?").text and eng.check_invariant()
    c = st.counters
    assert not c.disk_ok and c.backlog_records == 6 and "EROFS" in c.last_disk_error  # header, epoch, 4 incs
    assert (tmp_path / FILE_NAME).stat().st_size == 0
    disk.fail_open = False  # remounted read-write
    clock.t += 1.0
    eng.submit("/cam", 14 * S, "obs 4")
    assert st.counters.disk_ok and _file_is_clean(tmp_path) == list(range(5))


def test_a_backlog_that_overflows_is_replaced_by_one_snapshot_of_the_state(fake, tmp_path):
    disk, clock = FlakyDisk(errno.ENOSPC), Clock()
    eng, st = _engine(fake, tmp_path, disk, clock, backlog_max_records=3)
    eng.submit("/cam", 10 * S, "first")
    disk.failing = True
    for k in range(1, 9):
        eng.submit("/cam", (10 + k) * S, f"obs {k}")
    eng.compact_now("test")  # a new state version while the disk is away
    c = st.counters
    assert c.backlog_overflows == 1 and c.records_dropped >= 6 and st.needs_snapshot
    disk.failing = False
    clock.t += 1.0
    eng.submit("/cam", 19 * S, "after")  # the snapshot goes first, at this consistent point
    assert st.counters.snapshots_written == 1 and st.counters.disk_ok
    st.close()
    r = restore(tmp_path)
    eng.flush()
    assert r.snapshots == 1 and r.ledger.token_ids() == eng.ledger.token_ids()
    assert r.ledger.version == eng.ledger.version and r.increments == eng.counters.increments_total == 10


def test_a_torn_last_record_is_dropped_at_restart_and_counted(fake, tmp_path):
    st = LedgerStore(tmp_path)
    eng = CsrEngine(fake, budget_tokens=4000, store=st)
    for k in range(4):
        eng.submit("/cam", (10 + k) * S, f"obs {k}")
    st.close()
    path = tmp_path / FILE_NAME
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 7])  # the last record lost its end (power cut)
    st2 = LedgerStore(tmp_path)
    c = st2.counters
    assert c.torn_records_dropped == 1 and c.torn_bytes_dropped > 0
    eng2 = CsrEngine(fake, budget_tokens=4000, store=st2)
    assert [i.seq for i in eng2.ledger.increments + eng2.pending] == [0, 1, 2]
    eng2.submit("/cam", 20 * S, "appended after the cut")
    st2.close()
    assert _file_is_clean(tmp_path) == [0, 1, 2, 3]
