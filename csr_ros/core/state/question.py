"""What a question asks of the entity memory, and the answer frame it gets (pure string work).

A question has an *intent*: its kind and its facet.

=============  =======================================  =====================================
kind           example                                  answer frame (the answer's start)
=============  =======================================  =====================================
``where``      Where is the red cup now?                The red cup is in the ...
               Where was the red cup first seen?        The red cup was first seen in the ...
``when``       When did you last see the red cup?       I last saw the red cup at ...
``count``      How many times have you seen the cup?    I have seen the cup ...
``which``      Which object is in the kitchen now?      In the kitchen there is the ...
``attribute``  Is the front door open?                  The front door is ...
(never seen)   Where is the pink elephant?              I have not seen the pink elephant ...
=============  =======================================  =====================================

The kind comes from the question's form (how many / when / a place named without an entity /
an entity whose attribute is not a place); "never seen" is any where / when / count question
whose entity the memory does not hold.

The facet (the ``first`` or the ``last`` observation) of where / when questions is decided, in
order, by (1) whole-word cues of exactly one facet (``memory.first_seen_cues`` /
``last_seen_cues``): precise when present; (2) when a sentence-similarity function is injected,
the nearer of two sets of prototype questions (the asked entity replaced by "it"), so wordings
without any cue ("Where did the cup start out?") still get a facet; (3) else ``last`` (a
question about where something is asks about the present). Measured on held-out wordings
(``csr_ros/cli/eval/wordings.py``) in docs/benchmarks.md.

The answer frame is what a 135M model needs to answer from a memory line instead of drifting
("The robot's next action is ..."): closed-set scoring scores each candidate inside its own
frame (a "not seen" candidate in its own "I have not seen ..." sentence), free-form generation
starts the answer with it. A QA file's hand-written ``lead_in`` is no longer needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from csr_ros.core.state.entity_memory import clean_value
from csr_ros.core.state.focus import _cue_rx, normalise

Similarity = Callable[[str, Sequence[str]], Sequence[float]]

KINDS = ("where", "when", "count", "which", "attribute")
NEVER_SEEN = "not seen"
"""The canonical closed-set candidate for "I have not seen it" (also matched: never seen, unknown)."""
_NEVER_FORMS = frozenset({"not seen", "never seen", "unknown", "i have not seen it", "i have not seen"})

PLACE_ATTRIBUTES = ("location", "room", "place")

FIRST_PROTOTYPES = (
    "Where was it first seen?", "Where was it originally?", "Where did you first see it?",
    "In which room was it seen for the first time?", "When did you first see it?",
    "When was it seen for the first time?", "At what time was it first seen?",
)
LAST_PROTOTYPES = (
    "Where is it now?", "Where is it currently?", "Where did you last see it?",
    "Which room is it in now?", "When did you last see it?", "When was it seen most recently?",
    "At what time was it last seen?",
)

_COUNT = re.compile(r"\bhow (?:many|often|frequently)\b|\bnumber of\b|\bcount\b|\bhow many times\b")
_WHEN = re.compile(r"^(?:when|at what)\b|\bwhat (?:time|second)\b|\btime of\b|\bhow long ago\b|\bwhen\b")
_SUBJECT_STOP = ("now", "first", "currently", "originally", "initially", "is", "was", "were", "are", "in",
                 "at", "on", "seen", "been", "end", "ended", "start", "started", "come", "came", "show",
                 "showed", "sitting", "lying", "last", "lately", "for", "before", "appear", "appeared",
                 "located", "earliest", "do", "did", "has", "have", "open", "closed", "shut", "there", "right")
_SUBJECT = re.compile(r"\b(?:the|a|an|my|your|our) ([a-z0-9]+(?: [a-z0-9]+)*?)(?= (?:"
                      + "|".join(_SUBJECT_STOP) + r")\b|$)")


def is_never_candidate(candidate: str) -> bool:
    """True for the closed-set candidate that means "I have not seen it"."""
    return normalise(candidate) in _NEVER_FORMS


def is_place_attribute(attribute: str, place_attributes: Sequence[str] = PLACE_ATTRIBUTES) -> bool:
    return normalise(attribute) in {normalise(a) for a in place_attributes}


def question_subject(question: str) -> str:
    """The thing a question asks about as written ("Where is the red cup now?" -> "red cup");
    "" when no "the <noun phrase>" is found."""
    m = _SUBJECT.search(normalise(question))
    return m.group(1) if m else ""


def plural(subject: str) -> bool:
    """A rough English plural test for the verb of a frame ("keys", "glasses", "scissors")."""
    last = subject.split()[-1] if subject.split() else ""
    return last.endswith("s") and not last.endswith("ss") and len(last) > 3


@dataclass(frozen=True)
class Intent:
    """What a question asks.

    Attributes:
        kind: where | when | count | which | attribute.
        facet: first | last (count / which / attribute: last).
        subject: the entity as the frame names it ("red cup"); "" when unknown.
        place: which: the place asked about; else "".
        never: the memory holds nothing about the subject (where / when / count only).
        facet_by: cue | similarity | default (how the facet was decided).
        attribute: attribute kind: the attribute asked about ("state").
    """

    kind: str
    facet: str = "last"
    subject: str = ""
    place: str = ""
    never: bool = False
    facet_by: str = "default"
    attribute: str = "state"

    def key(self) -> str:
        """The label of the fact a question asks for, as its memory line starts ("red cup last
        seen in", "red cup first seen at", "red cup seen", "in the kitchen now", "front door
        state"); "" when nothing is named. Closed-set scoring continues ``key + ":"``, so every
        candidate, "never seen" included, competes at the same word, right where the memory
        line puts the value."""
        s = self.subject
        if self.kind == "which":
            return f"in the {self.place} now"
        if not s:
            return ""
        if self.kind == "attribute":
            return f"{s} {self.attribute}"
        if self.kind == "count":
            return f"{s} seen"
        return f"{s} {'first' if self.facet == 'first' else 'last'} seen {'at' if self.kind == 'when' else 'in'}"

    def score_frame(self) -> str:
        """The frame closed-set candidates are scored after ("red cup last seen in:")."""
        return f"{self.key()}:" if self.key() else ""

    def frame(self) -> str:
        """The start of the answer (see the module table); its candidates follow after a space."""
        s = self.subject or "it"
        the = f"the {s}" if self.subject else "it"
        be, was = ("are", "were") if plural(s) else ("is", "was")
        if not self.subject and self.kind in ("where", "when", "count"):
            return ""  # not a question about a named thing: no frame
        if self.never:
            return f"I have not seen {the}"
        if self.kind == "when":
            return f"I {'first' if self.facet == 'first' else 'last'} saw {the} at"
        if self.kind == "count":
            return f"I have seen {the}"
        if self.kind == "which":
            return f"In the {self.place} there is the"
        if self.kind == "attribute":
            return f"{the[0].upper()}{the[1:]} {be}"
        if self.facet == "first":
            return f"{the[0].upper()}{the[1:]} {was} first seen in the"
        return f"{the[0].upper()}{the[1:]} {be} in the"

    def never_frame(self) -> str:
        """The sentence a "not seen" candidate is scored as after a hand-written lead-in."""
        return f"I have not seen {'the ' + self.subject if self.subject else 'it'}"


class FacetChooser:
    """First or last observation (see the module doc): cues, then prototypes, then ``last``.

    Args:
        first_cues, last_cues: whole-word cues (``memory.first_seen_cues`` / ``last_seen_cues``).
        similarity: ``similarity(text, prototypes) -> scores`` (e.g. all-MiniLM-L6-v2 cosine);
            None: cues only.
        use_cues: False measures the prototypes alone.
    """

    def __init__(self, first_cues: Sequence[str] = (), last_cues: Sequence[str] = (),
                 similarity: Similarity | None = None, use_cues: bool = True):
        self._cues = {"first": _cue_rx(first_cues), "last": _cue_rx(last_cues)} if use_cues else {}
        self.similarity = similarity

    def choose(self, question: str, subject: str = "") -> tuple[str, str]:
        """``(facet, how)``: how = cue | similarity | default."""
        nq = normalise(question)
        asked = [f for f, rx in self._cues.items() if rx is not None and rx.search(nq)]
        if len(asked) == 1:
            return asked[0], "cue"
        if self.similarity is not None:
            text = question
            if subject:
                text = re.sub(r"\b(?:the )?" + re.escape(subject) + r"\b", "it", nq)
            first = max(self.similarity(text, list(FIRST_PROTOTYPES)))
            last = max(self.similarity(text, list(LAST_PROTOTYPES)))
            return ("first" if first > last else "last"), "similarity"
        return "last", "default"


def _names_place(question: str, places: Sequence[str]) -> list[str]:
    """The places (whole words, normalised) a question names."""
    nq = normalise(question)
    return [p for p in places if normalise(p) and re.search(r"(?<![0-9a-z])" + re.escape(normalise(p)) + r"(?![0-9a-z])", nq)]


def classify(question: str, entity: str | None, attributes: Sequence[str], places: Sequence[str],
             chooser: FacetChooser, place_attributes: Sequence[str] = PLACE_ATTRIBUTES) -> Intent:
    """The intent of ``question``.

    Args:
        entity: the memory entity the question names (focus matching), None: none.
        attributes: that entity's attributes in the memory.
        places: values of place attributes the memory holds (for the reverse lookup).
    """
    nq = normalise(question)
    subject = normalise(entity) if entity else question_subject(question)
    unknown = entity is None and bool(subject)  # names a thing the memory does not hold
    if _COUNT.search(nq):
        return Intent("count", "last", subject, never=unknown)
    if _WHEN.search(nq):
        facet, how = chooser.choose(question, subject)
        return Intent("when", facet, subject, never=unknown, facet_by=how)
    if entity is not None and attributes and not any(is_place_attribute(a, place_attributes) for a in attributes):
        return Intent("attribute", "last", subject)
    if entity is None:
        named = _names_place(question, places)
        if named:
            return Intent("which", "last", "", max(named, key=len))
    facet, how = chooser.choose(question, subject)
    return Intent("where", facet, subject, never=unknown, facet_by=how)


_WHICH = re.compile(r"\b(?:object|objects|thing|things|item|items)\b|^what(?: s| is)?(?: \w+)? in the\b")
_IN_PLACE = re.compile(r"\bin the ([a-z0-9]+(?: [a-z0-9]+)*?)(?= (?:now|at|currently|right|these|today)\b|$)")


def question_intent(question: str, chooser: FacetChooser) -> Intent:
    """The intent from the question alone (a method without an entity memory): never "never";
    a reverse lookup when it asks for an object / thing "in the <place>"."""
    nq = normalise(question)
    if not _COUNT.search(nq) and not _WHEN.search(nq) and _WHICH.search(nq):
        m = _IN_PLACE.search(nq)
        if m:
            return Intent("which", "last", "", m.group(1))
    it = classify(question, None, (), (), chooser)
    return Intent(it.kind, it.facet, it.subject, it.place, False, it.facet_by)


def memory_intent(question: str, memory, matcher, chooser: FacetChooser,
                  place_attributes: Sequence[str] = PLACE_ATTRIBUTES) -> tuple[Intent, list[str], list]:
    """``(intent, the matched entity's keys, the focus matches)`` of ``question`` against an
    entity memory (``matcher``: a :class:`csr_ros.core.state.focus.FocusMatcher`; the best
    match is the entity asked about)."""
    from csr_ros.core.state.focus import entity_keys

    by_entity = entity_keys(memory)
    matches = matcher.match(question, list(by_entity))
    places = memory.place_values(place_attributes)
    if matches and matches[0].how == "similar" and _names_place(question, places):
        matches = []  # "what is in the garage?" names a place, not the similar "garage door"
    entity = matches[0].entity if matches else None
    keys = by_entity.get(entity, []) if entity else []
    attributes = [k.rpartition(".")[2] for k in keys]
    it = classify(question, entity, attributes, places, chooser, place_attributes)
    if it.kind == "attribute":
        other = [a for a in attributes if not is_place_attribute(a, place_attributes)]
        it = Intent(it.kind, it.facet, it.subject, it.place, it.never, it.facet_by, other[0] if other else "state")
    return it, keys, matches[:1]


def intent_lines(memory, intent: Intent, keys: Sequence[str], epoch_ns: int,
                 place_attributes: Sequence[str] = PLACE_ATTRIBUTES) -> list[str]:
    """The memory lines a question of this intent is answered from, one fact per line, each
    labelled with the intent's :meth:`Intent.key` (what closed-set scoring continues)::

        red cup last seen in: bedroom (at 95.1 s)        where (the asked facet)
        red cup first seen at: 12.3 s (in the kitchen)   when
        red cup seen: 7 times                            count
        in the kitchen now: blue mug, red cup            which
        front door state: closed (at 50.0 s)             attribute
        pink elephant last seen in: never seen           never seen
    """
    key = intent.key()
    if intent.never:
        return [f"{key or intent.subject or 'it'}: never seen"]
    if intent.kind == "which":
        held = [normalise(e) for e in memory.holders(intent.place, place_attributes)]
        return [f"{key}: {', '.join(held) if held else 'nothing seen'}"]
    place_keys = [k for k in keys if is_place_attribute(k.rpartition('.')[2], place_attributes)]
    chosen = [k for k in keys if k not in place_keys] if intent.kind == "attribute" else (place_keys or list(keys))
    out = []
    for k in chosen:
        e = memory.get(k)
        if e is None:
            continue
        obs = e.first if intent.facet == "first" else e.last
        t = f"{(obs.stamp_ns - epoch_ns) / 1e9:.1f} s"
        value = clean_value(obs.value, memory.max_value_chars)
        if intent.kind == "count":
            out.append(f"{key}: {e.count} {'time' if e.count == 1 else 'times'}")
        elif intent.kind == "when":
            out.append(f"{key}: {t} (in the {value})")
        else:
            out.append(f"{key}: {value} (at {t})")
    return out
