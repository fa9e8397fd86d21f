"""The evaluated methods, behind one interface: ``observe`` increments, ``frame``, ``answer``.

A *stream* ingests the episode's increments (once, however many methods read it); a *method*
answers a question from one stream:

=============  ===============  ==================================================================
method         stream           answer context
=============  ===============  ==================================================================
csr            CsrStream        cached state (reconciled: compaction policy off the hot path) + focus
csr_nofocus    CsrStream        the same cached state, no focus lines
memory         CsrStream        short fresh prompt: prefix, recent increments naming the entities, focus
window         WindowStream     StreamingLLM-style: prefix (sink tokens) + the newest increments
                                that fit the budget, cached; oldest dropped at the hard limit
rag            History          fresh prompt: prefix + the top-k increments by MiniLM similarity
                                to the question, chronological, filling the budget
full           History          fresh prompt: prefix + the whole history (up to the model context)
oracle         History          fresh prompt: prefix + only the evidence messages
=============  ===============  ==================================================================

Every method is timed from the question to its first answer token (closed-set: to the scores),
including focus matching, retrieval and any prefill it needs; ingestion work (appending
increments, rebuilding compacted states, embedding increments for rag) happens at frames and is
reported apart.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from csr_ros.core.runtime import answer as answers
from csr_ros.core.state.compaction import Compactor
from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.state.focus import Focus
from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.ledger import Fact, Increment
from csr_ros.core.state.question import FacetChooser, question_intent
from csr_ros.core.reconcile.reconciler import Reconciler, reconcile_at_frame
from csr_ros.core.state.template import DEFAULT_SYSTEM
from csr_ros.cli.eval.episode import QAItem
from csr_ros.cli.eval.scoring import drifted

METHODS = ("csr", "csr_nofocus", "memory", "window", "rag", "full", "oracle")
WINDOW_EVICT_FRAC = 0.25  # window: drop the oldest quarter at the hard limit (stays 75-100% full)


@dataclass(frozen=True)
class Settings:
    """What every method shares. ``cfg``: the validated CsrConfig (budget, reconciler, memory)."""

    cfg: object
    free_form: bool = False
    max_new_tokens: int = 24
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None  # MiniLM (focus fallback)
    embedder: object | None = None  # MiniLM for rag (embed(texts) -> [n, d] unit vectors)

    @property
    def budget_tokens(self) -> int:
        return self.cfg.budget.budget_tokens


@dataclass(frozen=True)
class Answer:
    """One method's answer to one question."""

    correct: bool
    text: str  # the chosen candidate, or the generated text
    ttft_s: float
    context: str
    prompt_tokens: int  # tokens the answer read (state + query, or the fresh prompt)
    detail: dict = field(default_factory=dict)
    scores: tuple[float, ...] = ()  # closed set: log-likelihood per candidate (answers, then rejects)


def ask(q: QAItem, settings: Settings, run_scores, run_generate, prompt_tokens: int, t0: float,
        context: str, detail: dict | None = None) -> Answer:
    """Closed-set scoring or free generation; TTFT counts from ``t0`` (when the question came)."""
    if settings.free_form:
        t1 = time.perf_counter()
        g = run_generate()
        detail = {**(detail or {}), "drift": drifted(g.text, q.candidates)}
        return Answer(q.correct_text(g.text), g.text, (t1 - t0) + g.ttft_s, context, prompt_tokens, detail)
    scores = [float(s) for s in run_scores()]
    ttft = time.perf_counter() - t0
    best = max(range(len(scores)), key=scores.__getitem__)
    return Answer(q.correct_choice(best), q.candidates[best], ttft, context, prompt_tokens, detail or {},
                  tuple(scores))


