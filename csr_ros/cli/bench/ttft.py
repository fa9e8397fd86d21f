"""``csr-ros bench ttft``: time-to-first-token of CSR against full re-prefill and the forward floor.

For every history length N, on one model and one token stream:

* ``full_ms``  - no cache: one forward over history + 64-token increment + 32-token query;
* ``csr_ms``   - the CSR hot path: the increment (already tokenized on arrival) and the query
  appended onto the cached N tokens in one forward, to the first generated token, then cropped;
* ``floor_ms`` - one raw model forward of the same 96 tokens against the N-token cache, called
  directly as a user would: transformers' own DynamicCache and the model's default attention;
* ``query_only_ms`` - the 32-token query alone (the increment was appended on arrival);
* ``decode_ms`` - one further generated token;
* ``bandwidth_floor_ms`` - bytes that must be read once (weights + cache) / measured copy bandwidth;
* with ``--attention default``, ``*_default`` columns: the same with transformers' default attention.

On CUDA, decode and appends of the runner's sizes (1/32/64/96 tokens) run through CUDA graphs
(:mod:`csr_ros.core.model.cuda_graphs`); ``graph_check`` per N compares 8 greedy tokens through the
graphs with the eager path from the same state. The JSON is rewritten after every N, so a run cut
short keeps its finished rows; matplotlib is imported only for ``--plot``.

Medians over repetitions (min and max kept in ``detail``). The KV state is prefilled once per N
(not timed) and every timed call leaves it exactly as it found it.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Sequence

from csr_ros.cli.bench.common import (INC_TOKENS, QUERY_TOKENS, add_model_args, add_server_args, device_name,
                                      summary_ms, timed, token_stream, write_json)
from csr_ros.cli.bench.ttft_lengths import time_query_lengths

def load_backend(args):
    from csr_ros.cli.bench import gpu_opts

    return gpu_opts.load_backend(args)  # graphs, their bucket bound, split-KV


def _set_attn(model, name: str) -> None:
    from csr_ros.core.model import attention

    model.set_attn_implementation(attention.register() if name == "csr" else name)


def _free_device_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if getattr(device, "type", "") == "cuda":
        torch.cuda.empty_cache()


def measure_n(be, n: int, stream: list[int], reps: int, full_reps: int, compare_default: bool = False,
              full_budget_s: float = 0.0, query_lengths: Sequence[int] = ()) -> dict:
    """All timings for one history length N (probes interleaved within each repetition)."""
    hist, inc, q = stream[:n], stream[n:n + INC_TOKENS], stream[n + INC_TOKENS:n + INC_TOKENS + QUERY_TOKENS]
    kv = be.new_state()
    kv.prefill(hist, chunk_tokens=2048)
    plain = kv.plain_copy()  # the same K/V in transformers' own DynamicCache, for the floor
    samples: dict[str, list[float]] = {}
    firsts: dict[str, int] = {}
    logits_of: dict = {}  # last first-token logits [vocab] of csr and full, for the tolerance check

    def record(name: str, seconds: float, tok: int | None = None) -> None:
        samples.setdefault(name, []).append(seconds)
        if tok is not None:
            firsts[name] = tok

    def csr(suffix: str = ""):  # increment + query in one forward, to the first token, then cropped
        bid, logits = kv.append_and_open(inc, q)
        tok = int(logits.argmax())
        logits_of["csr" + suffix] = logits
        kv.close_branch(bid)
        kv.truncate(n)
        return tok

    def query_and_decode(suffix: str) -> None:  # the increment was appended on arrival
        kv.append(inc)
        t, (bid, logits) = timed(lambda: kv.open_branch(q), be.device)
        tok = int(logits.argmax())
        logits_of["query_only" + suffix] = logits
        record("query_only" + suffix, t, tok)
        t, _ = timed(lambda: kv.step({bid: tok}), be.device)
        record("decode" + suffix, t)
        kv.close_branch(bid)
        kv.truncate(n)

    csr(), query_and_decode("")  # warm-up (allocator, kernels, CUDA graph capture)
    for _ in range(reps):
        for attn, suffix in [("csr", "")] + ([("sdpa", "_default")] if compare_default else []):
            _set_attn(be.model, attn)
            t, tok = timed(lambda: csr(suffix), be.device)
            record("csr" + suffix, t, tok)
            query_and_decode(suffix)
        _set_attn(be.model, "sdpa")
        t, logits_of["floor"] = timed(lambda: plain.raw_forward_then_crop(inc + q), be.device)
        record("floor", t, int(logits_of["floor"].argmax()))
        _set_attn(be.model, "csr")
    check = graph_vs_eager(be, kv, inc, q, n) if be.runner is not None else None
    by_length = time_query_lengths(be, kv, stream, query_lengths, reps) if query_lengths else None
    del kv, plain  # free the cached state before the (memory-hungry) full re-prefills
    _free_device_memory(be.device)
    logits_of["full"] = time_full(be, hist + inc + q, full_reps, full_budget_s, record)
    row = {"n": n}
    row.update({f"{name}_ms": summary_ms(v)["median"] for name, v in samples.items()})
    row["same_first_token"] = len({firsts[k] for k in ("full", "csr", "floor", "query_only")}) == 1
    row["detail"] = {name: summary_ms(v) for name, v in samples.items()}
    row["detail"]["first_tokens"] = firsts
    row["logit_check"] = logit_check(logits_of)
    row["same_first_token_within_noise"] = row["logit_check"]["all_within_noise"]
    if check is not None:
        row["graph_check"] = check
    if by_length is not None:
        row["query_lengths"] = by_length
    return row


def logit_check(logits_of: dict) -> dict:
    """How far each path's first-token logits ``[vocab]`` are from the full re-prefill's.

    ``noise``: the distance between two stock transformers computations of the same logits (the
    ``floor`` forward onto a DynamicCache vs the full re-prefill, both transformers' default
    attention): in bf16 this is the library's own rounding noise. A path whose first token
    differs from the full one's still agrees *within noise* when the full logits of its token
    are within ``noise`` of the full maximum (the top-1/top-2 gap was below the noise)."""
    full = logits_of["full"].float().cpu()
    top2 = full.topk(2).values
    noise = float((full - logits_of["floor"].float().cpu()).abs().max())
    out: dict = {"full_top2_gap": float(top2[0] - top2[1]), "noise_floor_vs_full": noise}
    ok = True
    for name, lg in logits_of.items():
        if name == "full":
            continue
        lg = lg.float().cpu()
        gap = float(top2[0] - full[int(lg.argmax())])  # 0 when the same token
        out[f"{name}_vs_full_max_abs_diff"] = float((full - lg).abs().max())
        out[f"{name}_token_full_logit_gap"] = gap
        ok &= gap <= noise
    out.setdefault("csr_vs_full_max_abs_diff", float("nan"))  # the summary's column, always present
    out["all_within_noise"] = bool(ok)
    return out


def time_full(be, seq: list[int], reps: int, budget_s: float, record):
    """Full re-prefills of ``seq`` (logits of the last token only; each fresh cache freed before
    the next). After the first, stop once ``budget_s`` seconds were spent (0: no limit).
    Returns the last first-token logits ``[vocab]``."""
    _set_attn(be.model, "sdpa")
    spent, logits = 0.0, None
    for r in range(max(1, reps)):
        if r and budget_s and spent > budget_s:
            break
        fresh = be.new_state()
        t, logits = timed(lambda: fresh.raw_forward_then_crop(seq), be.device)
        del fresh
        _free_device_memory(be.device)
        spent += t
        record("full", t, int(logits.argmax()))
    _set_attn(be.model, "csr")
    return logits


def graph_vs_eager(be, kv, inc: list[int], q: list[int], n: int, steps: int = 8) -> dict:
    """Greedy decode of ``steps`` tokens after increment + query from the same N-token state,
    through the backend's runner (CUDA graphs) and eagerly (runner off): tokens must agree."""
    def greedy() -> tuple[list[int], object]:
        kv.append(inc)
        bid, logits = kv.open_branch(q)
        toks = [int(logits.argmax())]
        for _ in range(steps):
            toks.append(int(kv.step({bid: toks[-1]})[bid].argmax()))
        kv.close_branch(bid)
        kv.truncate(n)
        return toks, logits.float()

    before = be.runner.stats["graph"] + be.runner.stats["explicit"]
    got, lg_runner = greedy()
    served = be.runner.stats["graph"] + be.runner.stats["explicit"] - before
    be.runner.enabled = False
    try:
        ref, lg_eager = greedy()
    finally:
        be.runner.enabled = True
    return {"same_tokens": got == ref, "runner_tokens": got, "eager_tokens": ref, "runner_forwards": served,
            "first_logits_max_abs_diff": float((lg_runner - lg_eager).abs().max())}


