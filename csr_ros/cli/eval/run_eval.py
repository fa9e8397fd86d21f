"""``csr-ros eval``: the same recorded stream through every method; recall and TTFT per question.

For each episode (a bag + QA + params file), every message goes through the configured
perception inputs (the node's serializers, String patterns from the params file) into each
method's stream at its recorded time, one frame per increment; each question is asked once
every message up to its time has been read, answered by every method with the same model and
token budget, scored (closed set over answers + rejects, or ``--free-form`` generation), and
timed to its first answer token. Results: per episode and pooled, as JSON (and a plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from csr_ros.cli.bench.common import write_json
from csr_ros.cli.eval.report import chance, markdown, pool, summarize
from csr_ros.cli.eval.episode import EpisodeError, load_qa, read_bag, resolve_episode
from csr_ros.cli.eval.methods import METHODS, Settings, build_methods

DEFAULT_METHODS = ",".join(METHODS)


def load_backend(model: str, device: str = "auto", dtype: str = "float32",
                 weights: str = "auto") -> tuple[object, int]:
    """``(backend, context length in tokens)``: embedded | a local HF folder | fake | shape:<name>;
    ``weights`` as the model.weights parameter (auto: int4 on a CPU)."""
    if model == "fake":
        from csr_ros.core.model.backends.fake import FakeBackend

        return FakeBackend(), 1 << 30
    from csr_ros.core.model.backends import hf

    be = hf.load_shape(model.split(":", 1)[1], device, dtype, weights=weights) if model.startswith("shape:") \
        else hf.load_hf(model, device, dtype, weights=weights)
    return be, int(getattr(be.model.config, "max_position_embeddings", 8192))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``-p group.name=value`` (value parsed as YAML: numbers, booleans, lists)."""
    import yaml

    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            raise SystemExit(f"-p {item!r}: expected group.name=value")
        out[key.strip()] = yaml.safe_load(val)
    return out


def episode_config(params: Path | None, overrides: dict[str, Any]):
    """``(cfg, perception)`` of an episode: its params file + command-line overrides."""
    from csr_ros.core.config import load_config, load_params_file
    from csr_ros.cli.eval.inputs import Perception, parse_inputs, split_params

    flat = load_params_file(params) if params is not None else {}
    core, inputs = split_params(flat)
    core_over, input_over = split_params(overrides)
    inputs.update(input_over)
    if not inputs.get("inputs.names"):
        raise EpisodeError("no perception inputs configured (inputs.names): pass --params-file")
    return load_config({**core, **core_over}), Perception(parse_inputs(inputs))


def replay(messages, perception, streams: dict, ask_due: Callable[[float], None],
           on_message: Callable[[], None] | None = None) -> None:
    """Feed an episode's messages, in order, to every method's stream: questions due before a
    message are asked first (``ask_due(t_s)``); each accepted observation is observed and a frame
    run on every stream; the remaining questions are asked at the end."""
    for m in messages:
        ask_due(m.t_s)
        obs = perception(m.topic, m.msgtype, m.msg, m.stamp_ns)
        if obs is not None:
            for s in streams.values():
                s.observe(m.topic, m.stamp_ns, obs.text, obs.facts)
                s.frame()
        if on_message is not None:
            on_message()
    ask_due(float("inf"))


