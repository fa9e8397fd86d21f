"""Learned action heads: hidden state of the newest state token -> an ``H x D`` action chunk.

The head reads the final-norm hidden state that the append of the newest increment already
computed (``CsrEngine.flush(want_hidden=True)``), so a decision costs no model forward at all.
Weights are stored with safetensors only (never pickle), with the shape, the action dimension
names and the timing in the file's metadata; loading checks them against the action registry.

This module is the tensor side (the module, its file format, fitting it on rows of numbers);
:mod:`csr_ros.core.runtime.head_training` streams a recording through the engine to get those
rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

FORMAT = "csr_ros.action_head/1"
Rows = Sequence[Sequence[float]]


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


# ---------------------------------------------------------------------- fitting
def as_row(hidden) -> list[float]:
    """One hidden state (a tensor of any shape, or numbers) as a flat list of floats."""
    return torch.as_tensor(hidden, dtype=torch.float32).reshape(-1).tolist()


def fit_head(x: Rows, y: Rows, registry, hidden_dim: int = 32, epochs: int = 400,
             lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0) -> ActionHead:
    """Full-batch AdamW on the MSE between predicted and recorded chunks. ``x``: ``N`` rows of
    ``in_dim`` hidden values; ``y``: ``N`` rows of ``H * D`` chunk values (row-major)."""
    torch.manual_seed(seed)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    head = ActionHead(xt.shape[1], hidden_dim, registry.horizon_steps, registry.names, registry.dt_s)
    head.in_mean.copy_(xt.mean(0))
    head.in_std.copy_(xt.std(0).clamp_min(1e-4))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.mse_loss(head(xt), yt)
        loss.backward()
        opt.step()
    return head.eval()


@torch.inference_mode()
def evaluate_head(head: ActionHead, x: Rows, y: Rows) -> tuple[float, list[list[float]]]:
    """``(MSE, predicted chunks)`` of ``head`` on rows ``x`` against targets ``y``."""
    pred = head(torch.tensor(x, dtype=torch.float32))
    return float(nn.functional.mse_loss(pred, torch.tensor(y, dtype=torch.float32))), pred.tolist()
