"""Question wordings of the generated episodes, per question kind (``{obj}``, ``{room}``, ``{door}``).

Two disjoint sets:

* ``DEV``: the wordings the question classifier (:mod:`csr_ros.core.state.question`) was developed
  and tuned on; ``csr-ros make-episode`` uses them by default.
* ``HELDOUT``: written in one sitting before the classifier existed (committed before it, see
  ``git log`` of this file), never used to choose its prototypes or cues; only to measure it
  (``csr-ros make-episode --wordings heldout`` and test/core/test_question.py). They avoid the
  dev wordings' key words where natural ("now", "first") to test the facet choice without cues.

Kinds: ``where_now``, ``where_first``, ``when_last``, ``when_first``, ``count``, ``which`` (reverse
lookup: an object in a room now), ``never`` (an object never observed: where is it),
``door`` (an attribute other than location: open / closed).
"""

from __future__ import annotations

DEV: dict[str, tuple[str, ...]] = {
    "where_now": ("Where is the {obj} now?", "Which room is the {obj} in now?",
                  "Where is the {obj} currently?", "Where did you last see the {obj}?"),
    "where_first": ("Where was the {obj} first seen?", "In which room was the {obj} seen for the first time?",
                    "Where was the {obj} originally?", "Where did you first see the {obj}?"),
    "when_last": ("When did you last see the {obj}?", "When was the {obj} seen most recently?",
                  "At what time was the {obj} last seen?"),
    "when_first": ("When did you first see the {obj}?", "When was the {obj} seen for the first time?",
                   "At what time was the {obj} first seen?"),
    "count": ("How many times have you seen the {obj}?", "How often was the {obj} seen?",
              "How many times was the {obj} observed?"),
    "which": ("Which object is in the {room} now?", "Name an object that is in the {room} now.",
              "What is in the {room} now?"),
    "never": ("Where is the {obj} now?", "Where is the {obj}?", "Which room is the {obj} in?"),
    "door": ("Is the {door} open or closed?", "What is the state of the {door}?", "Is the {door} open?"),
}

HELDOUT: dict[str, tuple[str, ...]] = {
    "where_now": ("Where has the {obj} ended up?", "Where would I find the {obj} at this moment?",
                  "Which room holds the {obj} these days?", "Where's the {obj} at present?",
                  "Where is the {obj} sitting right now?", "Tell me where the {obj} is."),
    "where_first": ("Where did the {obj} start out?", "In which room did you initially notice the {obj}?",
                    "Where was the {obj} at the very beginning?", "Where was the {obj} before anyone moved it?",
                    "Which room did the {obj} come from originally?", "Where did you spot the {obj} earliest?"),
    "when_last": ("When was the most recent sighting of the {obj}?", "What time did you see the {obj} latest?",
                  "How long ago, in seconds, did you see the {obj} lately?", "When did the {obj} last show up?"),
    "when_first": ("When did the {obj} initially appear?", "What was the time of the earliest sighting of the {obj}?",
                   "At what second did you notice the {obj} for the very first time?",
                   "When did the {obj} show up at the start?"),
    "count": ("How frequently did the {obj} appear?", "What number of sightings of the {obj} were there?",
              "How many sightings of the {obj} do you have?", "Count the times you observed the {obj}."),
    "which": ("What object can be found in the {room} at the moment?", "Tell me one thing that is in the {room}.",
              "Which item sits in the {room} currently?", "What's lying in the {room}?"),
    "never": ("Where has the {obj} ended up?", "Tell me where the {obj} is.", "Where's the {obj} at present?"),
    "door": ("Is the {door} shut?", "Has the {door} been left open?", "Tell me whether the {door} is open."),
}