def run_episode(label: str, bag: Path, qa_path: Path, params: Path | None, names: Sequence[str], backend,
                context_tokens: int, overrides: dict, args: argparse.Namespace) -> dict:
    """Run every method over one episode; returns its result dict (with per-question records)."""
    from tqdm import tqdm

    cfg, perception = episode_config(params, overrides)
    qa = load_qa(qa_path)
    if args.limit_questions:
        qa = qa[: args.limit_questions]
    messages = read_bag(bag)
    if not messages:
        raise EpisodeError(f"{bag}: no messages")
    settings = Settings(cfg, args.free_form, args.max_new_tokens, args.similarity,
                        args.embedder if "rag" in names else None)
    streams, methods = build_methods(names, backend, settings, context_tokens, messages[0].stamp_ns)
    records: list[dict] = []
    t_start, qi = time.perf_counter(), 0
    bar = tqdm(total=len(messages) + len(qa), desc=label, unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=args.quiet)

    def ask_due(until_s: float) -> None:
        nonlocal qi
        while qi < len(qa) and qa[qi].t_s < until_s:
            q = qa[qi]
            for name, m in methods.items():
                a = m.answer(q)
                records.append({"episode": label, "id": q.id, "t": q.t_s, "method": name, "correct": a.correct,
                                "answer": a.text, "ttft_ms": round(a.ttft_s * 1e3, 2), "context": a.context,
                                "prompt_tokens": a.prompt_tokens, "extra": dict(q.extra),
                                "scores": [round(x, 4) for x in a.scores], **a.detail})
            qi += 1
            bar.update(1)
            bar.set_postfix(_running(records, methods), refresh=False)

    replay(messages, perception, streams, ask_due, on_message=lambda: bar.update(1))
    bar.close()
    counts = {t: vars(c) for t, c in perception.counts.items()}
    return {"bag": str(bag), "qa": str(qa_path), "chance": chance(qa), "questions_n": len(qa),
            "messages": len(messages), "inputs": counts, "wall_s": round(time.perf_counter() - t_start, 1),
            "streams": {k: s.stats() for k, s in streams.items()},
            "methods": summarize(records, names), "questions": records,
            "qa_chance": [len(q.answers) / len(q.candidates) for q in qa]}


def _running(records: list[dict], methods) -> dict[str, str]:
    out = {}
    for name in methods:
        rs = [r["correct"] for r in records if r["method"] == name]
        if rs:
            out[name] = f"{sum(rs) / len(rs):.2f}"
    return out


def print_table(title: str, res: dict, names: Sequence[str], out=None) -> None:
    out = out or sys.stdout
    kinds = sorted({k for n in names for k in res["methods"].get(n, {}).get("by_kind", {})})
    print(f"\n{title}  (chance {res['chance']:.2f})", file=out)
    head = f"  {'method':<12} {'recall':>6} {'n':>4} {'TTFT p50':>10} {'p99':>10}" + "".join(f" {k:>7}" for k in kinds)
    print(head, file=out)
    for n in names:
        m = res["methods"].get(n)
        if m is None:
            continue
        row = f"  {n:<12} {m['recall']:6.2f} {m['n']:4d} {m['ttft_ms_p50']:8.0f}ms {m['ttft_ms_p99']:8.0f}ms"
        print(row + "".join(f" {m['by_kind'].get(k, float('nan')):7.2f}" for k in kinds), file=out)


