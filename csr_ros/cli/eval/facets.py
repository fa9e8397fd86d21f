"""How well question intents (kind and facet) are chosen, on dev and held-out wordings.

``python -m csr_ros.cli.eval.facets --json out/facets.json [--no-similarity]``: every wording of
:mod:`csr_ros.cli.eval.wordings` (``{obj}`` = red cup, ``{room}`` = kitchen, ``{door}`` = front
door), classified by :func:`csr_ros.core.state.question.classify` with three facet choosers: the
configured cues alone, the MiniLM prototypes alone, both (the product's order: cues, then
prototypes). The held-out wordings were never used to tune the classifier.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from csr_ros.cli.eval.wordings import DEV, HELDOUT
from csr_ros.core.state.question import FacetChooser, classify

EXPECTED = {"where_now": ("where", "last"), "where_first": ("where", "first"), "when_last": ("when", "last"),
            "when_first": ("when", "first"), "count": ("count", "last"), "which": ("which", "last"),
            "never": ("where", "last"), "door": ("attribute", "last")}
FACET_KINDS = ("where_now", "where_first", "when_last", "when_first")


def measure(table: dict, chooser: FacetChooser) -> dict:
    """Intent and facet accuracy over a wording table, with the misses."""
    ok = n = facet_ok = facet_n = 0
    misses = []
    for kind, wordings in table.items():
        for w in wordings:
            q = w.format(obj="red cup", room="kitchen", door="front door")
            entity = None if kind in ("never", "which") else ("front door" if kind == "door" else "red cup")
            attrs = (["state"] if kind == "door" else ["location"]) if entity else []
            it = classify(q, entity, attrs, ["kitchen", "garage"], chooser)
            good = (it.kind, it.facet) == EXPECTED[kind] and it.never == (kind == "never")
            ok, n = ok + good, n + 1
            if kind in FACET_KINDS:
                facet_ok, facet_n = facet_ok + (it.facet == EXPECTED[kind][1]), facet_n + 1
            if not good:
                misses.append({"kind": kind, "question": q, "got": [it.kind, it.facet, it.facet_by]})
    return {"intent": f"{ok}/{n}", "intent_acc": round(ok / n, 4), "facet": f"{facet_ok}/{facet_n}",
            "facet_acc": round(facet_ok / facet_n, 4), "misses": misses}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json")
    p.add_argument("--no-similarity", action="store_true")
    args = p.parse_args(argv)
    from csr_ros.core.config import load_config

    m = load_config().memory
    sim = None
    if not args.no_similarity:
        from csr_ros.cli.eval.embed import MiniLM

        sim = MiniLM()
    choosers = {"cues": FacetChooser(m.first_seen_cues, m.last_seen_cues)}
    if sim is not None:
        choosers["prototypes"] = FacetChooser((), (), sim)
        choosers["cues_then_prototypes"] = FacetChooser(m.first_seen_cues, m.last_seen_cues, sim)
    out = {name: {c: measure(table, ch) for c, ch in choosers.items()}
           for name, table in (("dev", DEV), ("heldout", HELDOUT))}
    for name, per in out.items():
        for c, r in per.items():
            print(f"{name:8s} {c:22s} intent {r['intent']:>6s}  facet {r['facet']:>6s}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
