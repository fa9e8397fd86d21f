"""``csr-ros make-episode OUT --seed N``: a synthetic household episode (bag + QA + params file).

A robot walks from room to room. In each room it reports (std_msgs/String on /observations)
the objects it sees there, plus plenty of distractors (people, lights, appliances, sounds,
battery); its pose (PoseStamped on /robot_pose) changes per room, its arm (JointState on
/joint_states) moves now and then. Between visits people move objects to other rooms, sometimes
in view ("A person picks up the red cup."); doors are reported open or closed on /doors. Questions
of every kind of :mod:`csr_ros.cli.eval.questions` (where now / first, when last / first seen,
how many times, what is in a room, never seen, door state) at times spread over the episode.

The simulation (:class:`World`) is separate from the phrasing (:class:`Phrasing`): the phrasing
renders sightings and writes the matching String patterns into ``params.yaml``, so the eval
reads facts only through configuration.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from csr_ros.cli.eval.episode import dump_qa, typestore, write_bag
from csr_ros.cli.eval.questions import KINDS, QuestionMaker, make_questions

ROOMS = ("kitchen", "living room", "bedroom", "bathroom", "garage", "office", "hallway",
         "dining room", "laundry room", "garden")
OBJECTS = ("red cup", "blue mug", "green book", "yellow ball", "black backpack", "white towel",
           "silver keys", "teddy bear", "orange pillow", "purple umbrella", "phone charger",
           "tv remote", "laptop", "water bottle", "scissors", "flashlight", "wallet", "toolbox",
           "flower vase", "laundry basket", "reading glasses", "tennis racket", "board game",
           "coffee thermos")
FURNITURE = ("table", "shelf", "floor", "chair", "counter", "cabinet", "bench", "windowsill")
ROOM_XY = {r: (3.0 * (i % 5), 4.0 * (i // 5)) for i, r in enumerate(ROOMS)}
JOINTS = ("shoulder", "elbow", "wrist")
PLURAL = frozenset({"silver keys", "reading glasses", "scissors"})


@dataclass(frozen=True)
class Phrasing:
    """How sightings are worded, and the String patterns (named groups) that read them back."""

    sightings: tuple[str, ...] = (
        "I see the {obj} in the {room}.",
        "The {obj} is on the {furniture} in the {room}.",
        "Spotted the {obj} on the {furniture} in the {room}.",
    )
    pickup: str = "A person picks up the {obj}."
    patterns: tuple[str, ...] = (
        r"(?:I see|Spotted) the (?P<entity>[a-z][a-z ]*?) (?:on the [a-z]+ )?in the (?P<value>[a-z]+(?: room)?)\b",
        r"The (?P<entity>[a-z][a-z ]*?) is on the [a-z]+ in the (?P<value>[a-z]+(?: room)?)\b",
    )
    attribute: str = "location"
    door: str = "The {door} is {state}."  # on /doors
    door_patterns: tuple[str, ...] = (r"The (?P<entity>[a-z]+ door) is (?P<value>open|closed)\b",)


CAMERA = Phrasing(
    sightings=("Camera sees the {obj} on the {furniture} in the {room}.",
               "Camera sees the {obj} near the {furniture} in the {room}.",
               "Camera: {obj} detected in the {room}, confidence high."),
    pickup="Camera sees a person take the {obj}.",
    patterns=(r"Camera sees the (?P<entity>[a-z][a-z ]*?) (?:on|near) the [a-z]+ in the (?P<value>[a-z]+(?: room)?)\b",
              r"Camera: (?P<entity>[a-z][a-z ]*?) detected in the (?P<value>[a-z]+(?: room)?),"),
    door="door sensor: {door} {state}",
    door_patterns=(r"door sensor: (?P<entity>[a-z]+ door) (?P<value>open|closed)\b",))
"""A second phrasing (``--phrasing camera``): other words, other patterns, the same world."""
PHRASINGS = {"default": Phrasing(), "camera": CAMERA}
DOORS = ("front door", "back door", "garage door", "patio door")


DISTRACTORS = (
    "A person walks through the {room}.", "The lights in the {room} are on.",
    "The lights in the {room} turn off.", "The window in the {room} is open.",
    "The radio in the {room} is playing music.", "A dog barks outside.", "The doorbell rings.",
    "Footsteps upstairs.", "Battery at {pct} percent.", "Room temperature {temp} degrees.",
    "The dishwasher starts a cycle.", "A phone rings somewhere in the house.",
    "The floor is clear.", "Nothing new here.", "A child laughs in the {room}.",
)


@dataclass
class World:
    """The simulated house: where each object is, and what the robot saw when (pure, seeded)."""

    rng: random.Random
    objects: tuple[str, ...]
    place: dict[str, str] = field(default_factory=dict)  # object -> room
    seen: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # object -> [(t, room)]
    pickups: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for o in self.objects:
            self.place[o] = self.rng.choice(ROOMS)

    def move_one(self) -> None:
        """A person moves an object to another room out of view."""
        o = self.rng.choice(self.objects)
        self.place[o] = self.rng.choice([r for r in ROOMS if r != self.place[o]])

    def known_at(self, o: str, t_s: float) -> tuple[list[tuple[float, str]], bool]:
        """Sightings of ``o`` up to ``t_s`` and whether a pickup followed the last of them."""
        s = [x for x in self.seen.get(o, []) if x[0] <= t_s]
        picked = bool(s) and any(s[-1][0] < p <= t_s for p in self.pickups.get(o, []))
        return s, picked


def _string(store, text: str):
    return store.types["std_msgs/msg/String"](data=text)


def _header(store, stamp_ns: int, frame: str):
    Time = store.types["builtin_interfaces/msg/Time"]
    return store.types["std_msgs/msg/Header"](stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                                                frame_id=frame)


def _pose(store, stamp_ns: int, room: str, rng: random.Random):
    T = store.types
    x, y = ROOM_XY[room]
    yaw = rng.uniform(-math.pi, math.pi)
    pose = T["geometry_msgs/msg/Pose"](
        position=T["geometry_msgs/msg/Point"](x=x + rng.uniform(-0.5, 0.5), y=y + rng.uniform(-0.5, 0.5), z=0.0),
        orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))
    return T["geometry_msgs/msg/PoseStamped"](header=_header(store, stamp_ns, "map"), pose=pose)


def _joints(store, stamp_ns: int, rng: random.Random):
    pos = np.array([round(rng.uniform(-1.5, 1.5), 2) for _ in JOINTS], dtype=np.float64)
    empty = np.zeros(0, dtype=np.float64)
    return store.types["sensor_msgs/msg/JointState"](header=_header(store, stamp_ns, ""), name=list(JOINTS),
                                                       position=pos, velocity=empty, effort=empty)


def _distractor(rng: random.Random, room: str) -> str:
    return rng.choice(DISTRACTORS).format(room=rng.choice((room, rng.choice(ROOMS))),
                                          pct=rng.randint(20, 99), temp=round(rng.uniform(18, 25), 1))


def _door_report(drng: random.Random, doors: dict, door_log: dict, t: float, phrasing: Phrasing) -> str:
    """A door report (a door toggles half of the time); logs ``(t, state)``."""
    d = drng.choice(sorted(doors))
    if drng.random() < 0.5:
        doors[d] = "closed" if doors[d] == "open" else "open"
    door_log.setdefault(d, []).append((t, doors[d]))
    return phrasing.door.format(door=d, state=doors[d])


def simulate(seed: int, n_messages: int, n_objects: int, phrasing: Phrasing, dt_s: float = 2.0,
             doors: bool = False):
    """``(world, records, door_log)``: records are ``(t_s, topic, kind, payload)`` in time order;
    ``doors``: door reports on /doors too (their own random stream: the rest stays the same)."""
    rng, drng = random.Random(seed), random.Random(seed * 31 + 17)
    world = World(rng, tuple(rng.sample(OBJECTS, n_objects)))
    records: list[tuple[float, str, str, object]] = []
    door_state = {d: drng.choice(("open", "closed")) for d in DOORS} if doors else {}
    door_log: dict[str, list[tuple[float, str]]] = {}
    t = 0.0
    while len(records) < n_messages:
        room = rng.choice(ROOMS)
        records.append((t, "/robot_pose", "pose", room))
        t += 0.5
        if doors and drng.random() < 0.4:
            records.append((t, "/doors", "text", _door_report(drng, door_state, door_log, t, phrasing)))
            t += 0.1
        here = [o for o in world.objects if world.place[o] == room]
        lines = []
        for o in rng.sample(here, min(len(here), rng.randint(1, 3))):
            if rng.random() < 0.8:
                lines.append(("sight", o))
        lines += [("distract", None)] * rng.randint(2, 5)
        rng.shuffle(lines)
        for kind, o in lines:
            t += dt_s * rng.uniform(0.5, 1.5)
            if kind == "sight":
                world.seen.setdefault(o, []).append((t, room))
                text = rng.choice(phrasing.sightings).format(obj=o, room=room, furniture=rng.choice(FURNITURE))
                if rng.random() < 0.15:  # picked up in view, put down elsewhere out of view
                    records.append((t, "/observations", "text", text))
                    t += dt_s * 0.5
                    text = phrasing.pickup.format(obj=o)
                    world.pickups.setdefault(o, []).append(t)
                    world.place[o] = rng.choice([r for r in ROOMS if r != room])
            else:
                text = _distractor(rng, room)
            records.append((t, "/observations", "text", text))
        if rng.random() < 0.15:
            t += 0.5
            records.append((t, "/joint_states", "joints", None))
        for _ in range(rng.choice((0, 1, 1, 2))):
            world.move_one()
        t += dt_s
    records = records[:n_messages]
    end = records[-1][0]
    return world, records, {d: [x for x in log if x[0] <= end] for d, log in door_log.items()}


def params_for(phrasing: Phrasing, doors: bool = False) -> dict:
    """The ROS 2 params file of the episode: inputs with the String patterns of its phrasing."""
    door_input = {"doors": {"topic": "/doors", "type": "std_msgs/msg/String", "serializer": "string",
                            "patterns": list(phrasing.door_patterns), "attribute": "state"}} if doors else {}
    return {"/**": {"ros__parameters": {
        "inputs": {
            "names": ["observations", "joints", "pose"] + (["doors"] if doors else []),
            "observations": {"topic": "/observations", "type": "std_msgs/msg/String",
                             "serializer": "string", "patterns": list(phrasing.patterns),
                             "attribute": phrasing.attribute},
            **door_input,
            "joints": {"topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                       "serializer": "joint_state", "min_change": 0.05},
            "pose": {"topic": "/robot_pose", "type": "geometry_msgs/msg/PoseStamped",
                     "serializer": "pose", "decimals": 1, "min_change_m": 0.2, "min_period_s": 20.0},
        }}}}


def make_episode(out: str | Path, seed: int, n_messages: int = 280, n_questions: int = 24,
                 n_objects: int = 16, storage: str = "mcap", phrasing: Phrasing = Phrasing(),
                 kinds: Sequence[str] = KINDS, wordings: str = "dev", lead_ins: bool = False) -> dict:
    """Write ``OUT/bag`` (rosbag2), ``OUT/qa.jsonl`` and ``OUT/params.yaml``; returns a summary.

    ``kinds``: question kinds (:mod:`csr_ros.cli.eval.questions`); ``wordings``: dev | heldout;
    ``lead_ins``: write the older hand-written ``lead_in`` per question (for comparison)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "bag").exists():
        raise FileExistsError(f"{out / 'bag'} exists; choose an empty folder")
    doors = "door" in kinds
    world, records, door_log = simulate(seed, n_messages, n_objects, phrasing, doors=doors)
    store, rng = typestore(), random.Random(seed * 7919 + 1)
    t0_ns = 1_700_000_000 * 10**9 + seed * 10**9

    def msgs():
        for t, topic, kind, payload in records:
            ns = t0_ns + int(round(t * 1e9))
            if kind == "text":
                yield ns, topic, "std_msgs/msg/String", _string(store, payload)
            elif kind == "pose":
                yield ns, topic, "geometry_msgs/msg/PoseStamped", _pose(store, ns, payload, rng)
            else:
                yield ns, topic, "sensor_msgs/msg/JointState", _joints(store, ns, rng)

    n = write_bag(out / "bag", msgs(), storage)
    absent = [o for o in OBJECTS if o not in world.objects]
    maker = QuestionMaker(world, ROOMS, door_log, absent, PLURAL, wordings, lead_ins)
    qa = make_questions(maker, records[-1][0], n_questions, random.Random(seed * 104729 + 3), kinds)
    dump_qa(qa, out / "qa.jsonl")
    (out / "params.yaml").write_text(
        f"# csr_ros params for the synthetic household episode (seed {seed}): the String patterns\n"
        "# below turn its sightings into facts (entity = object, value = room).\n"
        + yaml.safe_dump(params_for(phrasing, doors), sort_keys=False, width=200))
    return {"messages": n, "questions": len(qa), "duration_s": records[-1][0], "objects": len(world.objects)}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder (gets bag/, qa.jsonl, params.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--messages", type=int, default=280, help="messages in the bag")
    p.add_argument("--questions", type=int, default=24)
    p.add_argument("--objects", type=int, default=16, help=f"objects in the house (<= {len(OBJECTS)})")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"question kinds, comma-separated, from {','.join(KINDS)}")
    p.add_argument("--phrasing", choices=sorted(PHRASINGS), default="default", help="how observations are worded "
                   "(each phrasing writes its own patterns into params.yaml)")
    p.add_argument("--wordings", choices=("dev", "heldout"), default="dev", help="question wordings: the ones the "
                   "question classifier was tuned on, or held-out ones (csr_ros/cli/eval/wordings.py)")
    p.add_argument("--lead-ins", action="store_true", help="write a hand-written lead_in per question (the older "
                   "QA format; answers no longer need one)")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.objects <= len(OBJECTS):
        raise SystemExit(f"--objects must be in [1, {len(OBJECTS)}]")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        raise SystemExit(f"--kinds: choose from {','.join(KINDS)}")
    info = make_episode(args.out, args.seed, args.messages, args.questions, args.objects, args.storage,
                        PHRASINGS[args.phrasing], kinds, args.wordings, args.lead_ins)
    print(f"wrote {args.out}: {info['messages']} messages over {info['duration_s']:.0f} s, "
          f"{info['questions']} questions, {info['objects']} objects")
    return 0
