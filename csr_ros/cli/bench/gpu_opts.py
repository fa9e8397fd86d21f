"""GPU options shared by ``bench evict``, ``bench multitask`` and ``bench ttft``: CUDA graphs and
their bucket bound, the hot path's high-priority stream, split-KV attention.

On a CPU the same options parse and run: ``--cuda-graphs explicit`` runs the graph runner's
padded segmented forward without capture, the stream and split-KV switches are no-ops (split-KV
only routes CUDA tensors), so a CPU run of a bench exercises the code paths of the GPU run.
"""

from __future__ import annotations

import argparse

from csr_ros.core.model.buckets import DEFAULT_MAX_TOKENS


def add_gpu_args(p: argparse.ArgumentParser, graphs: bool = True, streams: bool = True) -> None:
    """``--graph-max-tokens``, ``--split-kv``; with ``graphs`` ``--cuda-graphs``, with ``streams``
    ``--hot-stream``."""
    g = p.add_argument_group("GPU")
    if graphs:
        g.add_argument("--cuda-graphs", choices=["on", "off", "explicit"], default="on",
                       help="CUDA graphs for every forward up to --graph-max-tokens (CUDA only); explicit: the "
                            "same padded segmented forward without capture, on any device (CPU dry runs)")
    g.add_argument("--graph-max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help="largest forward served by a captured bucket (longer ones: the plain forward)")
    if streams:
        g.add_argument("--hot-stream", choices=["on", "off"], default="on",
                       help="CUDA: the inference thread runs on a high-priority stream, the rebuild on a low one")
    g.add_argument("--split-kv", choices=["on", "off"], default="off",
                   help="CUDA: split-KV (flash-decoding) Triton attention for small appends onto a long cache")


def graphs_mode(args) -> bool | str:
    """``--cuda-graphs`` as ``load_shape``/``load_hf`` take it."""
    return {"on": True, "off": False}.get(getattr(args, "cuda_graphs", "on"), "explicit")


def load_backend(args, attn: str = "csr"):
    """The bench's model (``--shape`` random weights or ``--model``) with the graph options, and
    the split-KV switch applied."""
    from csr_ros.core.model import attention
    from csr_ros.core.model.backends.hf import load_hf, load_shape

    attention.set_split_kv(getattr(args, "split_kv", "off") == "on")
    kw = dict(device=args.device, dtype=args.dtype, attn=attn, cuda_graphs=graphs_mode(args),
              graph_max_tokens=getattr(args, "graph_max_tokens", DEFAULT_MAX_TOKENS))
    be = load_shape(args.shape, **kw) if args.shape else load_hf(args.model, **kw)
    if attention.split_kv_enabled() and be.device.type == "cuda":
        _warm_split_kv(be)
    return be


def _warm_split_kv(be) -> None:
    """Compile the split-KV kernel's variants now (a failure turns split-KV off, reported)."""
    from csr_ros.core.model import attention, split_kv

    cfg = be.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    try:
        split_kv.warm_up(cfg.num_attention_heads, cfg.num_key_value_heads, head_dim, be.device, be.dtype)
    except Exception as err:  # noqa: BLE001 - SDPA serves instead
        attention.set_split_kv(False)
        print(f"split-KV off: warm-up failed ({err!r})")


def enter_hot_stream(args, device) -> object | None:
    """With ``--hot-stream on``: the calling thread's current stream becomes the high-priority
    hot stream (None off CUDA or when off)."""
    if getattr(args, "hot_stream", "on") != "on":
        return None
    from csr_ros.core.model.streams import use_hot_stream

    return use_hot_stream(device)


def report(args, backend) -> dict:
    """The GPU options and the graph runner's counters, for the bench JSON."""
    from csr_ros.core.model import attention

    runner = getattr(backend, "runner", None)
    return {"cuda_graphs": getattr(args, "cuda_graphs", "on"), "graph_max_tokens": getattr(args, "graph_max_tokens", None),
            "graph_sizes": list(runner.sizes) if runner is not None else None,
            "runner_stats": dict(runner.stats) if runner is not None else None,
            "hot_stream": getattr(args, "hot_stream", "on"), "split_kv": attention.split_kv_enabled()}