# =============================================================================== streams
class CsrStream:
    """The CSR engine with its reconciler (compaction policy from the config) and entity memory.

    The reconciler's build runs synchronously at the frame that requests it (deterministic); on
    the robot it runs on its own thread while the old state keeps serving. Its time is counted
    in ``stats`` (rebuild_s), not in any answer's TTFT.
    """

    def __init__(self, backend, settings: Settings):
        cfg = settings.cfg
        b, r = cfg.budget, cfg.reconciler
        self.compactor = Compactor(r.policy, b.evict_frac, backend.template, backend.encode)
        self.engine = CsrEngine(backend, b.budget_tokens, b.high_water_frac, b.evict_frac,
                                cfg.model.system_prompt, compactor=self.compactor, memory=EntityMemory())
        self.reconciler = Reconciler(backend, r.policy, b.evict_frac, threads=0, compactor=self.compactor) \
            if r.enabled else None
        self.rebuild_s = 0.0
        self.append_s = 0.0

    def observe(self, source: str, stamp_ns: int, text: str, facts: Sequence[Fact]) -> None:
        self.engine.submit(source, stamp_ns, text, facts)
        if self.reconciler is not None:
            for inc in self.engine.pending[-1:]:
                self.reconciler.notify(inc)

    def frame(self) -> None:
        t0 = time.perf_counter()
        self.engine.flush()
        self.append_s += time.perf_counter() - t0
        if self.reconciler is None:
            return
        if reconcile_at_frame(self.engine, self.reconciler) == "request":
            t1 = time.perf_counter()
            self.reconciler.run_once()
            self.rebuild_s += time.perf_counter() - t1
            reconcile_at_frame(self.engine, self.reconciler)  # swap it in at this frame boundary

    def stats(self) -> dict:
        c = self.engine.counters
        rc = self.reconciler.counters if self.reconciler is not None else None
        return {"reconciliations": c.swaps, "sync_evictions": c.sync_evictions,
                "rebuild_failures": rc.failures if rc else 0, "state_tokens": self.engine.ledger.num_tokens,
                "memory_block_tokens": len(self.engine.ledger.memory.token_ids),
                "append_s": round(self.append_s, 2), "rebuild_s": round(self.rebuild_s, 2)}


class WindowStream:
    """StreamingLLM-style window: the pinned prefix (attention sinks) + the newest increments.

    The cached state drops its oldest increments when the budget would overflow (no memory of
    them), so at any question it holds the prefix and the newest 75-100% of the budget.
    """

    def __init__(self, backend, settings: Settings):
        b = settings.cfg.budget
        self.engine = CsrEngine(backend, b.budget_tokens, 1.0, WINDOW_EVICT_FRAC, settings.cfg.model.system_prompt)
        self.append_s = 0.0

    def observe(self, source: str, stamp_ns: int, text: str, facts: Sequence[Fact]) -> None:
        self.engine.submit(source, stamp_ns, text, facts)

    def frame(self) -> None:
        t0 = time.perf_counter()
        self.engine.flush()
        self.append_s += time.perf_counter() - t0

    def stats(self) -> dict:
        c = self.engine.counters
        return {"evictions": c.sync_evictions, "state_tokens": self.engine.ledger.num_tokens,
                "append_s": round(self.append_s, 2)}


class History:
    """Every increment, rendered and tokenized once exactly as the engine renders it (no KV)."""

    def __init__(self, backend, settings: Settings):
        self.backend, self.template = backend, backend.template
        system = settings.cfg.model.system_prompt or DEFAULT_SYSTEM
        self.prefix_ids = tuple(backend.bos_ids() + backend.encode(self.template.prefix(system)))
        self.epoch_ns = -1
        self.increments: list[Increment] = []
        self.embedder = settings.embedder
        self._vecs: list = []  # embeddings of increments[:len(_vecs)] (rag)
        self.embed_s = 0.0

    def observe(self, source: str, stamp_ns: int, text: str, facts: Sequence[Fact]) -> None:
        if self.epoch_ns < 0:
            self.epoch_ns = stamp_ns
        t_s = (stamp_ns - self.epoch_ns) / 1e9
        ids = tuple(self.backend.encode(self.template.increment(t_s, source, text)))
        self.increments.append(Increment(len(self.increments), source, stamp_ns, text, ids, tuple(facts)))

    def frame(self) -> None:
        if self.embedder is None or len(self._vecs) == len(self.increments):
            return
        t0 = time.perf_counter()
        new = self.increments[len(self._vecs):]
        self._vecs.extend(self.embedder.embed([f"{i.source}: {i.text}" for i in new]))
        self.embed_s += time.perf_counter() - t0

    def vectors(self):
        import torch

        self.frame()
        return torch.stack(self._vecs) if self._vecs else None

    def query_ids(self, q: QAItem, frame: str = "") -> list[int]:
        return self.backend.encode(self.template.query(q.question, None, frame))

    def stats(self) -> dict:
        return {"increments": len(self.increments), "tokens": sum(i.num_tokens for i in self.increments),
                "embed_s": round(self.embed_s, 2)}


