"""The self-test and the PASS/FAIL summary of ``scripts/gpu_check.sh`` (issue 23's GPU must-shows).

``python -m csr_ros.cli.bench.gpu_must_show selftest OUT DEVICE`` checks, on ``DEVICE``:

* split-KV attention (the Triton kernel on CUDA, else the torch reference) against torch's SDPA
  and the packed-GQA path, correctness and one layer's time at 4K and 120K cached tokens
  (``SPLIT_KV=on`` is printed only when it is correct and the fastest at 120K; same for packed);
* bucketed graph appends: appends of 3, 5, 11, 17, 45, 1, 80 tokens and masked branch steps
  through the captured (CPU: explicit) runner equal the plain forward in logits and K/V (fp32);
* greedy tokens through the runner equal the eager ones (bf16 on CUDA; appends of bucket sizes, so
  both paths run GEMMs of the same shapes: padding may change bf16 rounding, checked in fp32 above);
* stream priorities: the hot and low streams' priorities, and a small GEMM's time on the hot
  stream while a low-priority stream is saturated, against the same on a default stream.

``... summary OUT`` reads ``OUT/{selftest,ttft_gpu,evict_gpu,multitask_gpu}.json`` and prints one
``[PASS]``/``[FAIL]``/``[MISSING]`` line per must-show with its figure (``OUT/checks.json`` too).
Standard library + torch only; no ROS.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _time_ms(fn, device, reps: int = 20) -> float:
    import torch

    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / reps * 1e3


def check_split_kv(device) -> dict:
    """Split-KV vs SDPA vs packed GQA, one layer of the 8B shape (CPU: a tiny shape, the reference)."""
    import torch

    from csr_ros.core.model import attention, split_kv

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    hq, hkv, d = (32, 8, 128) if cuda else (8, 2, 16)
    cases = [(32, 4096), (32, 122880), (1, 122880), (80, 122880)] if cuda else [(5, 300), (1, 300)]
    kernel = split_kv.split_kv_attention if (cuda and split_kv.available()) else split_kv.split_kv_reference
    rows, torch_gen = [], torch.Generator(device=device).manual_seed(0)
    for n, past in cases:
        q = torch.randn(1, hq, n, d, device=device, dtype=dtype, generator=torch_gen)
        k, v = (torch.randn(1, hkv, past + n, d, device=device, dtype=dtype, generator=torch_gen) for _ in range(2))
        attention.set_packed_gqa(False)
        ref = attention.csr_attention(q, k, v, None)
        row = {"q_tokens": n, "kv_tokens": past + n, "sdpa_ms": _time_ms(lambda: attention.csr_attention(q, k, v, None), device)}
        attention.set_packed_gqa(True)
        try:
            row["packed_ms"] = _time_ms(lambda: attention.csr_attention(q, k, v, None), device) if n > 1 else None
            out = kernel(q, k, v)
            row["split_kv_max_abs_diff"] = float((out.float() - ref.float()).abs().max())
            row["split_kv_ms"] = _time_ms(lambda: kernel(q, k, v), device)
        except Exception as err:  # noqa: BLE001 - reported, the run goes on
            row["error"] = repr(err)
        rows.append(row)
        del q, k, v
    big = [r for r in rows if r["kv_tokens"] > 100000 and r["q_tokens"] == 32] or rows[:1]
    ok = all("error" not in r and r["split_kv_max_abs_diff"] < 0.03 for r in rows)
    b = big[0]
    faster = ok and b["split_kv_ms"] < min(b["sdpa_ms"], b["packed_ms"] or float("inf"))
    packed = b.get("packed_ms") is not None and b["packed_ms"] < b["sdpa_ms"]
    return {"kernel": kernel.__name__, "rows": rows, "correct": ok, "use_split_kv": bool(cuda and faster),
            "use_packed_gqa": bool(packed or not cuda)}


def check_buckets(device) -> dict:
    """Padded bucket appends (graphs on CUDA, explicit on a CPU) == plain forward, fp32 tiny shape."""
    import torch

    from csr_ros.core.model.backends.hf import load_shape

    torch.backends.cuda.matmul.allow_tf32 = False
    be = load_shape("tiny", device=str(device), dtype="float32", cuda_graphs=True if device.type == "cuda" else "explicit")
    gen = torch.Generator().manual_seed(1)

    def run(use_runner: bool):
        be.runner.enabled = use_runner
        kv, logits = be.new_state(), []
        kv.append(torch.randint(3, 500, (200,), generator=gen).tolist())
        for n in (3, 5, 11, 17, 45, 1, 80):
            logits.append(kv.append(torch.randint(3, 500, (n,), generator=gen).tolist()).logits)
        b1, l1 = kv.open_branch([5, 6, 7])
        b2, l2 = kv.open_branch([8, 9])
        logits += [l1, l2, *kv.step({b1: 10, b2: 11}).values()]  # masked, 2 rows
        return kv, logits

    gen.manual_seed(1)
    a, la = run(True)
    stats = dict(be.runner.stats)
    gen.manual_seed(1)
    b, lb = run(False)
    be.runner.enabled = True
    diff = max(float((x - y).abs().max()) for x, y in zip(la, lb))
    kv_diff = max(max(float((x.keys - y.keys).abs().max()), float((x.values - y.values).abs().max()))
                  for x, y in zip(a._cache.layers, b._cache.layers))
    same_len = a.cache_seq_length() == b.cache_seq_length() and a.token_ids() == b.token_ids()
    return {"logits_max_abs_diff": diff, "kv_max_abs_diff": kv_diff, "same_kv_length_and_ledger": same_len,
            "runner_stats": stats, "equal": bool(same_len and diff < 1e-3 and kv_diff < 1e-3)}


def check_greedy(device) -> dict:
    """12 greedy tokens through the runner == eager, tiny shape (bf16 on CUDA)."""
    from csr_ros.core.model.backends.hf import load_shape

    cuda = device.type == "cuda"
    be = load_shape("tiny", device=str(device), dtype="bfloat16" if cuda else "float32",
                    cuda_graphs=True if cuda else "explicit")
    ids = [(7 * i) % 500 + 3 for i in range(608)]

    def greedy(enabled: bool) -> list[int]:  # bucket sizes only: bf16 GEMMs of equal shapes
        be.runner.enabled = enabled
        kv = be.new_state()
        kv.prefill(ids[:512], chunk_tokens=256)
        kv.append(ids[512:576])
        bid, lg = kv.open_branch(ids[576:608])
        toks = [int(lg.argmax())]
        for _ in range(12):
            toks.append(int(kv.step({bid: toks[-1]})[bid].argmax()))
        return toks

    g, e = greedy(True), greedy(False)
    return {"runner_tokens": g, "eager_tokens": e, "equal": g == e, "runner_stats": dict(be.runner.stats)}


def check_streams(device) -> dict:
    """Priorities of the hot and low streams; a small GEMM beside a saturated low-priority stream."""
    import torch

    from csr_ros.core.model.streams import priority_stream

    if device.type != "cuda":
        return {"hot": None, "low": None, "fallback_ok": priority_stream(device, "high") is None}
    rng = torch.cuda.Stream.priority_range()
    hot, low, plain = priority_stream(device, "high"), priority_stream(device, "low"), torch.cuda.Stream(device)
    big = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    x = torch.randn(32, 4096, device=device, dtype=torch.bfloat16)
    out = {"priority_range": list(rng), "hot": hot.priority, "low": low.priority}
    for name, s in (("hot", hot), ("default_priority", plain)):
        with torch.cuda.stream(low):
            for _ in range(60):
                big @ big
        with torch.cuda.stream(s):
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            for _ in range(32):
                x @ w
            t1.record()
        t1.synchronize()
        out[f"small_gemms_ms_{name}"] = t0.elapsed_time(t1)
        torch.cuda.synchronize(device)
    out["priority_effect"] = out["small_gemms_ms_default_priority"] / max(out["small_gemms_ms_hot"], 1e-9)
    return out


def selftest(out_dir: str, device_name: str) -> dict:
    import torch

    device = torch.device(device_name)
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    for name, fn in (("split_kv", check_split_kv), ("buckets", check_buckets), ("greedy", check_greedy),
                     ("streams", check_streams)):
        try:
            res[name] = fn(device)
        except Exception as err:  # noqa: BLE001 - one failed check must not hide the others
            res[name] = {"error": repr(err)}
        print(name, json.dumps(res[name])[:600], flush=True)
    Path(out_dir, "selftest.json").write_text(json.dumps(res, indent=2) + "\n")
    skv = res["split_kv"]
    print(f"SPLIT_KV={'on' if skv.get('use_split_kv') else 'off'}")
    print(f"PACKED_GQA={'on' if skv.get('use_packed_gqa', True) else 'off'}")
    return res


def main(argv: list[str]) -> int:
    """``selftest OUT DEVICE`` | ``summary OUT``."""
    if len(argv) >= 3 and argv[0] == "selftest":
        selftest(argv[1], argv[2])
        return 0
    if len(argv) >= 2 and argv[0] == "summary":
        from csr_ros.cli.bench.gpu_summary import summarize

        summarize(argv[1])
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
