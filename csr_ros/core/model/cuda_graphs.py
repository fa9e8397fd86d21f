"""Decode and small appends with CUDA graphs: the tensor-side helper of :mod:`csr_ros.core.model.kv_state`.

An eager transformers forward of one token through an 8B model launches ~20 kernels per layer
from Python (12-16 ms of dispatch for 32 layers), far above the ~7-10 ms it takes a GPU to read
the weights and a 120K-token cache once. :class:`StepRunner` removes that overhead without a
second engine and without touching the Cache:

* the forward of a Llama-family model (Llama, Mistral, Qwen2, Qwen3) is written out explicitly
  with the model's OWN modules (embedding, rotary embedding, norms, q/k/v/o projections,
  optional q/k norms, MLP, final norm) and cut at its attention calls into ``L + 1`` segments:
  ``0``: embed + rotary + layer 0's q/k/v; ``i``: layer ``i-1``'s o_proj + MLP, layer ``i``'s
  q/k/v; ``L``: layer ``L-1``'s o_proj + MLP + final norm;
* on CUDA each segment is captured ONCE per *bucket* of token counts (:mod:`csr_ros.core.model.buckets`:
  1, 2, 3, 4, 6, 8, ... 256 by default) into a CUDA graph with static inputs (token ids,
  positions and the attention output as device tensors); an append of ``n`` tokens runs on the
  smallest bucket ``b >= n`` with ``b - n`` pad rows. Nothing in a graph depends on the cache
  length, so one capture serves every history length;
* between segments, eagerly: the cache write (``kv_update``: the KV state's in-place layer
  update) of the ``n`` valid rows only and :func:`csr_ros.core.model.attention.csr_attention` of
  the valid rows over exactly the valid length (flash SDPA, lower-right causal, native GQA; or
  the branch mask the KV state passes), so neither the cache nor attention ever sees padding;
* appends longer than the largest bucket, other attention settings and unsupported
  architectures return ``None`` and the KV state runs the plain transformers forward.

Per layer that leaves ~4 launches from Python (graph replay, cache write, attention, one copy),
~50-70 us, while the GPU needs ~0.3 ms per layer at 120K tokens: the step is GPU-bound.
On a CPU (tests) the same segments run eagerly (``capture=False``), which checks the explicit
forward against transformers' own. Shapes: hidden ``[1, n, hidden]``; q ``[1, Hq, n, D]``;
k, v ``[1, Hkv, n, D]``; attention output ``[1, n, Hq * D]``.
"""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from csr_ros.core.model.attention import ATTN_NAME, csr_attention
from csr_ros.core.model.buckets import bucket_for, bucket_sizes, pad_to
from csr_ros.core.model.streams import in_background

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DEFAULT_SIZES = bucket_sizes()
KVUpdate = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(layer index, k [1, Hkv, n, D], v) -> (keys, values)`` of the whole valid length."""


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot use the explicit forward (None when it can)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return f"model type {getattr(cfg, 'model_type', None)!r} not in {SUPPORTED_MODEL_TYPES}"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    base = model.get_decoder() if hasattr(model, "get_decoder") else None
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(base, name):
            return f"decoder has no {name!r}"
    rope = getattr(base.rotary_emb, "rope_type", "default")
    if not isinstance(rope, str) or "dynamic" in rope or rope == "longrope":
        return f"rope type {rope!r} recomputes frequencies from the positions (host sync)"
    for layer in base.layers:
        attn = getattr(layer, "self_attn", None)
        if not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
            return "attention module is not Llama-like"
        if not all(hasattr(layer, a) for a in ("input_layernorm", "post_attention_layernorm", "mlp")):
            return "decoder layer is not Llama-like"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Llama rotary embedding; ``cos``/``sin`` ``[1, n, D]`` broadcast over heads."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class Segments:
    """The model's forward cut at its attention calls (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        base = model.get_decoder()
        self.embed, self.rotary, self.norm = base.embed_tokens, base.rotary_emb, base.norm
        self.layers = list(base.layers)
        self.n_layers = len(self.layers)
        cfg = model.config
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def _qkv(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Layer ``i``'s rotated q ``[1, Hq, n, D]`` and k, v ``[1, Hkv, n, D]`` from normed ``x``."""
        attn = self.layers[i].self_attn
        shape = (*x.shape[:-1], -1, self.head_dim)
        q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
        if getattr(attn, "q_norm", None) is not None:  # Qwen3: per-head norms before rotary
            q, k = attn.q_norm(q), attn.k_norm(k)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        q, k = apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return q, k, v

    def _post(self, i: int, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Layer ``i`` after its attention: residual o_proj, then the residual MLP block."""
        layer = self.layers[i]
        h = h + layer.self_attn.o_proj(attn_out)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def run(self, i: int, st: dict[str, torch.Tensor]):
        """Segment ``i`` (0..L) on the tensors in ``st`` (``ids``, ``pos``, ``attn`` in; ``h``,
        ``cos``, ``sin`` carried). Returns ``(q, k, v)`` for ``i < L``, else ``(hidden,)``
        ``[1, n, hidden]`` after the final norm."""
        if i == 0:
            st["h"] = self.embed(st["ids"])
            st["cos"], st["sin"] = self.rotary(st["h"], st["pos"])
        else:
            st["h"] = self._post(i - 1, st["h"], st["attn"])
        if i == self.n_layers:
            return (self.norm(st["h"]),)
        return self._qkv(i, self.layers[i].input_layernorm(st["h"]), st["cos"], st["sin"])


@dataclass
class Captured:
    """The ``L + 1`` graphs of one token count, their static inputs and outputs."""

    st: dict[str, torch.Tensor]
    graphs: list
    outs: list[tuple[torch.Tensor, ...]]


def _graph_kwargs() -> dict:
    """``capture_error_mode='thread_local'`` where this torch has it (other threads may use CUDA)."""
    params = inspect.signature(torch.cuda.graph.__init__).parameters
    return {"capture_error_mode": "thread_local"} if "capture_error_mode" in params else {}


def capture(segs: Segments, n: int, device: torch.device, dtype: torch.dtype, width: int) -> Captured:
    """Warm up on a side stream, then capture every segment for ``n`` tokens (one memory pool,
    graphs replayed in capture order). ``width`` = Hq * D."""
    st = {"ids": torch.zeros(1, n, dtype=torch.long, device=device),
          "pos": torch.arange(n, device=device)[None],
          "attn": torch.zeros(1, n, width, dtype=dtype, device=device)}
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            warm = dict(st)
            for i in range(segs.n_layers + 1):
                segs.run(i, warm)
    torch.cuda.current_stream(device).wait_stream(side)
    pool, graphs, outs = torch.cuda.graph_pool_handle(), [], []
    for i in range(segs.n_layers + 1):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool, **_graph_kwargs()):
            outs.append(segs.run(i, st))
        graphs.append(g)
    torch.cuda.current_stream(device).synchronize()
    return Captured(st, graphs, outs)


class StepRunner:
    """Explicit forward of appends up to the largest bucket, CUDA-graphed on a GPU.

    Shared by every KV state of one model (it holds no cache). One forward at a time: a thread
    that finds it busy gets ``None`` and takes the plain path; so does a background builder
    (:func:`csr_ros.core.model.streams.background`: the graphs serve the hot path only).

    Attributes:
        sizes: the buckets (ascending); an append of ``n <= sizes[-1]`` runs padded to the smallest
            bucket holding it, longer ones fall back.
        capture: True to capture CUDA graphs (CUDA only); False runs the segments eagerly.
        stats: forwards per path: ``graph``, ``explicit``, ``declined`` (the hot path ran the plain
            forward: too long, busy, capture failed, disabled), ``background`` (a builder's forwards).
        enabled: False makes it decline every forward (eager reference runs).
    """

    def __init__(self, model: torch.nn.Module, sizes: Sequence[int] = DEFAULT_SIZES,
                 capture: bool | None = None):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"explicit forward unsupported: {reason}")
        self.model = model
        self.segs = Segments(model)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.sizes = tuple(sorted({int(s) for s in sizes}))
        self.capture = (self.device.type == "cuda") if capture is None else bool(capture)
        if self.capture and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA model")
        self._graphs: dict[int, Captured] = {}
        self._failed: set[int] = set()
        self._lock = threading.Lock()
        self._stream = None
        self.stats = {"graph": 0, "explicit": 0, "declined": 0, "background": 0}
        self.enabled = True  # False: decline everything (benchmarks compare against eager)
        self._width = model.config.num_attention_heads * self.segs.head_dim
        self._scaling = [float(layer.self_attn.scaling) for layer in self.segs.layers]

    def accepts(self, n: int) -> bool:
        """True when a forward of ``n`` tokens can run here now (on bucket ``bucket_for(n)``)."""
        if in_background():
            self.stats["background"] += 1
            return False
        size = bucket_for(n, self.sizes)
        ok = (self.enabled and size is not None and size not in self._failed
              and getattr(self.model.config, "_attn_implementation", None) == ATTN_NAME)
        if not ok:
            self.stats["declined"] += 1
        return ok

    def _attend(self, i: int, q, k, v, n: int, kv_update: KVUpdate, mask) -> torch.Tensor:
        """Cache write of the ``n`` valid rows + their attention in layer ``i``; ``[1, n, Hq * D]``."""
        keys, values = kv_update(i, k[:, :, :n], v[:, :, :n])
        out = csr_attention(q[:, :, :n], keys, values, mask, self._scaling[i])
        return out.reshape(*out.shape[:2], -1)

    def _eager(self, ids: torch.Tensor, pos: torch.Tensor, n: int, kv_update: KVUpdate, mask) -> torch.Tensor:
        st = {"ids": ids, "pos": pos}
        pad = ids.shape[1] - n
        for i in range(self.segs.n_layers):
            out = self._attend(i, *self.segs.run(i, st), n, kv_update, mask)
            st["attn"] = torch.nn.functional.pad(out, (0, 0, 0, pad)) if pad else out
        return self.segs.run(self.segs.n_layers, st)[0]

    def _replay(self, cap: Captured, ids: torch.Tensor, pos: torch.Tensor, n: int, kv_update: KVUpdate,
                mask) -> torch.Tensor:
        cap.st["ids"].copy_(ids)
        cap.st["pos"].copy_(pos)
        cap.st["attn"][:, n:].zero_()  # pad rows: finite, and never read by a valid row
        for i in range(self.segs.n_layers):
            cap.graphs[i].replay()
            cap.st["attn"][:, :n].copy_(self._attend(i, *cap.outs[i], n, kv_update, mask))
        cap.graphs[-1].replay()
        return cap.outs[-1][0].clone()  # the static output is overwritten by the next replay

    def _order_streams(self) -> None:
        """Static buffers last used on another CUDA stream: wait for that work first."""
        if self.device.type != "cuda":
            return
        stream = torch.cuda.current_stream(self.device)
        if self._stream is not None and self._stream != stream:
            stream.wait_stream(self._stream)
        self._stream = stream

    def _graph_for(self, n: int) -> Captured | None:
        cap = self._graphs.get(n)
        if cap is None and n not in self._failed:
            try:
                cap = self._graphs[n] = capture(self.segs, n, self.device, self.dtype, self._width)
            except Exception as err:  # an unsupported op under capture: eager from now on
                log.warning("CUDA graph capture for %d tokens failed (%s); using the eager path", n, err)
                self._failed.add(n)
        return cap

    def capture_all(self) -> int:
        """Capture every bucket now (so no first use pays for a capture); returns how many are
        ready. No-op (0) without ``capture``."""
        if not self.capture:
            return 0
        with self._lock, torch.inference_mode():
            self._order_streams()
            return sum(self._graph_for(s) is not None for s in self.sizes)

    @torch.inference_mode()
    def forward(self, ids: Sequence[int], positions: Sequence[int], kv_update: KVUpdate,
                mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Forward of ``ids`` at ``positions`` onto the cache behind ``kv_update``, padded to its bucket.

        ``mask``: None (lower-right causal over the whole cache) or the KV state's boolean
        ``[1, 1, n, kv]`` branch mask for the ``n`` valid rows. Returns the final-norm hidden
        states ``[n, hidden]`` of the valid rows, or ``None`` (busy, too long, or capture failed
        before anything was written: the caller runs the plain forward).
        """
        size = bucket_for(len(ids), self.sizes)
        if size is None or not self._lock.acquire(blocking=False):
            self.stats["declined"] += 1
            return None
        try:
            n = len(ids)
            ids_p, pos_p = pad_to(ids, positions, size)
            ids_t = torch.tensor([ids_p], dtype=torch.long).to(self.device)
            pos_t = torch.tensor([pos_p], dtype=torch.long).to(self.device)
            if not self.capture:
                self.stats["explicit"] += 1
                return self._eager(ids_t, pos_t, n, kv_update, mask)[0, :n]
            self._order_streams()
            cap = self._graph_for(size)
            if cap is None:
                return None
            self.stats["graph"] += 1
            return self._replay(cap, ids_t, pos_t, n, kv_update, mask)[0, :n]
        finally:
            self._lock.release()