# =============================================================================== methods
class StateMethod:
    """csr / csr_nofocus / memory / window: answers from a CSR or window stream."""

    def __init__(self, name: str, stream, settings: Settings, focus: bool, context: str = "state"):
        self.name, self.stream, self.settings, self.context = name, stream, settings, context
        # the live answer path, with focus as this method asks (csr_nofocus: off)
        memory_cfg = dataclasses.replace(settings.cfg.memory, focus_enabled=focus)
        self.contexts = answers.AnswerContexts(memory_cfg, settings.similarity)

    def answer(self, q: QAItem) -> Answer:
        t0 = time.perf_counter()
        eng = self.stream.engine
        prompt = self.contexts.build(eng, q.question, q.lead_in, self.context)
        focus = prompt.focus
        tokens = len(prompt.ids) + (eng.ledger.num_tokens + sum(i.num_tokens for i in eng.pending)
                                    if self.context == "state" else 0)
        detail = {"focus": list(focus.entities), "focus_how": [m.how for m in focus.matches],
                  "frame": prompt.frame, "intent": _intent_label(prompt.intent)}
        return ask(q, self.settings, lambda: answers.score(eng, prompt, q.candidates),
                   lambda: answers.generate(eng, prompt, self.settings.max_new_tokens), tokens, t0,
                   self.context, detail)


class FreshMethod:
    """rag / full / oracle: a fresh prompt built from the history for every question.

    Args:
        context_tokens: the model's context length (full keeps the newest history that fits).
        bag_start_ns: recorded time of the bag's first message (QA times count from it).
    """

    def __init__(self, name: str, history: History, settings: Settings, context_tokens: int, bag_start_ns: int):
        if name not in ("rag", "full", "oracle"):
            raise ValueError(f"unknown fresh-prompt method {name!r}")
        self.name, self.history, self.settings = name, history, settings
        self.context_tokens, self.bag_start_ns = context_tokens, bag_start_ns
        m = settings.cfg.memory  # the answer frame from the question alone (no entity memory)
        self.chooser = FacetChooser(m.first_seen_cues, m.last_seen_cues, settings.similarity)
        self.frames = m.answer_frames

    def select(self, q: QAItem, room: int) -> list[Increment]:
        """The increments the prompt holds (chronological), at most ``room`` tokens."""
        if self.name == "oracle":
            return _newest_fitting(evidence_increments(self.history.increments, q.evidence_s, self.bag_start_ns), room)
        if self.name == "full":
            return _newest_fitting(self.history.increments, room)
        return self._retrieve(q, room)

    def _retrieve(self, q: QAItem, room: int) -> list[Increment]:
        h = self.history
        vecs = h.vectors()
        if vecs is None:
            return []
        sims = (vecs @ h.embedder.embed([q.question])[0]).tolist()
        chosen, used = [], 0
        for k in sorted(range(len(sims)), key=lambda k: -sims[k]):  # top-k until the budget is full
            n = h.increments[k].num_tokens
            if used + n <= room:
                chosen.append(k)
                used += n
        return [h.increments[k] for k in sorted(chosen)]

    def answer(self, q: QAItem) -> Answer:
        t0 = time.perf_counter()
        h, be = self.history, self.history.backend
        intent = question_intent(q.question, self.chooser)
        frame = q.lead_in or (intent.frame() if self.frames else "")
        score_frame = q.lead_in or (intent.score_frame() if self.frames else "")
        query = h.query_ids(q, frame)
        limit = self.settings.budget_tokens if self.name == "rag" else self.context_tokens
        reserve = len(query) + (self.settings.max_new_tokens if self.settings.free_form else 8)
        incs = self.select(q, limit - len(h.prefix_ids) - reserve)
        context = list(h.prefix_ids) + [t for i in incs for t in i.token_ids]
        ids = context + query
        base = context + (h.query_ids(q) if frame else query)
        scored = context + h.query_ids(q, score_frame) if score_frame != frame else ids
        prompt = answers.AnswerPrompt(self.name, tuple(ids), Focus((), ()), (), frame, tuple(base), intent,
                                      score_frame, tuple(scored))

        def scores():
            ids, seqs, combine = answers.framed_scoring(be, prompt, q.candidates)
            return combine(be.new_state().score(ids, seqs))

        def gen():
            return _generate_fresh(be, prompt, self.settings.max_new_tokens)

        return ask(q, self.settings, scores, gen, len(ids), t0, self.name,
                   {"increments": len(incs), "frame": frame, "intent": _intent_label(intent)})


