"""Re-record an episode as a different robot would report it: a JSON-like object detector.

``csr-ros make-episode`` never produces this phrasing. It stands in for "a robot's own topic":
sightings become detector records on ``/detector/objects`` with snake_case labels
(``{"label": "red_cup", "room": "kitchen", "score": 0.91}``), pickups become events, everything
else becomes a note. The questions and their times are unchanged; the new ``params.yaml``
configures the new topic and its patterns, so the evaluation reads the facts through
configuration only (nothing in csr_ros knows this format).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import yaml

from csr_ros.cli.eval.episode import iter_bag, typestore, write_bag
from csr_ros.cli.make_episode import Phrasing

TOPIC = "/detector/objects"
PATTERNS = (
    r'"label": "(?P<entity>[a-z0-9_]+)", "room": "(?P<value>[a-z ]+)"',
)
_PICKUP = re.compile(r"A person picks up the (?P<obj>[a-z ]+)\.")


def rephrase_text(text: str, rng: random.Random, source: Phrasing = Phrasing()) -> str:
    """One /observations text of the generator as the detector would publish it."""
    for pat in source.patterns:
        m = re.search(pat, text)
        if m:
            label = m["entity"].replace(" ", "_")
            return json.dumps({"label": label, "room": m["value"], "score": round(rng.uniform(0.6, 0.99), 2)})
    p = _PICKUP.fullmatch(text)
    if p:
        return json.dumps({"event": "picked_up", "label": p["obj"].replace(" ", "_")})
    return json.dumps({"event": "note", "text": text})


def params() -> dict:
    doors = Phrasing().door_patterns  # door reports are copied unchanged
    return {"/**": {"ros__parameters": {"inputs": {
        "names": ["detector", "joints", "pose", "doors"],
        "doors": {"topic": "/doors", "type": "std_msgs/msg/String", "serializer": "string",
                  "patterns": list(doors), "attribute": "state"},
        "detector": {"topic": TOPIC, "type": "std_msgs/msg/String", "serializer": "string",
                     "patterns": list(PATTERNS), "attribute": "location"},
        "joints": {"topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                   "serializer": "joint_state", "min_change": 0.05},
        "pose": {"topic": "/robot_pose", "type": "geometry_msgs/msg/PoseStamped", "serializer": "pose",
                 "decimals": 1, "min_change_m": 0.2, "min_period_s": 20.0},
    }}}}


def rephrase_episode(src: str | Path, out: str | Path, seed: int = 0) -> int:
    """Write ``out/`` (bag, qa.jsonl, params.yaml) from episode folder ``src``; returns messages."""
    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store, rng = typestore(), random.Random(seed)
    String = store.types["std_msgs/msg/String"]

    def records():
        for m in iter_bag(src / "bag"):
            if m.topic == "/observations":
                yield m.stamp_ns, TOPIC, m.msgtype, String(data=rephrase_text(m.msg.data, rng))
            else:
                yield m.stamp_ns, m.topic, m.msgtype, m.msg

    n = write_bag(out / "bag", records())
    shutil.copyfile(src / "qa.jsonl", out / "qa.jsonl")
    (out / "params.yaml").write_text("# A JSON-like object detector: facts from its records by pattern only.\n"
                                     + yaml.safe_dump(params(), sort_keys=False, width=200))
    return n
