"""The state: pure bookkeeping of what the cached state holds and how it is rendered.

Owns the ledger (increments, token spans, sequence numbers, versions) and its durable on-disk
store, the prefix-stable prompt template, the byte tokenizer of random-weight models, observation
stamps on one clock, the entity memory, query-time focus, and compaction *plans* (ledger ->
plan -> next ledger version). It decides; :mod:`csr_ros.core.model` only executes.

May import: the standard library, numpy, yaml, ``csr_ros.core.config`` and ``csr_ros.core.state``.
Never torch, transformers, ``model``, ``reconcile`` or ``runtime``: every module here is tested
without a model.
"""
