"""``csr-ros bench ttft --backend openai --url URL``: TTFT of CSR over a serving engine.

The same workload as the in-process benchmark (history N, a 64-token increment, a 32-token
query, first token only), through the serving-engine backend, with three columns:

* ``full_ms``  - the same request sent with the server's prompt cache OFF (llama.cpp
  ``cache_prompt: false``, on the standby lane so the primary's cache survives): what serving
  without any prefix reuse costs;
* ``csr_ms``   - the CSR path: the increment was warmed when it arrived (untimed, a request that
  generates at most one token), the query pays only for its question;
* ``naive_ms`` - what a plain client gets: prompt cache on, increment and query sent together in
  one request (as llama_ros does).

Every timed request's prompt accounting comes from the server itself (``server`` in each row:
prompt tokens evaluated vs taken from its cache), so "the query evaluated only the question" is
shown, not assumed. Client-side times: request sent -> first streamed token read.
"""

from __future__ import annotations

import time
from typing import Sequence

from csr_ros.cli.bench.common import INC_TOKENS, QUERY_TOKENS, summary_ms, token_stream, write_json


def load_backend(args):
    from csr_ros.core.model.backends.openai import load_server

    urls = list(args.url or []) + ([args.url2] if getattr(args, "url2", None) else [])
    if not urls:
        raise SystemExit("--backend openai needs --url URL (a running llama-server, vLLM or SGLang server)")
    return load_server(urls, dialect=args.dialect, tokenizer=args.tokenizer, timeout_s=args.timeout_s,
                       ready_timeout_s=args.timeout_s, model=args.served_model)


def _usage(u) -> dict | None:
    return None if u is None else {"prompt_tokens": u.prompt_tokens, "evaluated": u.evaluated, "cached": u.cached,
                                   "prompt_ms": u.prompt_ms}


def _first_token_full(be, prompt: list[int]) -> tuple[float, int, dict | None]:
    """The whole prompt with the server's prompt cache off, on the standby lane."""
    client = be.pool.client(be.pool.standby)
    t0 = time.perf_counter()
    stream = client.stream(prompt, 1, cache=False)
    try:
        tok = stream.next_token()
        dt = time.perf_counter() - t0
        while stream.usage is None and stream.next_token() is not None:
            pass
    finally:
        stream.close()
        client.close()
    be.pool.counters.record("full", stream.usage, dt * 1e3)
    return dt, (be.eos_id if tok is None else tok), _usage(stream.usage)


def _timed_open(kv, fn) -> tuple[float, int, dict | None]:
    t0 = time.perf_counter()
    bid, choice = fn()
    dt = time.perf_counter() - t0
    usage = _usage(kv.last_usage)
    kv.close_branch(bid)
    return dt, int(choice.argmax()), usage


def measure_n(be, n: int, stream: list[int], reps: int, full_reps: int, vocab: int) -> dict:
    """All timings for one history length N (each rep uses its own increment and query)."""
    hist = stream[:n]
    kv = be.new_state()
    kv.prefill(hist, chunk_tokens=2048)  # untimed: the primary's cache now holds the history
    samples: dict[str, list[float]] = {"csr": [], "naive": []}
    server: dict[str, list] = {"warm": [], "csr": [], "naive": [], "full": []}
    firsts: dict[str, list[int]] = {"csr": [], "naive": [], "full": []}
    prompts = []
    for r in range(reps):
        extra = token_stream(vocab, INC_TOKENS + QUERY_TOKENS + 1, seed=1000 + 7 * n + r)
        inc, q, other = extra[:INC_TOKENS], extra[INC_TOKENS:-1], extra[-1]
        prompts.append(hist + inc + q)
        kv.append(inc)  # the increment arrives: warmed at once (untimed)
        server["warm"].append(_usage(kv.last_usage))
        t, tok, u = _timed_open(kv, lambda: kv.open_branch(q))
        samples["csr"].append(t), firsts["csr"].append(tok), server["csr"].append(u)
        kv.truncate(n)
        kv.append([other if other != inc[0] else other + 1])  # the cache diverges right after N
        kv.truncate(n)
        t, tok, u = _timed_open(kv, lambda: kv.append_and_open(inc, q))
        samples["naive"].append(t), firsts["naive"].append(tok), server["naive"].append(u)
        kv.truncate(n)
    if full_reps:
        samples["full"] = []
        for r in range(full_reps):
            t, tok, u = _first_token_full(be, prompts[r % len(prompts)])
            samples["full"].append(t), firsts["full"].append(tok), server["full"].append(u)
    kv.close()
    row = {"n": n}
    row.update({f"{k}_ms": summary_ms(v)["median"] for k, v in samples.items()})
    same = [firsts["csr"][i] == firsts["naive"][i] for i in range(reps)]
    same += [firsts["full"][i] == firsts["csr"][i % reps] for i in range(len(firsts["full"]))]
    row["same_first_token"] = all(same)
    row["query_prompt_n"] = _median([u["evaluated"] for u in server["csr"] if u and u["evaluated"] is not None])
    row["naive_prompt_n"] = _median([u["evaluated"] for u in server["naive"] if u and u["evaluated"] is not None])
    row["full_prompt_n"] = _median([u["evaluated"] for u in server["full"] if u and u["evaluated"] is not None])
    row["detail"] = {k: summary_ms(v) for k, v in samples.items()}
    row["detail"]["first_tokens"] = firsts
    row["server"] = server
    return row


def _median(xs: Sequence[int]) -> int | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def print_table(rows: list[dict], header: bool = True) -> None:
    if header:
        print(f"{'N':>7} {'full_ms':>10} {'csr_ms':>9} {'naive_ms':>9} {'full/csr':>9} {'csr/naive':>9} "
              f"{'q_prompt_n':>10} {'naive_n':>8} {'full_n':>7} same_tok")
    for r in rows:
        full = r.get("full_ms")
        print(f"{r['n']:>7} {full if full is None else round(full, 1):>10} {r['csr_ms']:>9.1f} {r['naive_ms']:>9.1f} "
              f"{'-' if full is None else round(full / r['csr_ms'], 1):>9} {r['csr_ms'] / r['naive_ms']:>9.2f} "
              f"{str(r['query_prompt_n']):>10} {str(r['naive_prompt_n']):>8} {str(r['full_prompt_n']):>7} "
              f"{r['same_first_token']}")


def run(args) -> dict:
    be = load_backend(args)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    vocab = len(be.tokenizer)
    stream = token_stream(vocab, max(lengths))
    full_reps = args.full_reps if be.pool.dialect.name == "llamacpp" else 0  # only llama.cpp can switch it off
    rows: list[dict] = []
    payload = {"model": be.name, "backend": "openai", "device": f"{be.pool.dialect.name} server "
               + ", ".join(str(l) for l in be.pool.lanes), "dtype": "server",
               "increment_tokens": INC_TOKENS, "query_tokens": QUERY_TOKENS, "rows": rows}
    for i, n in enumerate(lengths):
        rows.append(measure_n(be, n, stream, args.reps, full_reps, vocab))
        print_table(rows[-1:], header=i == 0)
        payload["server"] = be.report()
        write_json(args.json, payload)  # after every N: long runs keep what they measured
    print()
    print_table(rows)
    return payload
