"""The CPU fast path's weights: weight-only quantized linear layers, chosen by ``model.weights``.

Measured on the project's 2-core machine (SmolLM2-135M, one decode step after 512 cached tokens,
CPU time of one thread, ``docs/benchmarks.md``): fp32 58 ms; int4 21 ms; int8 weight-only
(``aten._weight_int8pack_mm``, bf16 activations) 33 ms; bf16 67 ms (no AMX here); torch's
dynamically quantized int8 linear 22 ms but it quantizes the activations with ONE scale per
forward, so a token's output depends on the other tokens of its forward and an incremental
append would no longer equal a fresh prefill: refused. ``torch.compile`` of the layers saved
under 2 ms per step. The fp32 weights are read once per step (538 MB: >= 16 ms at this machine's
bandwidth); int4 reads 1/7 of that.

The embedded SmolLM2 ships as a Q4_1 GGUF (4-bit groups of 32 with a scale and a minimum, the
format llama.cpp runs): its fp32 weights ARE those 4-bit values, so ``int4`` (same grouping)
re-packs them with no further loss beyond bf16 scales. ``int4`` is the CPU default.

Schemes (``model.weights``):

* ``fp32`` - the model as loaded: the reference path of the oracle;
* ``int4`` - every ``nn.Linear`` with an input width divisible by 32 (projections, MLP, LM head)
  replaced by :class:`Int4Linear` (``aten._weight_int4pack_mm_for_cpu``: asymmetric 4-bit groups
  of 32, bf16 scales, bf16 activations, fp32 out); the token embedding, norms and the KV cache
  stay fp32;
* ``int8`` - the same layers as :class:`Int8Linear` (``aten._weight_int8pack_mm``: int8 per
  output channel, bf16 activations);
* ``auto`` - ``int4`` on a CPU, ``fp32`` elsewhere (GPUs read their weights fast enough).

Both kernels treat every row (token) on its own: a token's output does not depend on what else
is in its forward, which the cache oracle needs.

A scheme that cannot run here (not a CPU model, not fp32, no quantized engine in this torch)
falls back to ``fp32`` with the reason (:func:`apply`); the backend reports what ran.
The cache stays exact *for the quantized weights*: appends, branches, crops and rebuilds give
the same greedy tokens as a fresh prefill on the same weights (test/model/test_quant.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

SCHEMES = ("auto", "fp32", "int8", "int4")
INT4_GROUP = 32
KERNELS = {"int8": "_weight_int8pack_mm", "int4": "_weight_int4pack_mm_for_cpu"}  # torch.ops.aten names


@dataclass(frozen=True)
class Applied:
    """What :func:`apply` did: ``scheme`` that runs (``fp32``/``int8``/``int4``), the one asked
    for, and why they differ (empty when they don't)."""

    scheme: str
    requested: str
    note: str = ""

    @property
    def fast(self) -> bool:
        return self.scheme != "fp32"


def resolve(weights: str, device: torch.device) -> str:
    """``auto`` -> ``int4`` on a CPU, ``fp32`` elsewhere; other names are checked and returned."""
    if weights not in SCHEMES:
        raise ValueError(f"unknown weights scheme {weights!r}; use one of {list(SCHEMES)}")
    if weights == "auto":
        return "int4" if torch.device(device).type == "cpu" else "fp32"
    return weights


def unavailable_reason(scheme: str, model: nn.Module) -> str | None:
    """Why ``scheme`` cannot run on ``model`` here (None when it can)."""
    if scheme == "fp32":
        return None
    p = next(model.parameters())
    if p.device.type != "cpu":
        return f"{scheme} weights are a CPU path (the model is on {p.device})"
    if p.dtype != torch.float32:
        return f"{scheme} weights quantize an fp32 model (this one is {p.dtype})"
    op = KERNELS[scheme]
    if not hasattr(torch.ops.aten, op):
        return f"this torch has no aten.{op}"
    return None


class Int4Linear(nn.Module):
    """``y = x W^T (+ b)`` with W in 4-bit groups of ``group`` along the input (asymmetric,
    bf16 scale and zero per group). Input ``[..., in]`` fp32 -> output ``[..., out]`` fp32."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP):
        super().__init__()
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        wg = w.reshape(out_f, in_f // group, group)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(out_f, in_f), 1))
        zero = lo + scale * 8  # the kernel computes (q - 8) * scale + zero
        self.register_buffer("scales_zeros", torch.stack([scale, zero], -1).transpose(0, 1).contiguous().bfloat16())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.group, self.in_features, self.out_features = group, in_f, out_f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_zeros)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class Int8Linear(nn.Module):
    """``y = x W^T (+ b)`` with W int8 per output channel (symmetric, bf16 scales), bf16
    activations. Input ``[..., in]`` fp32 -> output ``[..., out]`` fp32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp(min=1e-8)
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.bfloat16())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def _swap(model: nn.Module, scheme: str) -> int:
    """Replace every plain ``nn.Linear`` the scheme can take; returns how many."""
    make = Int4Linear if scheme == "int4" else Int8Linear
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and (scheme == "int8" or child.in_features % INT4_GROUP == 0):
                setattr(parent, name, make(child))
                count += 1
    return count


@torch.inference_mode()
def apply(model: nn.Module, weights: str) -> Applied:
    """Quantize ``model``'s linear layers in place as ``weights`` asks (after :func:`resolve`).

    Tied weights (LM head = token embedding) are untied by the swap: the embedding keeps its fp32
    table, the head gets its quantized copy. Returns what ran; a scheme that cannot run here
    leaves the model untouched (``fp32``) and says why."""
    scheme = resolve(weights, next(model.parameters()).device)
    reason = unavailable_reason(scheme, model)
    if reason:
        log.warning("weights %s unavailable (%s); running fp32", scheme, reason)
        return Applied("fp32", weights, reason)
    if scheme == "fp32":
        return Applied("fp32", weights)
    swapped = _swap(model, scheme)
    if not swapped:
        return Applied("fp32", weights, "no nn.Linear layer to quantize")
    log.info("weights: %s (%d linear layers quantized)", scheme, swapped)
    return Applied(scheme, weights)
