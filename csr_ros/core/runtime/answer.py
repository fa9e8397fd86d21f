"""Answer contexts: what a question is answered from (pure prompt builders over the engine).

``state`` (default): the cached state, then the query: the question, the model's answer turn
opened with the focus lines (memory lines of the entities the question names), then an optional
lead-in; after the cached state, never inside it::

    [cached state ...............................][question][tail][focus lines][lead-in]
                                                   `---- cropped away after the answer ---'

``memory``: a short fresh prompt that does not read the cached state at all: the pinned system
prefix, optionally the newest increments that name the same entities (``recent_increments``,
0 by default), the focus lines, then the question. It costs a prefill of about a hundred tokens
whatever the history length, and gives a small model the one fact it needs instead of a haystack.

The layouts were chosen on development episodes (seeds 100-102, not the evaluated ones) with
SmolLM2-135M: after a 2048-token state, focus lines in the answer turn doubled recall over
lines before the question (0.48 vs 0.23); in the short memory prompt, lines before the question
did best (0.86 vs 0.74). Later, on the four household episodes (README, "Memory and
evaluation"), the memory prompt with the asked facet's lines only (see :mod:`csr_ros.core.state.focus`)
and no raw increment answered 87 of 88 questions, against 73 with the newest increment and both
lines. Without focus lines both layouts are exactly the template's query, so a state without
focus reads the same tokens as a re-prefill of the same history.

Builders return token ids (:class:`AnswerPrompt`); :func:`score` and :func:`generate` run them
on the engine's backend (the state context on the engine's KV as a branch, the memory context on
a fresh KV state). The engine's state is never modified except that pending increments are
appended first (state context only).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from csr_ros.core.state.focus import Focus, FocusMatcher, normalise
from csr_ros.core.state.ledger import Increment
from csr_ros.core.state.question import (FacetChooser, Intent, intent_lines, is_never_candidate, memory_intent,
                                         question_intent)

CONTEXTS = ("state", "memory")


@dataclass(frozen=True)
class AnswerPrompt:
    """A built answer context.

    Attributes:
        context: ``state`` | ``memory``.
        ids: state: the query tokens appended after the cached state; memory: the whole prompt.
        focus: the focus used (may be empty).
        recent_seqs: memory context: sequence numbers of the increments included.
        frame: the text that starts the answer (a lead-in, or derived from the question's
            intent); ``ids`` end with it, ``base_ids`` are the same prompt without it.
        intent: what the question asks (None: not classified).
        score_frame, score_ids: what closed-set scoring continues (the intent's key frame
            "red cup last seen in:", or the lead-in) and the prompt ending with it.
    """

    context: str
    ids: tuple[int, ...]
    focus: Focus
    recent_seqs: tuple[int, ...] = ()
    frame: str = ""
    base_ids: tuple[int, ...] | None = None
    intent: Intent | None = None
    score_frame: str = ""
    score_ids: tuple[int, ...] | None = None

    @property
    def never_frame(self) -> str:
        return self.intent.never_frame() if self.intent is not None else "I have not seen it"


def names_entity(inc: Increment, entities: Sequence[str]) -> bool:
    """True when the increment's facts or (normalised) text name one of ``entities``."""
    if any(f.entity in entities for f in inc.facts):
        return True
    text = f" {normalise(inc.text)} "
    return any(f" {normalise(e)} " in text for e in entities if normalise(e))


def recent_naming(increments: Sequence[Increment], entities: Sequence[str], n: int) -> list[Increment]:
    """The newest ``n`` increments naming one of ``entities``, oldest first."""
    if n <= 0 or not entities:
        return []
    out = []
    for inc in reversed(increments):
        if names_entity(inc, entities):
            out.append(inc)
            if len(out) == n:
                break
    return out[::-1]


def state_query_text(template, question: str, lines: Sequence[str], lead_in: str = "") -> str:
    """Question, answer turn opened with the focus lines, lead-in (= ``template.query`` without lines)."""
    if not lines:
        return template.query(question, None, lead_in)
    return template.query(question, None, "") + "\n".join(lines) + "\n" + lead_in


