"""The runtime: the engine and the frames that serve actions and language from one state.

Owns the CSR engine (ledger + KV state + budget, one owner thread), the frame scheduler and its
plain worker loop, the batched language lane, the action registry and the policies that pick
chunks, the answer contexts, the bounded intake of what producers may queue, and the synthetic
recordings used to train action heads.

May import: every other core subsystem (``config``, ``state``, ``model``, ``reconcile``). Never
``csr_ros.nodes`` or ``csr_ros.cli``; the ROS nodes wrap it, they are not part of it.
"""
