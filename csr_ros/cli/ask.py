"""``csr-ros ask "Where is the red cup?"``: the client of the ``csr/ask`` action (csr_ros/action/Ask)
for people without the ``ros2`` CLI. Streams the answer as its feedback comes, then prints the
time to first token (the server's, from acceptance, and this client's, from sending) and the
result. Ctrl-C cancels the goal (the server frees its answer slot within one frame).

Same as ``ros2 action send_goal --feedback /csr/ask csr_ros/action/Ask "{question: '...'}"``.
"""

from __future__ import annotations

import argparse
import sys
import time

from csr_ros.cli.ros_client import add_common, client_node


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("question", help="the question (quoted)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="longest answer, tokens (0: the node's)")
    p.add_argument("--context", choices=("state", "memory"), default=None,
                   help="answer context (default: the node's memory.answer_context)")
    p.add_argument("--candidates", nargs="+", default=[], metavar="ANSWER",
                   help="closed set of answers: their log-likelihoods are printed too")
    add_common(p)


def _goal(args):
    from csr_ros.action import Ask

    return Ask.Goal(question=args.question, max_new_tokens=max(0, args.max_new_tokens),
                    context=args.context or "", candidates=list(args.candidates))


def run(args: argparse.Namespace) -> int:
    from rclpy.action import ActionClient

    from csr_ros.action import Ask

    with client_node("csr_ask_client", args.namespace) as (node, ex):
        client = ActionClient(node, Ask, "csr/ask")
        if not client.wait_for_server(timeout_sec=args.wait_s):
            print(f"no csr/ask action server within {args.wait_s:g} s (is the graph up and active?)", file=sys.stderr)
            return 1
        shown, first = [""], [None]

        def on_feedback(msg) -> None:
            text = msg.feedback.partial
            if first[0] is None:
                first[0] = time.perf_counter()
            print(text[len(shown[0]):] if text.startswith(shown[0]) else "\n" + text, end="", flush=True)
            shown[0] = text

        t0 = time.perf_counter()
        sent = client.send_goal_async(_goal(args), feedback_callback=on_feedback)
        ex.spin_until_future_complete(sent, timeout_sec=args.wait_s)
        handle = sent.result()
        if handle is None or not handle.accepted:
            print("goal rejected (node not active, or language.max_open_requests answers open)", file=sys.stderr)
            return 1
        return _wait_result(ex, handle, args, t0, first, shown)


def _wait_result(ex, handle, args, t0, first, shown) -> int:
    result_future = handle.get_result_async()
    try:
        ex.spin_until_future_complete(result_future)
    except KeyboardInterrupt:
        print("\n^C: cancelling the goal", file=sys.stderr)
        ex.spin_until_future_complete(handle.cancel_goal_async(), timeout_sec=5.0)
        ex.spin_until_future_complete(result_future, timeout_sec=5.0)
    got = result_future.result()
    if got is None:
        print("\nno result", file=sys.stderr)
        return 1
    r = got.result
    if r.answer != shown[0]:  # nothing (or not all) came as feedback
        print(r.answer[len(shown[0]):] if r.answer.startswith(shown[0]) else "\n" + r.answer, end="")
    client_ttft = (first[0] - t0) * 1e3 if first[0] is not None else float("nan")
    print(f"\n-- TTFT {r.ttft_ms:.0f} ms (server), {client_ttft:.0f} ms to the first feedback here; "
          f"total {r.total_ms:.0f} ms; {r.tokens} tokens, stop: {r.stop_reason}; "
          f"{r.context or '-'} context, state v{r.state_version} ({r.state_tokens} tokens)")
    for cand, score in zip(args.candidates, r.candidate_scores):
        print(f"   {score:9.3f}  {cand}")
    return 0 if r.stop_reason in ("eos", "length") else 1
