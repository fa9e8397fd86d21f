"""Episodes: a rosbag2 directory (MCAP or sqlite3) + questions in JSON Lines + a params file.

QA format, one JSON object per line::

    {"id": "q07", "t": 118.5, "question": "Where is the red cup now?",
     "answers": ["bedroom"], "rejects": ["kitchen", "garage", ...],
     "evidence": [97.0], "lead_in": "The red cup is in the", "kind": "now"}

``t`` is seconds from the bag's first message (the question is asked once every message up to
``t`` has been read); ``answers`` are the accepted strings, ``rejects`` the other candidates of
the closed set. Optional: ``evidence`` (seconds of the messages that hold the answer; the
``oracle`` method reads only those), ``lead_in`` (the start of the answer, e.g. "The red cup is
in the"; without one the answer frame is derived from the question, see
:mod:`csr_ros.core.state.question`). Any other key (e.g. ``kind``) is kept and reported per value.

Bags are read and written with the pure-Python ``rosbags`` package (no ROS install needed);
messages come back as ``rosbags`` dataclasses, which the serializers read by attribute exactly
like rclpy messages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

KNOWN_KEYS = ("id", "t", "question", "answers", "rejects", "evidence", "lead_in")


class EpisodeError(ValueError):
    """A malformed episode file (the message names the file, line and field)."""


# ------------------------------------------------------------------------------------ QA
@dataclass(frozen=True)
class QAItem:
    """One question of an episode (see the module doc for the JSON keys)."""

    id: str
    t_s: float
    question: str
    answers: tuple[str, ...]
    rejects: tuple[str, ...]
    evidence_s: tuple[float, ...] = ()
    lead_in: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def candidates(self) -> tuple[str, ...]:
        """The closed set scored: accepted answers first, then the rejects."""
        return self.answers + self.rejects

    @property
    def kind(self) -> str:
        return str(self.extra.get("kind", ""))

    def correct_choice(self, index: int) -> bool:
        """Whether candidate ``index`` (into :attr:`candidates`) is an accepted answer."""
        return 0 <= index < len(self.answers)

    def correct_text(self, text: str) -> bool:
        """Free-form: the text says an accepted answer and no reject (whole words, numbers as
        numbers: :mod:`csr_ros.cli.eval.scoring`)."""
        from csr_ros.cli.eval.scoring import correct_text

        return correct_text(text, self.answers, self.rejects)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "t": self.t_s, "question": self.question,
                               "answers": list(self.answers), "rejects": list(self.rejects)}
        if self.evidence_s:
            out["evidence"] = list(self.evidence_s)
        if self.lead_in:
            out["lead_in"] = self.lead_in
        out.update(self.extra)
        return out


def _strings(obj: Any, where: str, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(obj, list) or not all(isinstance(s, str) and s.strip() for s in obj):
        raise EpisodeError(f"{where}: expected a list of non-empty strings")
    if not obj and not allow_empty:
        raise EpisodeError(f"{where}: must not be empty")
    return tuple(obj)


def parse_qa_item(obj: Any, where: str) -> QAItem:
    """One validated QA item from a decoded JSON object (``where`` prefixes error messages)."""
    if not isinstance(obj, dict):
        raise EpisodeError(f"{where}: expected a JSON object")
    for key, typ in (("id", str), ("question", str)):
        if not isinstance(obj.get(key), typ) or not obj[key].strip():
            raise EpisodeError(f"{where}: '{key}' must be a non-empty string")
    t = obj.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise EpisodeError(f"{where}: 't' must be a number of seconds >= 0")
    answers = _strings(obj.get("answers"), f"{where}: 'answers'", False)
    rejects = _strings(obj.get("rejects", []), f"{where}: 'rejects'", True)
    clash = {a.lower() for a in answers} & {r.lower() for r in rejects}
    if clash:
        raise EpisodeError(f"{where}: {sorted(clash)} both accepted and rejected")
    ev = obj.get("evidence", [])
    if not isinstance(ev, list) or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in ev):
        raise EpisodeError(f"{where}: 'evidence' must be a list of seconds")
    lead_in = obj.get("lead_in", "")
    if not isinstance(lead_in, str):
        raise EpisodeError(f"{where}: 'lead_in' must be a string")
    extra = {k: v for k, v in obj.items() if k not in KNOWN_KEYS}
    return QAItem(obj["id"], float(t), obj["question"], answers, rejects,
                  tuple(float(e) for e in ev), lead_in, extra)


def load_qa(path: str | Path) -> list[QAItem]:
    """All questions of a JSON Lines file, sorted by time (ids must be unique)."""
    items, seen = [], set()
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EpisodeError(f"{where}: not JSON ({e.msg})") from None
        item = parse_qa_item(obj, where)
        if item.id in seen:
            raise EpisodeError(f"{where}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise EpisodeError(f"{path}: no questions")
    return sorted(items, key=lambda q: q.t_s)


def dump_qa(items: Iterable[QAItem], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(q.to_json()) + "\n" for q in items))


# ----------------------------------------------------------------------------------- bags
@dataclass(frozen=True)
class BagMessage:
    """One recorded message.

    Attributes:
        t_s: seconds since the bag's first message. stamp_ns: the recorded (log) time, ns.
        msg: the deserialized message (read by attribute). raw: its CDR bytes as recorded.
    """

    t_s: float
    stamp_ns: int
    topic: str
    msgtype: str
    msg: Any
    raw: bytes


def typestore():
    """The ROS 2 Kilted type store of ``rosbags``."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _register_bag_types(store, connections) -> None:
    """Types recorded in the bag that the store does not know (custom messages)."""
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    for c in connections:
        if c.msgtype in store.types or c.msgdef is None or not c.msgdef.data:
            continue
        fmt = getattr(c.msgdef.format, "name", str(c.msgdef.format)).upper()
        parse = get_types_from_idl if "IDL" in fmt else get_types_from_msg
        store.register(parse(c.msgdef.data, c.msgtype))


