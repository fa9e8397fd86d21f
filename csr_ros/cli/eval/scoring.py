"""Free-form answer scoring that cannot be fooled by substrings.

An answer text is correct when it *says* an accepted answer and says no reject:

* words match as whole words on normalised text (case, punctuation): "one" is not found in
  "someone" or "gone", "living room" not in "dining room";
* numbers match as numbers: the answer "7" is found in "7 times" or "seven times" but not in
  "17", "1.7" or "70"; "95.1" in "at 95.10 s"; "once", "twice", "thrice" are 1, 2, 3;
* the "not seen" answer (:data:`csr_ros.core.state.question.NEVER_SEEN`) is found in "I have
  not seen ...", "I never saw ...", "I haven't observed ...".
"""

from __future__ import annotations

import re
from typing import Sequence

from csr_ros.core.state.focus import normalise
from csr_ros.core.state.question import is_never_candidate

_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_WORDS.update({"once": 1, "twice": 2, "thrice": 3, "no": 0, "none": 0})
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w]|\.\d)")
_NEVER = re.compile(r"\b(?:not|never|haven t|hasn t|didn t|have not|did not)\b(?: \w+){0,2} "
                    r"(?:seen|saw|see|observed|spotted|noticed)\b")


def numbers(text: str) -> list[float]:
    """Every number the text says: digits (``7``, ``95.1``) and number words (``seven``, ``twice``)."""
    out = [float(m.group(0)) for m in _NUMBER.finditer(text.lower())]
    out += [float(_WORDS[w]) for w in normalise(text).split() if w in _WORDS and w not in ("no", "none")]
    return out


def as_number(answer: str) -> float | None:
    """The number an answer string stands for ("7", "7 times", "95.1 s", "twice"), or None."""
    words = normalise(answer.replace(".", "DOT")).replace("dot", ".").split()
    if not words:
        return None
    w = words[0]
    if re.fullmatch(r"-?\d+(?:\.\d+)?", w):
        return float(w)
    return float(_WORDS[w]) if w in _WORDS and w not in ("no", "none") else None


def says(text: str, answer: str) -> bool:
    """Whether ``text`` says ``answer`` (whole words, numbers as numbers, "not seen" forms)."""
    if is_never_candidate(answer):
        return bool(_NEVER.search(normalise(text)))
    num = as_number(answer)
    if num is not None:
        return any(abs(x - num) < 1e-6 for x in numbers(text))
    want = normalise(answer)
    return bool(want) and f" {want} " in f" {normalise(text)} "


def correct_text(text: str, answers: Sequence[str], rejects: Sequence[str]) -> bool:
    """An accepted answer said and no reject said."""
    return any(says(text, a) for a in answers) and not any(says(text, r) for r in rejects)


def drifted(text: str, candidates: Sequence[str]) -> bool:
    """The answer said none of the candidates (it went off the question: "The robot's next
    action is ..."); counted as the drift rate of free-form answers."""
    return not any(says(text, c) for c in candidates)
