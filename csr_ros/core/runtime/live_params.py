"""Run-time parameter changes: which rows of the one parameter table may change while the core
runs, and how a change reaches it (no ROS, no torch).

The table's ``read_only`` column is the single source: a row without ``read_only: true`` may be
changed at run time (``ros2 param set``), and :func:`apply` makes every such row take effect
from the next frame on. A read-only row is refused with a reason (restart, or cleanup +
configure for the lifecycle node). A test checks that :func:`apply` covers every writable row.
"""

from __future__ import annotations

from csr_ros.core.config import CsrConfig, param_table

APPLIED = frozenset({
    "budget.high_water_frac",
    "reconciler.retry_backoff_s", "reconciler.max_backoff_s",
    "control.policy_period_s", "control.max_stamp_skew_s", "control.chunk_valid_s",
    "control.hold_on_failure", "control.fuse_policy_with_language", "control.default_instruction",
    "language.tokens_per_frame", "language.max_open_requests", "language.max_new_tokens",
})
"""The writable rows :func:`apply` puts into effect (the table's non-read-only rows)."""


def writable() -> frozenset[str]:
    """Keys of the table's rows that may change at run time (``read_only`` false)."""
    return frozenset(s.key for s in param_table() if not s.read_only)


def refusal(key: str) -> str:
    """Why a run-time change of ``key`` is refused ("" when it is allowed)."""
    if key in writable():
        return ""
    return (f"{key} is read-only at run time (parameters.yaml): it is read when the node is "
            "configured; cleanup + configure (or a restart) applies a new value")


def apply(scheduler, cfg: CsrConfig) -> None:
    """Put the writable rows of ``cfg`` into effect on a running scheduler (next frame on)."""
    c, lang = cfg.control, cfg.language
    with scheduler._lock:  # producers and the publisher read these under it
        if scheduler._instruction == scheduler.cfg.control.default_instruction:
            scheduler._instruction = c.default_instruction
        scheduler.cfg = cfg
        scheduler.policy_period_ns = round(c.policy_period_s * 1e9)
        horizon_s = scheduler.registry.horizon_steps * scheduler.registry.dt_s
        scheduler.validity_ns = round(min(c.chunk_valid_s, horizon_s) * 1e9)
        scheduler.max_skew_ns = round(c.max_stamp_skew_s * 1e9)
        scheduler.k, scheduler.max_open = lang.tokens_per_frame, lang.max_open_requests
        scheduler.language.max_new_tokens = lang.max_new_tokens
    engine = scheduler.engine
    engine.high_water_tokens = int(engine.budget_tokens * cfg.budget.high_water_frac)
    if scheduler.reconciler is not None:
        scheduler.reconciler.retry_backoff_s = cfg.reconciler.retry_backoff_s
        scheduler.reconciler.max_backoff_s = cfg.reconciler.max_backoff_s
