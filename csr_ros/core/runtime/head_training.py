"""Training a learned action head from a recording, through the engine as at run time.

A *recording* is JSON lines, one per accepted observation, in episode order (see
:mod:`csr_ros.core.runtime.head_data` for the format and a synthetic recorder)::

    {"episode": 3, "stamp_ns": 12000000000, "source": "/camera/objects", "text": "...", "action": "wave"}

Each episode is streamed into a fresh cached state exactly as at run time (one append per
increment); the hidden state after each append is the input and the chunk of the recorded
action (or a literal ``"chunk"``) the target. The head itself (module, file format, fitting)
is :mod:`csr_ros.core.model.heads`.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Sequence

from csr_ros.core.model.heads import as_row, evaluate_head, fit_head, save_head
from csr_ros.core.runtime.engine import CsrEngine

log = logging.getLogger("csr_ros.heads")


def read_recording(path: str | Path) -> list[list[dict]]:
    """Episodes of a JSONL recording, each a list of records in file order."""
    episodes: dict[int, list[dict]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        for key in ("episode", "source", "text"):
            if key not in rec:
                raise ValueError(f"{path}:{n}: record lacks {key!r}")
        if ("action" in rec) == ("chunk" in rec):
            raise ValueError(f"{path}:{n}: give exactly one of 'action' or 'chunk'")
        episodes.setdefault(int(rec["episode"]), []).append(rec)
    return list(episodes.values())


def hidden_dataset(backend, episodes: list[list[dict]], registry,
                   system_prompt: str = "") -> tuple[list[list[float]], list[list[float]], list[str]]:
    """Stream every episode into a fresh cached state; returns (X: ``N`` rows of the model's hidden
    size, Y: ``N`` rows of ``H * D`` clamped chunk values, the recorded action names; "" for
    literal chunks)."""
    xs, ys, labels = [], [], []
    for ep in episodes:
        eng = CsrEngine(backend, budget_tokens=1 << 20, system_prompt=system_prompt)
        for i, rec in enumerate(ep):
            eng.submit(rec["source"], int(rec.get("stamp_ns", i * 1_000_000_000)), rec["text"])
            out = eng.flush(want_hidden=True)
            xs.append(as_row(out.hidden))
            chunk = registry.entry(rec["action"]).chunk if "action" in rec else rec["chunk"]
            ys.append(list(registry.clamp(chunk)))
            labels.append(rec.get("action", ""))
    return xs, ys, labels


def nearest_entry(registry, chunk: Sequence[float]) -> str:
    """The registry entry whose chunk is closest (L2) to ``chunk`` (for accuracy reports)."""
    return min(registry.entries, key=lambda e: sum((a - b) ** 2 for a, b in zip(e.chunk, chunk))).name


def train_head(recording: str | Path, out: str | Path, backend, registry, hidden_dim: int = 32,
               epochs: int = 400, val_frac: float = 0.2, seed: int = 0, system_prompt: str = "") -> dict:
    """Train a head from a recording and write it as safetensors; returns metrics.

    Episodes are split (not records) into train/validation; the reported ``val_accuracy`` is the
    fraction of validation records whose predicted chunk is nearest to the recorded entry.
    """
    episodes = read_recording(recording)
    if len(episodes) < 2:
        raise ValueError(f"{recording}: need at least 2 episodes (train + validation)")
    rng = random.Random(seed)
    order = list(range(len(episodes)))
    rng.shuffle(order)
    n_val = max(1, int(math.ceil(len(episodes) * val_frac)))
    val_eps = [episodes[i] for i in order[:n_val]]
    train_eps = [episodes[i] for i in order[n_val:]]
    xt, yt, _ = hidden_dataset(backend, train_eps, registry, system_prompt)
    xv, yv, lv = hidden_dataset(backend, val_eps, registry, system_prompt)
    head = fit_head(xt, yt, registry, hidden_dim, epochs, seed=seed)
    val_mse, pv = evaluate_head(head, xv, yv)
    train_mse, _ = evaluate_head(head, xt, yt)
    hits = [nearest_entry(registry, p) == lab for p, lab in zip(pv, lv) if lab]
    metrics = {"train_records": len(xt), "val_records": len(xv), "train_mse": train_mse, "val_mse": val_mse,
               "val_accuracy": sum(hits) / len(hits) if hits else float("nan"),
               "model": getattr(backend, "name", ""), "in_dim": len(xt[0]), "hidden_dim": hidden_dim}
    save_head(head, out, {"trained_on": Path(recording).name, "metrics": json.dumps(metrics)})
    log.info("action head written to %s: %s", out, metrics)
    return metrics
