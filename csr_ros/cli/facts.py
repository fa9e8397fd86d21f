"""``csr-ros facts BAG --params-file F``: the facts a params file extracts from a bag, per input.

Write and check String patterns before an evaluation: for every input of the params file, the
facts its messages give (time since the bag start, entity, attribute, value), how many messages
it accepted, and, for pattern inputs (``std_msgs/String``), the share of accepted messages that
matched no pattern with a sample of them (the texts a pattern may be missing). The messages go
through the same serializers (and throttling) as on the robot and in ``csr-ros eval``.

    csr-ros facts episodes/household_small
    csr-ros facts my_bag/ --params-file my_robot.yaml --max-facts 50 --json out/facts.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class InputFacts:
    """What one input extracted. ``facts``: ``(t_s, entity, attribute, value)``."""

    name: str
    topic: str
    serializer: str
    patterns: int
    messages: int = 0
    accepted: int = 0
    facts: list[tuple[float, str, str, str]] = field(default_factory=list)
    unmatched: list[tuple[float, str]] = field(default_factory=list)

    @property
    def unmatched_share(self) -> float | None:
        """Accepted messages that matched no pattern / accepted (None: not a pattern input)."""
        if self.serializer != "string" or not self.accepted:
            return None
        return len(self.unmatched) / self.accepted

    def summary(self, max_facts: int, sample: int) -> dict:
        step = max(1, len(self.unmatched) // max(1, sample))
        share = self.unmatched_share
        return {"input": self.name, "topic": self.topic, "serializer": self.serializer, "patterns": self.patterns,
                "messages": self.messages, "accepted": self.accepted, "facts_n": len(self.facts),
                "entities": sorted({f[1] for f in self.facts}), "attributes": sorted({f[2] for f in self.facts}),
                "unmatched_n": len(self.unmatched), "unmatched_share": None if share is None else round(share, 4),
                "unmatched_sample": [{"t": round(t, 3), "text": x} for t, x in self.unmatched[::step][:sample]],
                "facts": [{"t": round(t, 3), "entity": e, "attribute": a, "value": v}
                          for t, e, a, v in self.facts[:max_facts]]}


def extract(bag: Path, params: Path) -> list[InputFacts]:
    """Every input's facts from ``bag`` through the inputs of ``params``."""
    from csr_ros.cli.eval.episode import iter_bag
    from csr_ros.cli.eval.inputs import Perception, parse_inputs, split_params
    from csr_ros.core.config import load_params_file

    _, flat = split_params(load_params_file(params))
    inputs = parse_inputs(flat)
    if not inputs:
        raise SystemExit(f"{params}: no perception inputs (inputs.names)")
    perception = Perception(inputs)
    per = {i.topic: InputFacts(i.name, i.topic, i.serializer, len(i.options.get("patterns", []) or []))
           for i in inputs}
    for m in iter_bag(bag, list(per)):
        got = per.get(m.topic)
        if got is None:
            continue
        got.messages += 1
        obs = perception(m.topic, m.msgtype, m.msg, m.stamp_ns)
        if obs is None:
            continue
        got.accepted += 1
        got.facts += [(m.t_s, f.entity, f.attribute, f.value) for f in obs.facts]
        if not obs.facts and got.serializer == "string":
            got.unmatched.append((m.t_s, obs.text))
    return list(per.values())


def print_report(results: list[InputFacts], max_facts: int, sample: int, out=None) -> None:
    out = out or sys.stdout
    for r in results:
        share = r.unmatched_share
        head = (f"\n== input {r.name} ({r.topic}, {r.serializer}): {r.messages} messages, {r.accepted} accepted, "
                f"{len(r.facts)} facts, {len({f[1] for f in r.facts})} entities")
        print(head + (f"; {len(r.unmatched)} matched no pattern ({share:.0%})" if share is not None else ""), file=out)
        for t, e, a, v in r.facts[:max_facts]:
            print(f"  {t:9.2f} s  {e:<24} {a:<12} {v}", file=out)
        if len(r.facts) > max_facts:
            print(f"  ... {len(r.facts) - max_facts} more facts", file=out)
        if r.unmatched:
            print(f"  sample of texts that matched no pattern ({min(sample, len(r.unmatched))} of {len(r.unmatched)}):",
                  file=out)
            for u in r.summary(max_facts, sample)["unmatched_sample"]:
                print(f"  {u['t']:9.2f} s  {u['text']!r}", file=out)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", metavar="BAG", help="rosbag2 directory or episode folder (bag/ + params.yaml)")
    p.add_argument("--params-file", help="ROS 2 params file with the perception inputs (default: params.yaml of "
                   "the episode folder)")
    p.add_argument("--max-facts", type=int, default=20, help="facts printed per input")
    p.add_argument("--sample", type=int, default=5, help="texts that matched no pattern printed per input")
    p.add_argument("--json", help="write every input's summary here (facts up to --max-facts)")


def run(args: argparse.Namespace) -> int:
    from csr_ros.cli.eval.episode import resolve_episode

    paths = resolve_episode(args.bag, None, args.params_file)
    if paths.params is None:
        raise SystemExit(f"{args.bag}: no params.yaml found; pass --params-file")
    results = extract(paths.bag, paths.params)
    print(f"{paths.bag} through {paths.params}:")
    print_report(results, args.max_facts, args.sample)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"bag": str(paths.bag), "params": str(paths.params),
                                               "inputs": [r.summary(args.max_facts, args.sample) for r in results]},
                                              indent=2))
    return 0
