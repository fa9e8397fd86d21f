"""Learned action heads: hidden state of the newest state token -> an ``H x D`` action chunk.

The head reads the final-norm hidden state that the append of the newest increment already
computed (``CsrEngine.flush(want_hidden=True)``), so a decision costs no model forward at all.
Weights are stored with safetensors only (never pickle), with the shape, the action dimension
names and the timing in the file's metadata; loading checks them against the action registry.

Training (:func:`train_head`) reads a *recording*: JSON lines, one per accepted observation, in
episode order (see :mod:`csr_ros.core.head_data` for the format and a synthetic recorder)::

    {"episode": 3, "stamp_ns": 12000000000, "source": "/camera/objects", "text": "...", "action": "wave"}

Each episode is streamed into a fresh cached state exactly as at run time (one append per
increment); the hidden state after each append is the input and the chunk of the recorded
action (or a literal ``"chunk"``) the target.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

FORMAT = "csr_ros.action_head/1"
log = logging.getLogger("csr_ros.heads")


class ActionHead(nn.Module):
    """A two-layer MLP ``[in_dim] -> [horizon * len(names)]`` with input standardisation.

    Args:
        in_dim: model hidden size. hidden_dim: MLP width. horizon: chunk rows H.
        names: action dimension names (chunk columns, D). dt_s: seconds per row.
    """

    def __init__(self, in_dim: int, hidden_dim: int, horizon: int, names: Sequence[str], dt_s: float):
        super().__init__()
        self.in_dim, self.hidden_dim, self.horizon = in_dim, hidden_dim, horizon
        self.names, self.dt_s = tuple(names), float(dt_s)
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, horizon * len(names)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden``: ``[..., in_dim]`` -> chunk ``[..., horizon * D]`` (row-major, unclamped)."""
        return self.net((hidden - self.in_mean) / self.in_std)

    @torch.inference_mode()
    def predict(self, hidden) -> tuple[float, ...]:
        """One chunk from one hidden state (a tensor or a list of floats)."""
        h = torch.as_tensor(hidden, dtype=torch.float32).reshape(-1)
        if h.numel() != self.in_dim:
            raise ValueError(f"hidden state has {h.numel()} values, the head expects {self.in_dim}")
        return tuple(float(v) for v in self(h))

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "in_dim": str(self.in_dim), "hidden_dim": str(self.hidden_dim),
                "horizon": str(self.horizon), "names": json.dumps(list(self.names)), "dt_s": repr(self.dt_s)}


def save_head(head: ActionHead, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write the head as safetensors (weights + metadata)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    save_file(tensors, str(p), metadata={**head.metadata(), **(extra or {})})
    return p


def load_head(path: str | Path, names: Sequence[str] | None = None, horizon: int | None = None,
              in_dim: int | None = None) -> ActionHead:
    """Read a head from safetensors; checks its metadata against what the caller expects.

    Raises ValueError naming the mismatch (wrong dimensions, horizon or hidden size).
    """
    from safetensors import safe_open

    p = Path(path)
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p}: not a csr_ros action head (format {meta.get('format')!r})")
    head = ActionHead(int(meta["in_dim"]), int(meta["hidden_dim"]), int(meta["horizon"]),
                      json.loads(meta["names"]), float(meta["dt_s"]))
    for want, have, what in ((names, head.names, "action dimensions"), (horizon, head.horizon, "horizon"),
                             (in_dim, head.in_dim, "input size (model hidden size)")):
        if want is not None and (tuple(want) if what == "action dimensions" else want) != have:
            raise ValueError(f"{p}: head {what} {have!r} do not match the configured {want!r}")
    head.load_state_dict(tensors)
    return head.eval()


# ---------------------------------------------------------------------- training
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


def hidden_dataset(backend, episodes: list[list[dict]], registry, system_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stream every episode into a fresh cached state; returns (X ``[N, hidden]``, Y ``[N, H*D]``,
    the recorded action names ("" for literal chunks))."""
    from csr_ros.core.engine import CsrEngine

    xs, ys, labels = [], [], []
    for ep in episodes:
        eng = CsrEngine(backend, budget_tokens=1 << 20, system_prompt=system_prompt)
        for i, rec in enumerate(ep):
            eng.submit(rec["source"], int(rec.get("stamp_ns", i * 1_000_000_000)), rec["text"])
            out = eng.flush(want_hidden=True)
            xs.append(torch.as_tensor(out.hidden, dtype=torch.float32).reshape(-1))
            chunk = registry.entry(rec["action"]).chunk if "action" in rec else rec["chunk"]
            ys.append(torch.tensor(registry.clamp(chunk), dtype=torch.float32))
            labels.append(rec.get("action", ""))
    return torch.stack(xs), torch.stack(ys), labels


def fit_head(x: torch.Tensor, y: torch.Tensor, registry, hidden_dim: int = 32, epochs: int = 400,
             lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0) -> ActionHead:
    """Full-batch Adam on the MSE between predicted and recorded chunks."""
    torch.manual_seed(seed)
    head = ActionHead(x.shape[1], hidden_dim, registry.horizon_steps, registry.names, registry.dt_s)
    head.in_mean.copy_(x.mean(0))
    head.in_std.copy_(x.std(0).clamp_min(1e-4))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.mse_loss(head(x), y)
        loss.backward()
        opt.step()
    return head.eval()


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
    torch.manual_seed(seed)
    xt, yt, _ = hidden_dataset(backend, train_eps, registry, system_prompt)
    xv, yv, lv = hidden_dataset(backend, val_eps, registry, system_prompt)
    head = fit_head(xt, yt, registry, hidden_dim, epochs, seed=seed)
    with torch.inference_mode():
        pv = head(xv)
        val_mse = float(nn.functional.mse_loss(pv, yv))
        train_mse = float(nn.functional.mse_loss(head(xt), yt))
    hits = [nearest_entry(registry, p.tolist()) == lab for p, lab in zip(pv, lv) if lab]
    metrics = {"train_records": len(xt), "val_records": len(xv), "train_mse": train_mse, "val_mse": val_mse,
               "val_accuracy": sum(hits) / len(hits) if hits else float("nan"),
               "model": getattr(backend, "name", ""), "in_dim": int(xt.shape[1]), "hidden_dim": hidden_dim}
    save_head(head, out, {"trained_on": Path(recording).name, "metrics": json.dumps(metrics)})
    log.info("action head written to %s: %s", out, metrics)
    return metrics
