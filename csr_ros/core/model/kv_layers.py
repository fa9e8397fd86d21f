"""A preallocated cache layer written in place (used only by :mod:`csr_ros.core.model.kv_state`).

transformers' ``DynamicLayer`` grows by ``torch.cat``, so every append copies the whole history
(at 7680 tokens of SmolLM2 that is ~350 MB per append; at 120K tokens of an 8B model, 15 GB).
``InPlaceLayer`` keeps K/V in a buffer with spare capacity: an append writes only the new rows,
a crop only moves the length, and attention receives views of exactly the valid length, so no
mask is needed for it. The buffer doubles when full (one copy, amortised).

Shapes: buffers ``[batch, kv_heads, capacity, head_dim]``; ``keys``/``values`` are views
``[batch, kv_heads, length, head_dim]``.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class InPlaceLayer(DynamicLayer):
    """A DynamicLayer-compatible layer over a preallocated, in-place buffer."""

    def __init__(self, capacity_tokens: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.capacity_tokens = max(16, int(capacity_tokens))
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        cap = self.capacity_tokens
        self._k = key_states.new_empty(b, h, cap, d)
        self._v = value_states.new_empty(b, h, cap, value_states.shape[-1])
        self._len = 0
        self.device = key_states.device
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._k[..., : self._len, :]
        self.values = self._v[..., : self._len, :]

    def _ensure(self, total: int) -> None:
        cap = self._k.shape[-2]
        if total <= cap:
            return
        while cap < total:
            cap *= 2
        k = self._k.new_empty(*self._k.shape[:2], cap, self._k.shape[-1])
        v = self._v.new_empty(*self._v.shape[:2], cap, self._v.shape[-1])
        k[..., : self._len, :] = self._k[..., : self._len, :]
        v[..., : self._len, :] = self._v[..., : self._len, :]
        self._k, self._v = k, v

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new rows in place; return views of the whole valid length."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self._ensure(self._len + n)
        self._k[..., self._len:self._len + n, :] = key_states
        self._v[..., self._len:self._len + n, :] = value_states
        self._len += n
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``abs(tokens_to_remove)`` tokens (negative counts, like DynamicLayer)."""
        if tokens_to_remove > 0:
            raise ValueError("crop() takes a negative count of tokens to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._len = max(0, self._len - abs(tokens_to_remove))
        self._refresh_views()

    def reset(self) -> None:
        self._len = 0
        if self.is_initialized:
            self._refresh_views()

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else self._k.shape[-2]


def use_in_place_layers(cache, capacity_tokens: int) -> bool:
    """Swap a fresh cache's plain DynamicLayers for InPlaceLayers (sliding/linear layers are left
    alone). Returns True when every layer was swapped."""
    swapped = 0
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and not layer.is_initialized:
            cache.layers[i] = InPlaceLayer(capacity_tokens)
            swapped += 1
    return swapped == len(cache.layers)