def state_query_ids(engine, question: str, focus: Focus, lead_in: str = "") -> list[int]:
    """Tokens appended after the cached state (see :func:`state_query_text`)."""
    return engine.backend.encode(state_query_text(engine.template, question, focus.lines, lead_in))


def memory_prompt_ids(engine, question: str, focus: Focus, lead_in: str = "",
                      recent: Sequence[Increment] = (), lines_in_answer: bool = False) -> list[int]:
    """System prefix + the newest increments naming the entities + focus lines + question
    (``template.query`` with the lines before the question; ``lines_in_answer``: after it, at
    the start of the answer turn, as in the state context).

    The increments keep the token ids they were rendered with when accepted (times relative to
    the state's epoch), so nothing is re-rendered.
    """
    ids = list(engine.ledger.prefix_ids)
    for inc in recent:
        ids.extend(inc.token_ids)
    if lines_in_answer:
        return ids + engine.backend.encode(state_query_text(engine.template, question, focus.lines, lead_in))
    return ids + engine.query_ids(question, lead_in, list(focus.lines))


def build(engine, question: str, focus: Focus, context: str = "state", lead_in: str = "",
          recent_increments: int = 0, intent: Intent | None = None, score_frame: str | None = None) -> AnswerPrompt:
    """The answer context ``context`` for ``question`` (see the module doc); the answer starts
    with ``lead_in`` (the frame); closed-set scoring continues ``score_frame`` (default: the
    same frame)."""
    if context not in CONTEXTS:
        raise ValueError(f"unknown answer context {context!r}; use one of {CONTEXTS}")
    recent: list[Increment] = []
    if context == "memory":
        pool = list(engine.ledger.increments) + list(engine.pending)
        recent = recent_naming(pool, focus.entities, recent_increments)
    late = False  # the memory context: lines before the question (see the module doc)

    def ids_with(frame: str) -> tuple[int, ...]:
        if context == "state":
            return tuple(state_query_ids(engine, question, focus, frame))
        return tuple(memory_prompt_ids(engine, question, focus, frame, recent, late))

    ids = ids_with(lead_in)
    base = ids_with("") if lead_in else ids
    score_frame = lead_in if score_frame is None else score_frame
    score_ids = ids if score_frame == lead_in else (ids_with(score_frame) if score_frame else base)
    return AnswerPrompt(context, ids, focus, tuple(i.seq for i in recent), lead_in, base, intent,
                        score_frame, score_ids)


def candidate_ids(backend, candidates: Sequence[str]) -> list[list[int]]:
    """Token ids of each candidate answer, with the leading space a continuation needs."""
    return [backend.encode(c if c.startswith(" ") else " " + c) for c in candidates]


def distinguishing_words(sentences: Sequence[Sequence[str]]) -> list[int]:
    """Per sentence (a word list), the length of its shortest word prefix that no other sentence
    starts with (its whole length when it has none: it is a prefix of another)."""
    out = []
    for i, w in enumerate(sentences):
        others = [o for j, o in enumerate(sentences) if j != i]
        k = 1
        while k < len(w) and any(list(o[:k]) == list(w[:k]) for o in others):
            k += 1
        out.append(k)
    return out


def branch_points(sentences: Sequence[Sequence[str]]) -> list[list[int]]:
    """Per sentence (a word list), the word positions where it parts from another sentence: the
    positions ``j`` (up to its first distinguishing word) at which the sentences sharing its
    first ``j`` words do not all go on with the same word."""
    cut = distinguishing_words(sentences)
    out = []
    for w, k in zip(sentences, cut):
        points = []
        for j in range(k):
            nxt = {tuple(o[j:j + 1]) for o in sentences if list(o[:j]) == list(w[:j])}
            if len(nxt) > 1:
                points.append(j)
        out.append(points or [k - 1])
    return out


