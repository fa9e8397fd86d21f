"""``csr-ros bench ttft``: time-to-first-token of CSR against full re-prefill and the forward floor.

For every history length N, on one model and one token stream:

* ``full_ms``  - no cache: one forward over history + 64-token increment + 32-token query;
* ``csr_ms``   - the CSR hot path: the increment (already tokenized on arrival) and the query
  appended onto the cached N tokens in one forward, to the first generated token, then cropped;
* ``floor_ms`` - one raw model forward of the same 96 tokens against the N-token cache, called
  directly as a user would: transformers' own DynamicCache and the model's default attention.

Medians over repetitions (min and max kept in ``detail``). The KV state is prefilled once per N
(not timed) and every timed call leaves it exactly as it found it.
"""

from __future__ import annotations

import argparse
import random
from typing import Sequence

from csr_ros.bench.common import device_name, summary_ms, timed, write_json

INC_TOKENS, QUERY_TOKENS = 64, 32


def token_stream(vocab: int, n: int, seed: int = 0) -> list[int]:
    """Deterministic token ids avoiding the lowest 300 (special/control tokens)."""
    rng = random.Random(seed)
    return [rng.randrange(300, vocab) for _ in range(n)]


def load_backend(args):
    from csr_ros.core.backends.hf import load_hf, load_shape

    if args.shape:
        return load_shape(args.shape, device=args.device, dtype=args.dtype, attn="csr")
    return load_hf(args.model, device=args.device, dtype=args.dtype, attn="csr")


def _set_attn(model, name: str) -> None:
    from csr_ros.core import attention

    model.set_attn_implementation(attention.register() if name == "csr" else name)


def measure_n(be, n: int, stream: list[int], reps: int, full_reps: int) -> dict:
    """All three timings for one history length N."""
    hist, inc, q = stream[:n], stream[n:n + INC_TOKENS], stream[n + INC_TOKENS:n + INC_TOKENS + QUERY_TOKENS]
    kv = be.new_state()
    kv.prefill(hist, chunk_tokens=2048)
    plain = kv.plain_copy()  # the same K/V in transformers' own DynamicCache, for the floor

    def csr():
        bid, logits = kv.append_and_open(inc, q)
        tok = int(logits.argmax())  # the first generated token is known here
        kv.close_branch(bid)
        kv.truncate(n)
        return tok

    def floor():
        return int(plain.raw_forward_then_crop(inc + q).argmax())

    def full():
        fresh = be.new_state()
        return int(fresh.raw_forward_then_crop(hist + inc + q).argmax())

    csr(), floor()  # warm-up (allocator, kernels)
    csr_s, floor_s, toks = [], [], set()
    for _ in range(reps):
        t, tok = timed(csr, be.device)
        csr_s.append(t)
        toks.add(("csr", tok))
        _set_attn(be.model, "sdpa")
        t, tok = timed(floor, be.device)
        _set_attn(be.model, "csr")
        floor_s.append(t)
        toks.add(("floor", tok))
    full_s = []
    _set_attn(be.model, "sdpa")
    for _ in range(full_reps):
        t, tok = timed(full, be.device)
        full_s.append(t)
        toks.add(("full", tok))
    _set_attn(be.model, "csr")
    firsts = {name: tok for name, tok in toks}
    return {
        "n": n,
        "full_ms": summary_ms(full_s)["median"],
        "csr_ms": summary_ms(csr_s)["median"],
        "floor_ms": summary_ms(floor_s)["median"],
        "same_first_token": len({tok for _, tok in toks}) == 1,
        "detail": {"full": summary_ms(full_s), "csr": summary_ms(csr_s), "floor": summary_ms(floor_s),
                   "first_tokens": firsts},
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'N':>7} {'full_ms':>10} {'csr_ms':>9} {'floor_ms':>9} {'csr/floor':>9} {'full/csr':>9} same_tok")
    for r in rows:
        print(f"{r['n']:>7} {r['full_ms']:>10.1f} {r['csr_ms']:>9.1f} {r['floor_ms']:>9.1f} "
              f"{r['csr_ms'] / r['floor_ms']:>9.2f} {r['full_ms'] / r['csr_ms']:>9.1f} {r['same_first_token']}")


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

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
    p.add_argument("--lengths", default="512,1024,2048,4096,7680", help="comma-separated history lengths N")
    p.add_argument("--model", default="embedded", help="'embedded' or a local HF model folder")
    p.add_argument("--shape", default=None, help="random weights of a named shape instead (e.g. llama-3.1-8b, tiny)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of csr and floor")
    p.add_argument("--full-reps", type=int, default=3, help="timed repetitions of the full re-prefill")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", default=None, help="write results to this JSON file")
    p.add_argument("--plot", default=None, help="write a PNG plot")


def run(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    be = load_backend(args)
    lengths: Sequence[int] = [int(x) for x in args.lengths.split(",") if x.strip()]
    vocab = be.model.config.vocab_size
    stream = token_stream(vocab, max(lengths) + INC_TOKENS + QUERY_TOKENS)
    rows = []
    for n in lengths:
        rows.append(measure_n(be, n, stream, args.reps, args.full_reps))
        print_table(rows[-1:]) if len(rows) > 1 else print_table(rows)
    payload = {"model": be.name, "device": device_name(be.device), "dtype": str(be.dtype).replace("torch.", ""),
               "increment_tokens": INC_TOKENS, "query_tokens": QUERY_TOKENS, "rows": rows}
    print()
    print_table(rows)
    write_json(args.json, payload)
    if args.plot:
        plot(rows, args.plot, f"TTFT, {be.name} ({payload['dtype']}, {payload['device']})")
    return payload
