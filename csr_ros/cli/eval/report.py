"""Pool ``csr-ros eval`` results and write them as Markdown tables.

An evaluation of several episodes can run one episode at a time, and one episode in several runs
with disjoint methods (each run writes its own JSON; the methods are independent, each reads its
own stream); :func:`pool` merges those files into the result a single run over all of them would
have written (the figures are recomputed from the per-question records, not averaged). With
``rerun=True`` a method found again in a later file replaces that episode's earlier records of
it (some methods rerun after a change; the JSON lists which file each method came from). And
:func:`markdown` renders the per-episode and pooled tables (recall by question kind, TTFT).

    csr-ros eval --pool out/eval_a.json out/eval_b.json --json out/eval_pooled.json --markdown out/eval.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from csr_ros.cli.bench.common import percentile
from csr_ros.cli.eval.methods import METHODS


def summarize(records: list[dict], methods: Sequence[str]) -> dict[str, dict]:
    """Recall, n, TTFT p50/p99 (ms) and recall per question kind (and per other extra key)."""
    out = {}
    for name in methods:
        rs = [r for r in records if r["method"] == name]
        if not rs:
            continue
        ttft = [r["ttft_ms"] for r in rs]
        by: dict[str, dict[str, list[bool]]] = {}
        for r in rs:
            for k, v in r["extra"].items():
                if isinstance(v, (str, int, bool)):
                    by.setdefault(k, {}).setdefault(str(v), []).append(r["correct"])
        per = {k: {v: round(sum(c) / len(c), 4) for v, c in sorted(vals.items())} for k, vals in by.items()}
        out[name] = {"recall": round(sum(r["correct"] for r in rs) / len(rs), 4), "n": len(rs),
                     "ttft_ms_p50": round(percentile(ttft, 50), 2), "ttft_ms_p99": round(percentile(ttft, 99), 2),
                     "by_kind": per.get("kind", {}), "by": {k: v for k, v in per.items() if k not in ("kind", "object")}}
        drift = [r["drift"] for r in rs if "drift" in r]
        if drift:  # free-form: answers that named no candidate at all
            out[name]["drift_rate"] = round(sum(drift) / len(drift), 4)
    return out


def chance(qa) -> float:
    return round(sum(len(q.answers) / len(q.candidates) for q in qa) / len(qa), 4)


def pool(paths: Sequence[str | Path], rerun: bool = False) -> dict:
    """One result from several result files of the same model and budget (episodes in order).
    ``rerun``: a method in a later file replaces the same episode's records of it from earlier
    files (else a method twice is refused)."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    if not results:
        raise ValueError("nothing to pool")
    for key in ("model", "budget_tokens", "free_form"):
        values = {json.dumps(r.get(key)) for r in results}
        if len(values) > 1:
            raise ValueError(f"results differ in {key}: {sorted(values)}")
    episodes: dict[str, dict] = {}
    for path, r in zip(paths, results):
        for label, ep in r["episodes"].items():
            ep = {**ep, "method_files": {m: str(path) for m in ep["methods"]}}
            episodes[label] = _merge_runs(label, episodes[label], ep, rerun) if label in episodes else ep
    records = [q for ep in episodes.values() for q in ep["questions"]]
    qa_chance = [c for ep in episodes.values() for c in ep["qa_chance"]]
    names = [m for m in METHODS if any(m in ep["methods"] for ep in episodes.values())]
    return {"model": results[0]["model"], "budget_tokens": results[0]["budget_tokens"],
            "chance": round(sum(qa_chance) / len(qa_chance), 4), "n": len(qa_chance),
            "free_form": results[0].get("free_form", False), "methods": summarize(records, names),
            "wall_s": round(sum(r.get("wall_s", 0.0) for r in results), 1), "episodes": episodes,
            "pooled_from": [str(p) for p in paths]}


def _merge_runs(label: str, a: dict, b: dict, rerun: bool = False) -> dict:
    """One episode evaluated in two runs -> one episode result. The runs' methods must be
    disjoint, unless ``rerun``: then ``b``'s records of a method replace ``a``'s."""
    both = set(a["methods"]) & set(b["methods"])
    if both and not rerun:
        raise ValueError(f"episode {label!r}: methods {sorted(both)} are in more than one result")
    if a["qa_chance"] != b["qa_chance"] or a.get("qa") != b.get("qa"):
        raise ValueError(f"episode {label!r}: the results are of different questions")
    records = [q for q in a["questions"] if q["method"] not in both] + b["questions"]
    names = [m for m in METHODS if m in a["methods"] or m in b["methods"]]
    return {**a, "methods": summarize(records, names), "questions": records,
            "method_files": {**a.get("method_files", {}), **b.get("method_files", {})},
            "streams": {**a.get("streams", {}), **b.get("streams", {})},
            "wall_s": round(a.get("wall_s", 0.0) + b.get("wall_s", 0.0), 1)}


def _kinds(res: dict, names: Sequence[str]) -> list[str]:
    return sorted({k for n in names for k in res["methods"].get(n, {}).get("by_kind", {})})


def _recall_cell(m: dict | None, kinds: Sequence[str]) -> str:
    if m is None:
        return "-"
    by = "/".join(f"{m['by_kind'].get(k, float('nan')):.2f}" for k in kinds)
    return f"**{m['recall']:.2f}** ({by})" if kinds else f"**{m['recall']:.2f}**"


def markdown(result: dict, names: Sequence[str] | None = None) -> str:
    """Recall per episode and pooled (by kind in brackets), then TTFT p50 / p99 per method."""
    names = [n for n in (names or METHODS) if n in result["methods"]]
    eps = result["episodes"]
    kinds = _kinds(result, names)
    rows = [("episode", "n", "chance", *names), ("---", "---:", "---:", *("---:" for _ in names))]
    for label, ep in eps.items():
        rows.append((label, str(ep["questions_n"]), f"{ep['chance']:.2f}",
                     *(_recall_cell(ep["methods"].get(n), kinds) for n in names)))
    if len(eps) > 1:
        rows.append(("**pooled**", str(result["n"]), f"{result['chance']:.2f}",
                     *(_recall_cell(result["methods"].get(n), kinds) for n in names)))
    out = [f"Recall ({'/'.join(kinds)} questions in brackets); {result['model']}, budget "
           f"{result['budget_tokens']} tokens, closed-set scoring" if kinds else "Recall", ""]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "TTFT to the scored answer, ms (p50 / p99)", ""]
    trows = [("episode", *names), ("---", *("---:" for _ in names))]
    for label, ep in list(eps.items()) + ([("**pooled**", result)] if len(eps) > 1 else []):
        trows.append((label, *(f"{ep['methods'][n]['ttft_ms_p50']:.0f} / {ep['methods'][n]['ttft_ms_p99']:.0f}"
                               if n in ep["methods"] else "-" for n in names)))
    out += ["| " + " | ".join(r) + " |" for r in trows]
    return "\n".join(out) + "\n"
