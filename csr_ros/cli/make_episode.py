"""``csr-ros make-episode OUT --seed N``: a synthetic household episode (bag + QA + params file).

A robot walks from room to room. In each room it reports (std_msgs/String on /observations)
the objects it sees there, plus plenty of distractors (people, lights, appliances, sounds,
battery); its pose (PoseStamped on /robot_pose) changes per room, its arm (JointState on
/joint_states) moves now and then. Between visits people move objects to other rooms, sometimes
in view ("A person picks up the red cup."). Questions ask where an object is now (its last
sighting) and where it was first seen, at times spread over the episode, with the ten rooms as
the closed set (chance 0.10).

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

import numpy as np
import yaml

from csr_ros.cli.eval.episode import QAItem, dump_qa, typestore, write_bag

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


def simulate(seed: int, n_messages: int, n_objects: int, phrasing: Phrasing, dt_s: float = 2.0):
    """``(world, records)``: records are ``(t_s, topic, kind, payload)`` in time order."""
    rng = random.Random(seed)
    world = World(rng, tuple(rng.sample(OBJECTS, n_objects)))
    records: list[tuple[float, str, str, object]] = []
    t = 0.0
    while len(records) < n_messages:
        room = rng.choice(ROOMS)
        records.append((t, "/robot_pose", "pose", room))
        t += 0.5
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
    return world, records[:n_messages]


def make_questions(world: World, end_s: float, n: int, rng: random.Random) -> list[QAItem]:
    """Questions at times spread over the last 70% of the episode (answers from the world)."""
    out: list[QAItem] = []
    asked: dict[str, int] = {}
    kinds = ["now", "first"] * (n // 2 + 1)
    times = sorted(rng.uniform(0.3 * end_s, end_s) for _ in range(n))
    for i, t in enumerate(times):
        kind = kinds[i]
        ok = []
        for o in world.objects:
            s, picked = world.known_at(o, t)
            if s and not picked:
                ok.append((len({r for _, r in s}) > 1, o, s))
        moved = [x for x in ok if x[0]]
        pool = moved if moved and rng.random() < 0.67 else ok
        if not pool:
            continue
        least = min(asked.get(x[1], 0) for x in pool)  # spread questions over the objects
        _, o, s = rng.choice([x for x in pool if asked.get(x[1], 0) == least])
        asked[o] = asked.get(o, 0) + 1
        t_ev, room = s[-1] if kind == "now" else s[0]
        is_, was = ("are", "were") if o in PLURAL else ("is", "was")
        q = f"Where {is_} the {o} now?" if kind == "now" else f"Where {was} the {o} first seen?"
        lead = f"The {o} {is_} in the" if kind == "now" else f"The {o} {was} first seen in the"
        out.append(QAItem(f"q{i:02d}", round(t, 3), q, (room,), tuple(r for r in ROOMS if r != room),
                          (round(t_ev, 3),), lead, {"kind": kind, "object": o}))
    return out


def params_for(phrasing: Phrasing) -> dict:
    """The ROS 2 params file of the episode: inputs with the String patterns of its phrasing."""
    return {"/**": {"ros__parameters": {
        "inputs": {
            "names": ["observations", "joints", "pose"],
            "observations": {"topic": "/observations", "type": "std_msgs/msg/String",
                             "serializer": "string", "patterns": list(phrasing.patterns),
                             "attribute": phrasing.attribute},
            "joints": {"topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                       "serializer": "joint_state", "min_change": 0.05},
            "pose": {"topic": "/robot_pose", "type": "geometry_msgs/msg/PoseStamped",
                     "serializer": "pose", "decimals": 1, "min_change_m": 0.2, "min_period_s": 20.0},
        }}}}


def make_episode(out: str | Path, seed: int, n_messages: int = 280, n_questions: int = 24,
                 n_objects: int = 16, storage: str = "mcap", phrasing: Phrasing = Phrasing()) -> dict:
    """Write ``OUT/bag`` (rosbag2), ``OUT/qa.jsonl`` and ``OUT/params.yaml``; returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "bag").exists():
        raise FileExistsError(f"{out / 'bag'} exists; choose an empty folder")
    world, records = simulate(seed, n_messages, n_objects, phrasing)
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
    qa = make_questions(world, records[-1][0], n_questions, random.Random(seed * 104729 + 3))
    dump_qa(qa, out / "qa.jsonl")
    (out / "params.yaml").write_text(
        f"# csr_ros params for the synthetic household episode (seed {seed}): the String patterns\n"
        "# below turn its sightings into facts (entity = object, value = room).\n"
        + yaml.safe_dump(params_for(phrasing), sort_keys=False, width=200))
    return {"messages": n, "questions": len(qa), "duration_s": records[-1][0], "objects": len(world.objects)}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder (gets bag/, qa.jsonl, params.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--messages", type=int, default=280, help="messages in the bag")
    p.add_argument("--questions", type=int, default=24)
    p.add_argument("--objects", type=int, default=16, help=f"objects in the house (<= {len(OBJECTS)})")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.objects <= len(OBJECTS):
        raise SystemExit(f"--objects must be in [1, {len(OBJECTS)}]")
    info = make_episode(args.out, args.seed, args.messages, args.questions, args.objects, args.storage)
    print(f"wrote {args.out}: {info['messages']} messages over {info['duration_s']:.0f} s, "
          f"{info['questions']} questions, {info['objects']} objects")
    return 0
