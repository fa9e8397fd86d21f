"""Shared helpers for the benchmarks: timing, statistics, JSON output, plots."""

from __future__ import annotations

import argparse
import json
import random
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


def add_model_args(p: argparse.ArgumentParser, device: str = "auto", shape_example: str = "tiny") -> None:
    """The model every benchmark loads: ``--model``, ``--shape``, ``--device``, ``--dtype``, ``--weights``."""
    p.add_argument("--model", default="embedded", help="'embedded' or a local HF model folder")
    p.add_argument("--shape", default=None, help=f"random weights of a named shape instead (e.g. {shape_example})")
    p.add_argument("--device", default=device)
    p.add_argument("--dtype", default="float32", help="model dtype (bfloat16 on a GPU)")
    p.add_argument("--weights", default="auto", choices=["auto", "fp32", "int8", "int4"],
                   help="linear-layer weights (the model.weights parameter): auto = int4 on a CPU, fp32 elsewhere")


# ---------------------------------------------------------------------- the TTFT workload
INC_TOKENS, QUERY_TOKENS = 64, 32


def token_stream(vocab: int, n: int, seed: int = 0) -> list[int]:
    """Deterministic token ids avoiding the lowest 300 (special/control tokens)."""
    rng = random.Random(seed)
    return [rng.randrange(300, vocab) for _ in range(n)]


def add_server_args(p: argparse.ArgumentParser) -> None:
    """``--backend openai``: the serving-engine backend (see :mod:`csr_ros.cli.bench.ttft_server`)."""
    g = p.add_argument_group("serving engine (--backend openai)")
    g.add_argument("--backend", choices=["hf", "openai"], default="hf",
                   help="hf: in-process model; openai: a running llama-server / vLLM / SGLang server")
    g.add_argument("--url", action="append", default=None, help="server URL (repeat, or --url2, for two servers)")
    g.add_argument("--url2", default=None, help="second server URL (the standby lane)")
    g.add_argument("--dialect", default="llamacpp", choices=["llamacpp", "vllm", "sglang", "openai"])
    g.add_argument("--tokenizer", default="embedded", help="local HF folder of the served model's tokenizer")
    g.add_argument("--served-model", default="", help="model name for the /v1 APIs (default: first of /v1/models)")
    g.add_argument("--timeout-s", type=float, default=300.0, help="per-request timeout, s")


def weights_info(be) -> dict:
    """Which path ran: the weights scheme (fp32 = reference, int8/int4 = the CPU fast path), the
    one asked for, why they differ, and whether the explicit-forward runner served small appends."""
    w = be.weights
    return {"scheme": w.scheme, "requested": w.requested, "note": w.note, "fast_path": w.fast,
            "runner": None if be.runner is None else ("cuda_graphs" if be.runner.capture else "explicit")}
