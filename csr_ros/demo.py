"""``csr-ros demo``: the embedded model reading a short observation stream (no ROS needed).

It loads the embedded SmolLM2, streams a few timestamped observations into the cached state,
answers a question by closed-set scoring and by free generation, and prints the time to first
token (TTFT) measured on the real model next to the cost of re-reading the whole history.
"""

from __future__ import annotations

import argparse
import time

OBSERVATIONS = [
    ("/observations", "a red cup is on the kitchen table"),
    ("/joint_states", "shoulder=0.12 elbow=1.57 wrist=-0.30 gripper=open"),
    ("/observations", "a person walks into the kitchen"),
    ("/observations", "the person carries the red cup to the living room"),
    ("/robot_pose", "map: x=2.10 y=-0.40 yaw=1.57"),
    ("/observations", "the red cup is on the sofa in the living room"),
    ("/observations", "a green book lies on the bedroom shelf"),
]
QUESTION = "Where is the red cup now?"
ROOMS = ["kitchen", "living room", "bedroom", "garage", "bathroom"]


def run_demo(args: argparse.Namespace) -> int:
    from csr_ros.core.backends.embedded import ModelNotAvailable
    from csr_ros.core.backends.hf import load_hf
    from csr_ros.core.engine import CsrEngine

    t0 = time.perf_counter()
    try:
        backend = load_hf(args.model, device=args.device)
    except ModelNotAvailable as exc:
        print(f"error: {exc}")
        return 1
    print(f"model {backend.name} loaded on {backend.device} in {time.perf_counter() - t0:.1f} s")
    engine = CsrEngine(backend, budget_tokens=2048)
    for i, (source, text) in enumerate(OBSERVATIONS):
        inc = engine.submit(source, int(i * 2.0e9), text)
        engine.flush()
        print(f"  + increment {inc.seq:>2} ({inc.num_tokens:>2} tokens) {source}: {text}")
    print(f"cached state: {engine.ledger.num_tokens} tokens, version {engine.ledger.version}")

    t1 = time.perf_counter()
    scores = engine.score(QUESTION, ROOMS, lead_in="The red cup is in the")
    score_ms = (time.perf_counter() - t1) * 1e3
    best = ROOMS[max(range(len(ROOMS)), key=scores.__getitem__)]
    print(f"Q: {QUESTION}")
    print(f"A (closed-set over {len(ROOMS)} rooms, one batched pass, {score_ms:.0f} ms): {best}")
    result = engine.query(QUESTION, max_new_tokens=24)
    print(f"A (generated): {result.text.strip()!r}")
    print(f"TTFT {result.ttft_s * 1e3:.0f} ms on the cached state "
          f"(total {result.total_s * 1e3:.0f} ms for {len(result.token_ids)} tokens)")

    fresh = backend.new_state()
    t2 = time.perf_counter()
    fresh.append(engine.ledger.token_ids() + engine.query_ids(QUESTION))
    full_ms = (time.perf_counter() - t2) * 1e3
    print(f"re-reading the whole history instead: {full_ms:.0f} ms to first token")
    assert engine.check_invariant(), "the KV cache must hold exactly the ledger's tokens"
    return 0