def _intent_label(intent) -> str:
    """``where/first``, ``count``, ``where/last/never`` ... (recorded per answer)."""
    if intent is None:
        return ""
    parts = [intent.kind] + ([intent.facet, intent.facet_by] if intent.kind in ("where", "when") else [])
    return "/".join(parts + (["never"] if intent.never else []))


def _generate_fresh(be, prompt: answers.AnswerPrompt, max_new_tokens: int) -> answers.Generated:
    t0 = time.perf_counter()
    kv = be.new_state()
    bid, logits = kv.open_branch(list(prompt.ids))
    tok, out = int(logits.argmax()), []
    ttft = time.perf_counter() - t0
    while tok not in be.eos_ids and len(out) < max_new_tokens:
        out.append(tok)
        if len(out) < max_new_tokens:
            tok = int(kv.step({bid: tok})[bid].argmax())
    return answers.Generated(be.decode(out), tuple(out), ttft, time.perf_counter() - t0, prompt.context)


def evidence_increments(incs: Sequence[Increment], evidence_s: Sequence[float], bag_start_ns: int,
                        tolerance_s: float = 0.5) -> list[Increment]:
    """For each evidence time, the increment recorded closest to it (within ``tolerance_s``)."""
    chosen = set()
    for e in evidence_s:
        best = min(incs, key=lambda i: abs((i.stamp_ns - bag_start_ns) / 1e9 - e), default=None)
        if best is not None and abs((best.stamp_ns - bag_start_ns) / 1e9 - e) <= tolerance_s:
            chosen.add(best.seq)
    return [i for i in incs if i.seq in chosen]


def _newest_fitting(incs: Sequence[Increment], room: int) -> list[Increment]:
    out, used = [], 0
    for inc in reversed(incs):
        if used + inc.num_tokens > room:
            break
        out.append(inc)
        used += inc.num_tokens
    return out[::-1]


def build_methods(names: Sequence[str], backend, settings: Settings, context_tokens: int,
                  bag_start_ns: int) -> tuple[dict[str, object], dict[str, object]]:
    """``(streams, methods)``: one stream per kind that a requested method reads, then the methods.

    csr, csr_nofocus and memory read the same CSR stream (they are answer modes of one state).
    """
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    streams: dict[str, object] = {}

    def stream(kind: str):
        if kind not in streams:
            streams[kind] = {"csr": CsrStream, "window": WindowStream, "history": History}[kind](backend, settings)
        return streams[kind]

    methods: dict[str, object] = {}
    for n in names:
        if n in ("csr", "csr_nofocus", "memory"):
            focus = n == "memory" or (n == "csr" and settings.cfg.memory.focus_enabled)
            methods[n] = StateMethod(n, stream("csr"), settings, focus=focus,
                                     context="memory" if n == "memory" else "state")
        elif n == "window":
            methods[n] = StateMethod(n, stream("window"), settings, focus=False)
        else:
            methods[n] = FreshMethod(n, stream("history"), settings, context_tokens, bag_start_ns)
    return streams, methods
