"""Reconciliation (ASR): compacted states built off the hot path and handed over safely.

Owns the reconciler (plan a compaction on a ledger snapshot, prefill it into a fresh KV state
on its own thread, replay what arrived meanwhile), the single-slot versioned handoff through
which the built state reaches the frame loop, and the hot-path gate at which a rebuild yields
to a running query on a shared CPU. These are the only points where the reconciler's thread
meets the hot path.

May import: ``csr_ros.core.config``, ``state`` and ``model``. Never ``runtime`` (the frame loop
calls into the reconciler, never the other way round).
"""
