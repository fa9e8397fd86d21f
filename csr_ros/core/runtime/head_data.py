"""Recordings for training action heads, and a documented synthetic recorder (no torch, no ROS).

A recording is JSON lines, one record per accepted observation, in episode order::

    {"episode": 0, "stamp_ns": 1000000000, "source": "/camera/people",
     "text": "person 1.8 m ahead, waving at the robot", "action": "wave"}

``action`` names the registry entry the demonstrator executed after that observation (or give a
literal ``"chunk"``: H x D numbers, row-major). On a robot this comes from teleoperation logs: the
serialized perception increments (the same text the cached state holds) and the commanded chunk.

The synthetic recipe (:func:`synthetic_recording`, used for the shipped example head) simulates a
mobile manipulator in a home: every step one sensor reports something and the demonstrated
action is the one a careful operator would take for it:

==================================================  ==========
newest observation                                   action
==================================================  ==========
a person nearby waving at the robot                  wave
an obstacle closer than 0.5 m ahead                  retreat
an object within reach on a surface                  reach
an object between the gripper fingers                grasp
a target to the left / to the right                  turn_left / turn_right
a target straight ahead, farther than 1 m            approach
nothing new (idle status)                            hold
==================================================  ==========

Distances, angles, objects, rooms and the wording vary with a seeded RNG, so the head must read
the observation, not memorise a sentence.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OBJECTS = ["red cup", "blue box", "water bottle", "book", "apple", "phone", "toy car", "bowl", "remote"]
TARGETS = ["charging dock", "kitchen door", "red cup", "person", "table", "chair", "blue box"]
ROOMS = ["kitchen", "living room", "hallway", "bedroom", "office"]


def observation_for(action: str, rng: random.Random) -> tuple[str, str]:
    """(source, text) of one observation that calls for ``action``."""
    obj, tgt, room = rng.choice(OBJECTS), rng.choice(TARGETS), rng.choice(ROOMS)
    d = rng.uniform(1.2, 4.0)
    if action == "wave":
        return "/camera/people", rng.choice([f"person {d:.1f} m ahead, waving at the robot",
                                             f"a child in the {room} waves at the robot from {d:.1f} m",
                                             f"someone says hello and waves, {d:.1f} m away"])
    if action == "retreat":
        near = rng.uniform(0.15, 0.45)
        return "/scan", rng.choice([f"obstacle {near:.2f} m ahead, too close",
                                    f"person stepped in front of the robot at {near:.2f} m",
                                    f"wall only {near:.2f} m in front of the base"])
    if action == "reach":
        r = rng.uniform(0.3, 0.6)
        return "/camera/objects", rng.choice([f"{obj} on the table {r:.2f} m in front, within reach",
                                              f"{obj} within reach at {r:.2f} m on the counter",
                                              f"the arm can reach the {obj}, {r:.2f} m ahead"])
    if action == "grasp":
        return "/gripper", rng.choice([f"{obj} between the fingers, gripper open",
                                       f"fingers around the {obj}, ready to close",
                                       f"{obj} is in the hand"])
    if action in ("turn_left", "turn_right"):
        side = "left" if action == "turn_left" else "right"
        a = rng.randint(25, 80)
        return "/camera/objects", rng.choice([f"{tgt} {a} deg to the {side}, {d:.1f} m away",
                                              f"{tgt} seen on the {side} side at {d:.1f} m",
                                              f"to the {side}: {tgt} at bearing {a} deg"])
    if action == "approach":
        return "/camera/objects", rng.choice([f"{tgt} straight ahead, {d:.1f} m away",
                                              f"{tgt} directly in front at {d:.1f} m",
                                              f"{tgt} ahead in the {room}, {d:.1f} m"])
    if action == "hold":
        return "/status", rng.choice(["idle, nothing new in view", f"waiting in the {room}, no change",
                                      "battery ok, no new detections"])
    raise ValueError(f"the synthetic recorder has no observation for action {action!r}")


ACTIONS = ("wave", "retreat", "reach", "grasp", "turn_left", "turn_right", "approach", "hold")


def synthetic_recording(path: str | Path, episodes: int = 48, steps: int = 10, seed: int = 0,
                        actions: tuple[str, ...] = ACTIONS) -> Path:
    """Write a synthetic recording (the recipe in the module doc); returns the path."""
    rng = random.Random(seed)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w") as f:
        for ep in range(episodes):
            for i in range(steps):
                action = rng.choice(actions)
                source, text = observation_for(action, rng)
                rec = {"episode": ep, "stamp_ns": (i + 1) * 1_000_000_000, "source": source, "text": text,
                       "action": action}
                f.write(json.dumps(rec) + "\n")
    return p