def iter_bag(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
    """Messages of a rosbag2 directory in recorded order (MCAP or sqlite3, auto-detected)."""
    from rosbags.rosbag2 import Reader

    if not Path(path).is_dir():
        raise EpisodeError(f"{path}: not a rosbag2 directory")
    store = typestore()
    with Reader(path) as reader:
        _register_bag_types(store, reader.connections)
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        t0 = reader.start_time
        for conn, stamp_ns, raw in reader.messages(connections=conns):
            msg = store.deserialize_cdr(raw, conn.msgtype)
            yield BagMessage((stamp_ns - t0) / 1e9, stamp_ns, conn.topic, conn.msgtype, msg, bytes(raw))


def read_bag(path: str | Path, topics: Sequence[str] | None = None) -> list[BagMessage]:
    return list(iter_bag(path, topics))


def write_bag(path: str | Path, records: Iterable[tuple[int, str, str, Any]], storage: str = "mcap") -> int:
    """Write ``(stamp_ns, topic, msgtype, msg)`` records (msg: a ``rosbags`` message object) as a
    rosbag2 directory; returns the number of messages. ``storage``: ``mcap`` or ``sqlite3``."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    store, conns, n = typestore(), {}, 0
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        for stamp_ns, topic, msgtype, msg in records:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conns[topic], int(stamp_ns), bytes(store.serialize_cdr(msg, msgtype)))
            n += 1
    return n


# ------------------------------------------------------------------------ episode layout
@dataclass(frozen=True)
class EpisodePaths:
    """Where an episode's parts are: ``bag/``, ``qa.jsonl`` and ``params.yaml`` in one folder."""

    bag: Path
    qa: Path | None
    params: Path | None


def resolve_episode(path: str | Path, qa: str | Path | None = None,
                    params: str | Path | None = None) -> EpisodePaths:
    """A bag directory, or an episode folder holding ``bag/`` (+ ``qa.jsonl``, ``params.yaml``)."""
    p = Path(path)
    folder = p if (p / "bag").is_dir() else None
    bag = p / "bag" if folder else p
    if not (bag / "metadata.yaml").exists():
        raise EpisodeError(f"{path}: no rosbag2 metadata.yaml (pass a bag directory or an episode folder)")

    def pick(given, name):
        if given is not None:
            return Path(given)
        for cand in ([folder / name] if folder else []) + [bag.parent / name]:
            if cand.exists():
                return cand
        return None

    return EpisodePaths(bag, pick(qa, "qa.jsonl"), pick(params, "params.yaml"))
