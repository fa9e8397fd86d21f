"""``csr-ros demo``: the main job, live. Starts the csr_ros graph (inference + reconciler nodes,
the embedded SmolLM2), replays the shipped household episode into it at ``--rate`` times the
recorded speed, asks the episode's questions on ``csr/ask`` at their times (or as soon as an
answer slot is free), prints the live action-chunk rate, time to first token, evictions and the
streamed answers, and ends by itself with a summary (:mod:`csr_ros.cli.demo_graph`).

Answers come from the ``memory`` answer context by default (``--answer-context``): what a
small model reads best (issue 8's measurements; ``state`` reads the whole cached state).

``--no-ros`` runs the same episode without rclpy: the core engine with its reconciler and
query-time focus, as fast as the model goes; it answers each question by closed-set scoring
(state and memory contexts) and by generation from the memory context.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHIPPED_EPISODE = "episodes/household_small"  # under the installed share/csr_ros


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episode", default="", help="episode folder (bag/, qa.jsonl, params.yaml); default: the "
                   f"shipped share/csr_ros/{SHIPPED_EPISODE}")
    p.add_argument("--rate", type=float, default=4.0,
                   help="replay speed factor (4: the 400-s shipped episode in 100 s, which 2 CPU cores sustain)")
    p.add_argument("--budget", type=int, default=2048, help="token budget of the cached state, tokens")
    p.add_argument("--answer-context", choices=("memory", "state"), default="memory",
                   help="what answers are read from (parameter memory.answer_context)")
    p.add_argument("--policy", choices=("learned_head", "registry"), default="learned_head",
                   help="action policy (control.policy): learned_head reads the hidden state the append already "
                   "computed (no forward); registry scores the action names (one forward per decision)")
    p.add_argument("--model", default="embedded", help="'embedded', a local HF model folder, or fake")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-ros", action="store_true", help="run the episode through the core engine, without rclpy")
    p.add_argument("--timeout-s", type=float, default=60.0,
                   help="longest wait for the last answers after the replay, s")


def run_demo(args: argparse.Namespace) -> int:
    from csr_ros.cli.eval.episode import load_qa, resolve_episode
    from csr_ros.share import shipped

    args.episode = args.episode or str(shipped(SHIPPED_EPISODE))
    paths = resolve_episode(args.episode)
    qa = load_qa(paths.qa)
    if not args.no_ros:
        try:
            import rclpy  # noqa: F401
        except ImportError:
            print("rclpy is not available: running the ROS-free demo (--no-ros)")
            args.no_ros = True
    if args.no_ros:
        return run_offline(args, paths, qa)
    from csr_ros.cli.demo_graph import run_graph

    return run_graph(args, paths, qa)


def _mark(q, text: str) -> str:
    return "correct" if q.correct_text(text) else f"expected {q.answers[0]}"


def run_offline(args: argparse.Namespace, paths, qa) -> int:
    """The episode through the core (engine + reconciler + focus), closed-set and generated."""
    from csr_ros.cli.bench.common import percentile
    from csr_ros.core.runtime import answer as A
    from csr_ros.core.model.backends.embedded import ModelNotAvailable
    from csr_ros.cli.eval.episode import read_bag
    from csr_ros.cli.eval.methods import Settings, build_methods
    from csr_ros.cli.eval.run_eval import episode_config, load_backend

    try:
        backend, ctx = load_backend(args.model, args.device)
    except ModelNotAvailable as e:
        print(f"error: {e}")
        return 1
    cfg, perception = episode_config(paths.params, {"budget.budget_tokens": args.budget})
    msgs = read_bag(paths.bag)
    streams, methods = build_methods(["csr", "memory"], backend, Settings(cfg), ctx, msgs[0].stamp_ns)
    csr, contexts = streams["csr"], A.AnswerContexts(cfg.memory)
    print(f"{backend.name}: {len(msgs)} messages, {len(qa)} questions, budget {args.budget} tokens (no ROS)")
    from csr_ros.cli.eval.scoring import drifted

    ttft, right, qi = [], {"csr": 0, "memory": 0, "generated": 0, "drift": 0}, 0
    for m in msgs + [None]:
        while qi < len(qa) and (m is None or qa[qi].t_s < m.t_s):
            q = qa[qi]
            qi += 1
            a, mem = methods["csr"].answer(q), methods["memory"].answer(q)
            g = A.generate(csr.engine, contexts.build(csr.engine, q.question, context=args.answer_context), 24)
            ttft.append(mem.ttft_s * 1e3)
            right["csr"] += a.correct
            right["memory"] += mem.correct
            right["generated"] += q.correct_text(g.text)
            right["drift"] += drifted(g.text, q.candidates)
            print(f"[{q.t_s:6.1f} s] {q.question}  csr: {a.text} ({_mark(q, a.text)}) | memory: {mem.text} "
                  f"({mem.ttft_s * 1e3:.0f} ms, {_mark(q, mem.text)}) | generated: {' '.join(g.text.split())[:60]!r}")
        if m is None:
            break
        obs = perception(m.topic, m.msgtype, m.msg, m.stamp_ns)
        if obs is not None:
            csr.observe(m.topic, m.stamp_ns, obs.text, obs.facts)
            csr.frame()
    s, n = csr.stats(), len(qa)
    print(f"\nsummary: closed-set recall csr {right['csr']}/{n}, memory {right['memory']}/{n}; generated "
          f"({args.answer_context} context) {right['generated']}/{n}, {right['drift']} off the question; "
          f"memory TTFT p50 {percentile(ttft, 50):.0f} ms, "
          f"p99 {percentile(ttft, 99):.0f} ms; {s['reconciliations']} reconciliations ({s['rebuild_s']:.1f} s "
          f"off the answer path), {s['sync_evictions']} synchronous evictions; state {s['state_tokens']} tokens")
    assert csr.engine.check_invariant(), "the KV cache must hold exactly the ledger's tokens"
    return 0