def plot(path: str, result: dict, names: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [n for n in names if n in result["methods"]]
    rec = [result["methods"][n]["recall"] for n in ms]
    ttft = [result["methods"][n]["ttft_ms_p50"] for n in ms]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(ms, rec, color="tab:blue")
    a.axhline(result["chance"], color="grey", ls="--", label="chance")
    a.set_ylim(0, 1)
    a.set_ylabel("recall")
    a.legend()
    b.bar(ms, ttft, color="tab:orange")
    b.set_yscale("log")
    b.set_ylabel("TTFT p50 (ms, log)")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"{result['model']}, budget {result['budget_tokens']} tokens, {result['n']} questions")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 directory or episode folder (bag/, qa.jsonl, "
                   "params.yaml); several episodes are also pooled")
    p.add_argument("--qa", help="QA JSON Lines file (default: qa.jsonl of the episode folder)")
    p.add_argument("--params-file", help="ROS 2 params file with the perception inputs (default: params.yaml "
                   "of the episode folder)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {DEFAULT_METHODS}")
    p.add_argument("--budget", type=int, help="token budget of every method (default: budget.budget_tokens)")
    p.add_argument("--model", default="embedded", help="embedded, a local Hugging Face model folder, "
                   "shape:<name> (random weights) or fake")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--weights", default="auto", choices=["auto", "fp32", "int8", "int4"],
                   help="linear-layer weights (model.weights): auto = int4 on a CPU; fp32 = the reference")
    p.add_argument("--free-form", action="store_true", help="generate answers (correct: the text contains an "
                   "accepted string and no reject) instead of closed-set scoring")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("-p", "--param", action="append", default=[], metavar="GROUP.NAME=VALUE",
                   help="parameter override, e.g. -p memory.focus_threshold=0.6")
    p.add_argument("--limit-questions", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--plot", help="write a recall / TTFT plot here (PNG)")
    p.add_argument("--markdown", help="write the recall and TTFT tables here (Markdown)")
    p.add_argument("--pool", action="store_true", help="the BAG arguments are result JSON files of earlier "
                   "runs (e.g. one episode each): pool them instead of running (--json/--plot/--markdown apply)")
    p.add_argument("--rerun", action="store_true", help="with --pool: a method found again in a later file "
                   "replaces that episode's earlier records of it (methods rerun after a change)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _write(args: argparse.Namespace, result: dict, names: Sequence[str]) -> None:
    write_json(args.json, result)
    if args.plot:
        plot(args.plot, result, names)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(result, names))


def run_pool(args: argparse.Namespace) -> int:
    """``--pool``: merge earlier per-episode results; print and write them."""
    result = pool(args.bags, rerun=args.rerun)
    names = list(result["methods"])
    for label, ep in result["episodes"].items():
        print_table(f"{label}: {ep['questions_n']} questions", ep, names)
    print_table(f"pooled over {len(result['episodes'])} episodes ({result['n']} questions)", result, names)
    _write(args, result, names)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pool:
        return run_pool(args)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise SystemExit(f"--methods: unknown {bad}; choose from {DEFAULT_METHODS}")
    if len(args.bags) > 1 and (args.qa or args.params_file):
        raise SystemExit("--qa/--params-file apply to one BAG; pass episode folders to pool several")
    import logging

    logging.getLogger("csr_ros").setLevel(logging.ERROR)  # evictions are the methods' normal behaviour here
    overrides = parse_overrides(args.param)
    if args.budget:
        overrides["budget.budget_tokens"] = args.budget
    eps = [resolve_episode(b, args.qa, args.params_file) for b in args.bags]
    for e in eps:
        if e.qa is None:
            raise SystemExit(f"{e.bag}: no qa.jsonl found; pass --qa")
    backend, ctx = load_backend(args.model, args.device, args.dtype, args.weights)
    from csr_ros.cli.eval.embed import LazyMiniLM

    args.embedder = args.similarity = LazyMiniLM()  # loaded when rag or a focus fallback needs it
    t0 = time.perf_counter()
    episodes = {}
    for e in eps:
        label = e.bag.parent.name if e.bag.name == "bag" else e.bag.name
        while label in episodes:
            label += "'"
        episodes[label] = run_episode(label, e.bag, e.qa, e.params, names, backend, ctx, overrides, args)
    records = [r for ep in episodes.values() for r in ep["questions"]]
    qa_chance = [c for ep in episodes.values() for c in ep["qa_chance"]]
    from csr_ros.core.config import load_config
    budget = load_config({k: v for k, v in overrides.items() if k.startswith("budget.")}).budget.budget_tokens
    result = {"model": getattr(backend, "name", args.model), "budget_tokens": budget,
              "chance": round(sum(qa_chance) / len(qa_chance), 4), "n": len(qa_chance),
              "free_form": args.free_form, "methods": summarize(records, names),
              "wall_s": round(time.perf_counter() - t0, 1), "episodes": episodes}
    for label, ep in episodes.items():
        print_table(f"{label}: {ep['questions_n']} questions, {ep['wall_s']:.0f} s, streams {json.dumps(ep['streams'])}",
                    ep, names)
    if len(episodes) > 1:
        print_table(f"pooled over {len(episodes)} episodes ({result['n']} questions)", result, names)
    _write(args, result, names)
    return 0