def _group_score(backend, sentences: Sequence[Sequence[str]]) -> tuple[list[list[int]], Callable]:
    """Sequences to score (token ids, from the answer turn's start) and a function of their
    scores -> each sentence's score: the sum, over its branch points, of the log-probability of
    the word it takes there given the words before, renormalised over the words the candidates
    take there (the words between branch points are the frame: forced, not scored). The scores
    are then log-probabilities of a distribution over the closed set: the model's own choice at
    each point where the candidates part."""
    points = branch_points(sentences)
    prefixes: dict[tuple[str, ...], int] = {}
    for w, ps in zip(sentences, points):
        for j in ps:
            for n in (j, j + 1):
                if n and tuple(w[:n]) not in prefixes:
                    prefixes[tuple(w[:n])] = len(prefixes)
    seqs = [backend.encode(" ".join(p)) for p in prefixes]

    def combine(scores: Sequence[float]) -> list[float]:
        def s(words: tuple[str, ...]) -> float:
            return float(scores[prefixes[words]]) if words else 0.0

        out = []
        for w, ps in zip(sentences, points):
            total = 0.0
            for j in ps:  # log p(its word | prefix), renormalised over the words taken there
                alts = {tuple(o[:j + 1]) for o in sentences if list(o[:j]) == list(w[:j]) and len(o) > j}
                lps = [s(a) - s(tuple(w[:j])) for a in alts]
                top = max(lps)
                total += s(tuple(w[:j + 1])) - s(tuple(w[:j])) - (top + math.log(sum(math.exp(x - top) for x in lps)))
            out.append(total)
        return out

    return seqs, combine


def framed_scoring(backend, prompt: AnswerPrompt, candidates: Sequence[str]) -> tuple[list[int], list[list[int]], Callable]:
    """``(prompt ids, sequences, combine)`` of closed-set scoring with the candidates in their
    frames: ``combine(score(prompt ids, sequences))`` is one score per candidate.

    Without a lead-in, every candidate continues the intent's key frame ("red cup last seen in:"
    + " bedroom" / " never seen": the "not seen" candidate reads "never seen", as the memory line
    of a never-seen thing does), cut after its first distinguishing word. After a hand-written
    lead-in, each candidate is read as the answer sentence it makes: the lead-in + the candidate,
    or, for a "not seen" candidate, "I have not seen ..." (its own frame). Candidates are
    compared by their **first distinguishing words**: a candidate's score sums, over the points
    where its sentence parts from others, the log-probability of the word it takes there,
    renormalised over the candidates' words at that point ("The" against "I" at the start, then
    "garage" against "living" after "The red cup is in the"); the frame words between are forced
    and the words after its first distinguishing word add nothing, so candidates of different
    lengths ("garage" / "living room", "7 times" / "I have not seen it") compare fairly. When every candidate shares the frame, the frame stays in the
    prompt (``prompt.ids``) and only the candidate words are scored (one branch point).
    """
    never = [is_never_candidate(c) for c in candidates]
    if prompt.score_ids is not None and prompt.score_frame != prompt.frame:  # the intent's key frame
        words = [["never", "seen"] if nv else c.split() for c, nv in zip(candidates, never)]
        cut = distinguishing_words(words)
        seqs = [backend.encode(" " + " ".join(w[:k])) for w, k in zip(words, cut)]
        return list(prompt.score_ids), seqs, lambda scores: [float(x) for x in scores]
    frame_words = prompt.frame.split()
    sentences = [prompt.never_frame.split() if nv else frame_words + c.split() for c, nv in zip(candidates, never)]
    if not any(never) or not prompt.frame:
        cut, n = distinguishing_words(sentences), len(frame_words)
        seqs = [backend.encode(" " + " ".join(w[n:max(k, n + 1)])) for w, k in zip(sentences, cut)]
        return list(prompt.ids), seqs, lambda scores: [float(x) for x in scores]
    base = list(prompt.base_ids if prompt.base_ids is not None else prompt.ids)
    seqs, combine = _group_score(backend, sentences)
    return base, seqs, combine


def score(engine, prompt: AnswerPrompt, candidates: Sequence[str]) -> list[float]:
    """Log-likelihood of each candidate in its frame after the context (one batched forward;
    see :func:`framed_scoring`)."""
    ids, seqs, combine = framed_scoring(engine.backend, prompt, candidates)
    if prompt.context == "state":
        engine.flush()
        return combine(engine.kv.score(ids, seqs))
    return combine(engine.backend.new_state().score(ids, seqs))


@dataclass(frozen=True)
class Generated:
    """A greedy answer. ttft_s: seconds to the first token; total_s: to the last."""

    text: str
    token_ids: tuple[int, ...]
    ttft_s: float
    total_s: float
    context: str


