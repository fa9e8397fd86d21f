"""The questions of a generated episode, per kind, with their answers from the simulated world.

Kinds (``kind`` in qa.jsonl; ``csr-ros eval`` reports recall per kind):

============  ==================================================  ==============================
kind          answer                                              closed set
============  ==================================================  ==============================
now           room of the newest sighting                         10 rooms + "not seen"
first         room of the first sighting                          10 rooms + "not seen"
when_last     time of the newest sighting ("95.1 s")              6 sighting times + "not seen"
when_first    time of the first sighting                          6 sighting times + "not seen"
count         sightings so far ("3 times")                        1..8 times + "not seen"
which         an object whose newest sighting is in the room      those + up to 7 objects elsewhere
never         "not seen" (an object that never appeared)          "not seen" + 10 rooms
door          open / closed (newest door report)                  open, closed
============  ==================================================  ==============================

Times are in the state's clock: seconds since the first message (the first message of a
generated bag is a pose, which every input config accepts), one decimal, as the memory renders
them. Objects picked up after their newest sighting are never asked about (their room is unknown).
Wordings are drawn from :mod:`csr_ros.cli.eval.wordings` (``dev`` or ``heldout``).
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from csr_ros.cli.eval.episode import QAItem
from csr_ros.cli.eval.wordings import DEV, HELDOUT
from csr_ros.core.state.question import NEVER_SEEN

KINDS = ("now", "first", "when_last", "when_first", "count", "which", "never", "door")
LEGACY_KINDS = ("now", "first")
_WORDING_KEY = {"now": "where_now", "first": "where_first"}


def _times(n: int) -> str:
    return "1 time" if n == 1 else f"{n} times"


def _secs(t_s: float) -> str:
    return f"{t_s:.1f} s"


def wording(kind: str, rng: random.Random, wordings: str, plural: bool, **names: str) -> str:
    """One wording of ``kind`` from the ``wordings`` set, filled in (verbs agree with plurals)."""
    table = HELDOUT if wordings == "heldout" else DEV
    text = rng.choice(table[_WORDING_KEY.get(kind, kind)])
    if plural:
        text = text.replace("Where's the {obj}", "Where are the {obj}")
        text = re.sub(r"\b(is|was) the \{obj\}", lambda m: {"is": "are", "was": "were"}[m.group(1)] + " the {obj}", text)
    return text.format(**names)


def lead_in(kind: str, obj: str, plural: bool, room: str = "", door: str = "") -> str:
    """The hand-written lead-in of the older QA format (``--lead-ins``)."""
    be, was = ("are", "were") if plural else ("is", "was")
    return {"now": f"The {obj} {be} in the", "first": f"The {obj} {was} first seen in the",
            "when_last": f"The {obj} {was} last seen at", "when_first": f"The {obj} {was} first seen at",
            "count": f"The {obj} {was} seen", "which": f"An object in the {room} is the",
            "never": f"The {obj} {be} in the", "door": f"The {door} is"}[kind]


class QuestionMaker:
    """Questions over a simulated world (``world.seen``, ``world.pickups``, ``door_log``).

    Args:
        world: :class:`csr_ros.cli.make_episode.World`. rooms, objects: the closed sets.
        door_log: door -> [(t_s, state)]. absent: objects that never appear in the episode.
        plural: objects named in the plural.
    """

    def __init__(self, world, rooms: Sequence[str], door_log: dict, absent: Sequence[str], plural: frozenset,
                 wordings: str = "dev", lead_ins: bool = False):
        self.world, self.rooms, self.door_log, self.absent = world, tuple(rooms), door_log, tuple(absent)
        self.plural, self.wordings, self.lead_ins = plural, wordings, lead_ins
        self.asked: dict[str, int] = {}

    def _pick(self, rng: random.Random, pool: list) -> tuple:
        least = min(self.asked.get(x[0], 0) for x in pool)  # spread questions over the objects
        x = rng.choice([x for x in pool if self.asked.get(x[0], 0) == least])
        self.asked[x[0]] = self.asked.get(x[0], 0) + 1
        return x

    def _known(self, t: float) -> list[tuple[str, list]]:
        out = []
        for o in self.world.objects:
            s, picked = self.world.known_at(o, t)
            if s and not picked:
                out.append((o, s))
        return out

    def ask(self, qid: str, kind: str, t: float, rng: random.Random) -> QAItem | None:
        """One question of ``kind`` at ``t`` (None when the world offers none yet)."""
        made = getattr(self, f"_{kind}")(t, rng)
        if made is None:
            return None
        answers, rejects, evidence, names = made
        obj = names.get("obj", "")
        plural = obj in self.plural
        text = wording(kind, rng, self.wordings, plural, **names)
        lead = lead_in(kind, obj, plural, names.get("room", ""), names.get("door", "")) if self.lead_ins else ""
        extra = {"kind": kind, "object": obj or names.get("room") or names.get("door")}
        return QAItem(qid, round(t, 3), text, tuple(answers), tuple(rejects), tuple(round(e, 3) for e in evidence),
                      lead, extra)

    # ------------------------------------------------------------------ kinds
    def _where(self, t, rng, first: bool):
        known = self._known(t)
        moved = [x for x in known if len({r for _, r in x[1]}) > 1]
        pool = moved if moved and rng.random() < 0.67 else known
        if not pool:
            return None
        o, s = self._pick(rng, pool)
        t_ev, room = s[0] if first else s[-1]
        return [room], [r for r in self.rooms if r != room] + [NEVER_SEEN], [t_ev], {"obj": o}

    def _now(self, t, rng):
        return self._where(t, rng, False)

    def _first(self, t, rng):
        return self._where(t, rng, True)

    def _when(self, t, rng, first: bool):
        known = self._known(t)
        pool = [x for x in known if len(x[1]) > 1]
        if not pool:
            return None
        o, s = self._pick(rng, pool)
        t_ev, t_other = (s[0][0], s[-1][0]) if first else (s[-1][0], s[0][0])
        right = _secs(t_ev)
        near = [_secs(t_other)] if _secs(t_other) != right else []  # the other facet's time
        rest = sorted({_secs(x[0]) for _, ss in known for x in ss} - {right, *near})
        rejects = near + rng.sample(rest, min(len(rest), 6 - len(near)))
        return [right], rejects + [NEVER_SEEN], [t_ev], {"obj": o}

    def _when_last(self, t, rng):
        return self._when(t, rng, False)

    def _when_first(self, t, rng):
        return self._when(t, rng, True)

    def _count(self, t, rng):
        pool = self._known(t)
        if not pool:
            return None
        o, s = self._pick(rng, pool)
        n = len(s)
        rejects = [_times(k) for k in range(1, max(8, n + 2) + 1) if k != n]
        return [_times(n)], rejects + [NEVER_SEEN], [x[0] for x in s], {"obj": o}

    def _which(self, t, rng):
        last = {o: s[-1] for o, s in self._known(t)}
        rooms = sorted({r for _, r in last.values()})
        if not rooms:
            return None
        room = rng.choice(rooms)
        here = sorted(o for o, (_, r) in last.items() if r == room)
        elsewhere = sorted(o for o, (_, r) in last.items() if r != room)
        rejects = rng.sample(elsewhere, min(7, len(elsewhere)))
        if not rejects:
            return None
        return here, rejects, [last[o][0] for o in here], {"room": room}

    def _never(self, t, rng):
        if not self.absent:
            return None
        o = rng.choice(self.absent)
        return [NEVER_SEEN], list(self.rooms), [], {"obj": o}

    def _door(self, t, rng):
        known = [(d, [x for x in log if x[0] <= t]) for d, log in sorted(self.door_log.items())]
        known = [(d, log) for d, log in known if log]
        if not known:
            return None
        d, log = rng.choice(known)
        t_ev, state = log[-1]
        return [state], ["closed" if state == "open" else "open"], [t_ev], {"door": d}


def make_questions(maker: QuestionMaker, end_s: float, n: int, rng: random.Random,
                   kinds: Sequence[str] = KINDS) -> list[QAItem]:
    """``n`` questions at times spread over the last 70% of the episode, kinds in turn."""
    out: list[QAItem] = []
    order = list(kinds) * (n // len(kinds) + 1)
    times = sorted(rng.uniform(0.3 * end_s, end_s) for _ in range(n))
    for i, t in enumerate(times):
        q = maker.ask(f"q{i:02d}", order[i], t, rng)
        if q is not None:
            out.append(q)
    return out
