"""The ``llamacpp_*`` columns of ``csr-ros bench ttft``: llama.cpp's own ``llama-server`` on the
embedded model's GGUF, the same thread count, the same token stream, measured in the same run
(after the in-process rows, so the two never share the cores).

Per history length N, with its prompt cache on (one slot): the history and the 64-token
increment are sent first (untimed, they fill its cache), then per repetition a fresh 32-token
query is sent after them with 64 tokens to generate. From the server's own ``timings``:

* ``llamacpp_query_ms`` - ``prompt_ms`` of the query (``llamacpp_query_prompt_n`` tokens
  evaluated: 32 when the cache held the rest) - the counterpart of ``query_only_ms``;
* ``llamacpp_decode_ms`` - ``predicted_per_token_ms`` over the generated tokens - of ``decode_ms``.

Skipped, with the reason in the JSON, when ``llama-server`` is not installed
(``scripts/build_llama_server.sh``) or its model file is missing.
"""

from __future__ import annotations

import json
import statistics
import urllib.request

from csr_ros.cli.bench.common import INC_TOKENS, QUERY_TOKENS, token_stream

DECODE_TOKENS = 64


def _complete(url: str, prompt: list[int], n_predict: int, timeout_s: float = 600.0) -> dict:
    body = {"prompt": prompt, "n_predict": n_predict, "cache_prompt": True, "temperature": 0.0,
            "ignore_eos": True, "stream": False}
    req = urllib.request.Request(url + "/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.loads(r.read())["timings"]


def measure(lengths: list[int], stream: list[int], threads: int, reps: int, vocab: int) -> dict:
    """``{"status": ..., "rows": {N: {...}}}``; ``status`` says why nothing was measured."""
    from csr_ros.core.model.backends.llama_server import LlamaServer, ServerNotInstalled

    ctx = max(lengths) + INC_TOKENS + (QUERY_TOKENS + DECODE_TOKENS) * 2 + 64
    try:
        srv = LlamaServer.start(ctx_tokens=ctx, parallel=1, threads=threads)
    except (ServerNotInstalled, RuntimeError, TimeoutError, OSError) as err:  # ModelNotAvailable is a RuntimeError
        return {"status": f"skipped: {err}", "rows": {}}
    rows: dict[int, dict] = {}
    try:
        for n in lengths:
            prefix = stream[:n + INC_TOKENS]  # history + increment, cached before the query
            _complete(srv.url, prefix, 1)
            q_ms, d_ms, q_n = [], [], []
            for r in range(reps):
                q = token_stream(vocab, QUERY_TOKENS, seed=5000 + 13 * n + r)
                t = _complete(srv.url, prefix + q, DECODE_TOKENS)
                q_ms.append(t["prompt_ms"]), q_n.append(t["prompt_n"]), d_ms.append(t["predicted_per_token_ms"])
            rows[n] = {"llamacpp_query_ms": statistics.median(q_ms), "llamacpp_decode_ms": statistics.median(d_ms),
                       "llamacpp_query_prompt_n": int(statistics.median(q_n)),
                       "llamacpp_detail": {"query_ms": q_ms, "decode_ms": d_ms, "query_prompt_n": q_n}}
    finally:
        srv.stop()
    return {"status": f"measured: llama-server, {threads} threads, 1 slot, prompt cache on", "rows": rows}
