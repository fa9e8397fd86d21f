"""The model: the only code that touches tensors, a transformers Cache or a serving engine.

Owns the KV state (``kv_state``: the one module that touches the transformers Cache; in-place
layers, branch bookkeeping records), the append attention and the CUDA-graph step runner, the
learned action-head module, device resources (``device``: per-thread torch threads, CUDA
streams), and the backends (``backends/``: in-process transformers, the embedded SmolLM2, a
serving engine over HTTP, and the deterministic fake used by the tests).

May import: torch, transformers, ``csr_ros.core.config`` and ``csr_ros.core.state``. Never
``reconcile`` or ``runtime``.
"""
