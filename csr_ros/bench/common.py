"""Shared helpers for the benchmarks: timing, statistics, JSON output, plots."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable


def sync(device) -> None:
    """Wait for queued GPU work so wall-clock timings are real."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device) -> tuple[float, object]:
    """Seconds taken by ``fn()`` (GPU-synchronised) and its result."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in samples_s]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "n": len(ms)}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    vals = sorted(values)
    k = max(0, min(len(vals) - 1, int(round(q / 100.0 * len(vals) + 0.5)) - 1))
    return vals[k]


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def device_name(device) -> str:
    import platform

    import torch

    if getattr(device, "type", "") == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