def generate(engine, prompt: AnswerPrompt, max_new_tokens: int = 48) -> Generated:
    """Greedy answer from the context; the branch (or the fresh state) is dropped afterwards."""
    t0 = time.perf_counter()
    if prompt.context == "state":
        engine.flush()
        kv = engine.kv
        bid, logits = kv.open_branch(list(prompt.ids))
    else:
        kv = engine.backend.new_state()
        bid, logits = kv.open_branch(list(prompt.ids))
    out: list[int] = []
    try:
        tok = int(logits.argmax())
        ttft = time.perf_counter() - t0
        while tok not in engine.backend.eos_ids and len(out) < max_new_tokens:
            out.append(tok)
            if len(out) == max_new_tokens:
                break
            tok = int(kv.step({bid: tok})[bid].argmax())
    finally:
        kv.close_branch(bid)
    text = prompt.frame + engine.backend.decode(out)
    return Generated(text, tuple(out), ttft, time.perf_counter() - t0, prompt.context)


class AnswerContexts:
    """The configured answer path for a live question (what the scheduler calls).

    Args:
        memory_cfg: the ``memory`` parameter group (focus_enabled, focus_threshold,
            focus_max_lines, first_seen_cues, last_seen_cues, place_attributes, answer_frames,
            answer_context, recent_increments).
        similarity: focus fallback and facet prototypes scorer (e.g.
            :class:`csr_ros.cli.eval.embed.MiniLM`); None: text matches and cues only.
    """

    def __init__(self, memory_cfg, similarity=None):
        self.cfg = memory_cfg
        self.matcher = FocusMatcher.from_config(memory_cfg, similarity)
        self.chooser = FacetChooser(memory_cfg.first_seen_cues, memory_cfg.last_seen_cues, similarity)
        self.place_attributes = tuple(getattr(memory_cfg, "place_attributes", ("location",)))

    def focus(self, engine, question: str, force: bool = False) -> Focus:
        """Focus lines for ``question`` (empty when switched off, unless ``force``, or when the
        engine keeps no memory): the lines of its intent (:func:`intent_lines`)."""
        return self.understand(engine, question, force)[1]

    def understand(self, engine, question: str, force: bool = False) -> tuple[Intent, Focus]:
        """``(intent, focus)``. Without focus (switched off, no memory) the intent comes from the
        question alone, so no memory fact leaks into an unfocused answer's frame."""
        memory = getattr(engine, "memory", None)
        if not (self.cfg.focus_enabled or force) or memory is None or len(memory) == 0:
            intent = question_intent(question, self.chooser)
            if memory is not None and (self.cfg.focus_enabled or force):
                never = intent.kind in ("where", "when", "count") and bool(intent.subject)  # empty memory
                intent = Intent(intent.kind, intent.facet, intent.subject, intent.place, never, intent.facet_by)
                return intent, Focus((), tuple(intent_lines(memory, intent, [], 0, self.place_attributes)))
            return intent, Focus((), ())
        intent, keys, matches = memory_intent(question, memory, self.matcher, self.chooser, self.place_attributes)
        lines = intent_lines(memory, intent, keys, engine.ledger.epoch_ns, self.place_attributes)
        facets = (intent.facet,) if intent.kind in ("where", "when") else ("last",)
        return intent, Focus(tuple(matches), tuple(lines[: self.cfg.focus_max_lines]), facets)

    def build(self, engine, question: str, lead_in: str = "", context: str | None = None) -> AnswerPrompt:
        """The answer prompt; ``context`` overrides ``memory.answer_context``. The memory context
        always uses focus (it is made of the focus lines). Without ``lead_in`` the answer starts
        with the intent's frame (``memory.answer_frames``)."""
        ctx = context or self.cfg.answer_context
        intent, focus = self.understand(engine, question, force=ctx == "memory")
        frames = getattr(self.cfg, "answer_frames", True)
        frame = lead_in or (intent.frame() if frames else "")
        score_frame = lead_in or (intent.score_frame() if frames else "")
        return build(engine, question, focus, ctx, frame, self.cfg.recent_increments, intent, score_frame)
