"""Handoff: single-slot, versioned, thread-safe latest-value mailbox."""

from __future__ import annotations

import threading

import pytest

from csr_ros.core.reconcile.handoff import Handoff

pytestmark = pytest.mark.core


def test_offer_take_keeps_only_the_newest():
    box: Handoff[str] = Handoff()
    assert box.peek_version() is None
    assert box.take_if_newer(0) is None
    assert box.offer(1, "a")
    assert box.offer(3, "c")
    assert not box.offer(2, "b")  # older than the newest offer: dropped
    assert not box.offer(3, "c2")  # same version: dropped
    assert box.peek_version() == 3
    assert box.take_if_newer(0) == (3, "c")
    assert box.peek_version() is None  # the take emptied the slot
    assert box.take_if_newer(0) is None
    assert not box.offer(3, "again")  # versions never go backwards, also after a take


def test_stale_payload_is_discarded_not_returned():
    box: Handoff[str] = Handoff()
    box.offer(5, "v5")
    assert box.take_if_newer(5) is None  # consumer already serves v5 (e.g. a sync fallback)
    assert box.peek_version() is None
    box.offer(6, "v6")
    assert box.take_if_newer(5) == (6, "v6")


def test_clear_drops_the_payload():
    box: Handoff[int] = Handoff()
    box.offer(1, 10)
    box.clear()
    assert box.take_if_newer(0) is None
    assert box.offer(2, 20)


def test_concurrent_producer_consumer_sees_increasing_versions_and_the_last():
    box: Handoff[int] = Handoff()
    n = 5000
    seen: list[int] = []
    done = threading.Event()

    def produce():
        for v in range(1, n + 1):
            assert box.offer(v, v * 10)
        done.set()

    def consume():
        current = 0
        while not done.is_set() or box.peek_version() is not None:
            got = box.take_if_newer(current)
            if got is not None:
                v, payload = got
                assert payload == v * 10  # version and payload always travel together
                seen.append(v)
                current = v

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen and seen == sorted(set(seen))
    assert seen[-1] == n