def bandwidth_floor_ms(be, n: int, bandwidth_gb_s: float) -> float:
    """Bytes a query must read at least once (weights + an N-token KV cache) / copy bandwidth."""
    cfg = be.model.config
    elem = be.model.dtype.itemsize if hasattr(be.model.dtype, "itemsize") else 4
    weights = sum(p.numel() * p.element_size() for p in be.model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * n * elem
    return (weights + kv) / (bandwidth_gb_s * 1e9) * 1e3


def versions() -> dict[str, str]:
    """torch / transformers / Python versions of this run."""
    import platform

    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def copy_bandwidth_gb_s(device, megabytes: int = 512) -> float:
    """Measured device memory copy bandwidth (read + write counted), GB/s."""
    import torch

    x = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    best = min(timed(lambda: y.copy_(x), device)[0] for _ in range(5))
    return 2 * x.numel() * 4 / best / 1e9


def print_table(rows: list[dict]) -> None:
    cols = [c for c in ("full", "csr", "floor", "query_only", "decode", "csr_default", "query_only_default",
                        "decode_default", "bandwidth_floor") if f"{c}_ms" in rows[0]]
    print(f"{'N':>7} " + " ".join(f"{c + '_ms':>12}" for c in cols)
          + f" {'csr/floor':>9} {'full/csr':>9} {'full/query':>10} same_tok graph==eager")
    for r in rows:
        vals = " ".join(f"{r[c + '_ms']:>12.1f}" for c in cols)
        graph = r["graph_check"]["same_tokens"] if "graph_check" in r else "-"
        print(f"{r['n']:>7} {vals} {r['csr_ms'] / r['floor_ms']:>9.2f} {r['full_ms'] / r['csr_ms']:>9.1f} "
              f"{r['full_ms'] / r['query_only_ms']:>10.1f} {str(r['same_first_token']):>8} {graph}")


def plot(rows: list[dict], path: str, title: str) -> None:
    """A log-log PNG of the TTFT columns (skipped with a note where matplotlib is missing)."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in (("full_ms", "full re-prefill"), ("csr_ms", "CSR (increment + query)"),
                       ("floor_ms", "floor (one raw forward)")):
        ax.plot(ns, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("history length N (tokens)")
    ax.set_ylabel("time to first token (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lengths", "--n", dest="lengths", default="512,1024,2048,4096,7680", help="comma-separated history lengths N")
    add_model_args(p, device="auto", shape_example="llama-3.1-8b, tiny")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of csr and floor")
    p.add_argument("--full-reps", type=int, default=3, help="timed repetitions of the full re-prefill")
    p.add_argument("--full-budget-s", type=float, default=0.0,
                   help="after the first full re-prefill of an N, stop its repetitions once this many seconds were spent (0: no limit)")
    p.add_argument("--packed-gqa", choices=["on", "off"], default="on",
                   help="CUDA small appends: pack GQA query groups over the history (csr_ros.core.model.attention)")
    p.add_argument("--cuda-graphs", choices=["on", "off", "explicit"], default="on",
                   help="CUDA graphs for decode and small appends (the model.cuda_graphs parameter; CUDA only); "
                        "explicit: the same segmented forward without capture, on any device (CPU dry runs)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--attention", choices=["csr", "default"], default="csr",
                   help="'default' also times csr/query_only/decode with transformers' default attention")
    p.add_argument("--query-lengths", default="",
                   help="comma-separated query lengths also timed at every N against the nearest of 32/64/96 (e.g. 17,45,80)")
    p.add_argument("--json", default=None, help="write results to this JSON file")
    p.add_argument("--plot", default=None, help="write a PNG plot")
    add_server_args(p)
    from csr_ros.cli.bench.gpu_opts import add_gpu_args

    add_gpu_args(p, graphs=False, streams=False)  # one stream: nothing runs beside the timed path


def run(args) -> dict:
    if getattr(args, "backend", "hf") == "openai":
        from csr_ros.cli.bench import ttft_server

        return ttft_server.run(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from csr_ros.core.model import attention

    attention.set_packed_gqa(getattr(args, "packed_gqa", "on") == "on")
    be = load_backend(args)
    lengths: Sequence[int] = [int(x) for x in args.lengths.split(",") if x.strip()]
    vocab = be.model.config.vocab_size
    stream = token_stream(vocab, max(lengths) + INC_TOKENS + QUERY_TOKENS)
    bw = copy_bandwidth_gb_s(be.device)
    payload = {"model": be.name, "device": device_name(be.device), "dtype": str(be.dtype).replace("torch.", ""),
               "increment_tokens": INC_TOKENS, "query_tokens": QUERY_TOKENS, "copy_bandwidth_gb_s": bw,
               "versions": versions(), "cuda_graph_sizes": list(be.runner.sizes) if be.runner else None,
               "packed_gqa": getattr(args, "packed_gqa", "on"), "split_kv": getattr(args, "split_kv", "off"),
               "rows": []}
    rows = payload["rows"]
    for n in lengths:
        rows.append(measure_n(be, n, stream, args.reps, args.full_reps, args.attention == "default",
                              getattr(args, "full_budget_s", 0.0),
                              [int(x) for x in getattr(args, "query_lengths", "").split(",") if x.strip()]))
        rows[-1]["bandwidth_floor_ms"] = bandwidth_floor_ms(be, n + INC_TOKENS + QUERY_TOKENS, bw)
        if be.device.type == "cuda":
            rows[-1]["peak_memory_gb"] = torch.cuda.max_memory_allocated(be.device) / 1e9
            torch.cuda.reset_peak_memory_stats(be.device)
        print_table(rows[-1:]), sys.stdout.flush()
        if be.runner is not None:
            payload["runner_stats"] = dict(be.runner.stats)
        write_json(args.json, payload)  # after every N: a run cut short still leaves its rows
    print()
    print_table(rows)
    if args.plot:
        plot(rows, args.plot, f"TTFT, {be.name} ({payload['dtype']}, {payload['device']})")
    return payload
