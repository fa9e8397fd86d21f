"""The open language requests: greedy answers decoded as branches of ONE shared cached state.

Every open request is a branch of the engine's KV state (its question + the tokens generated so
far live in the cache tail; the state prefix is shared, never copied). Each frame,
:meth:`LanguageBatch.advance` advances ALL open requests by ``k`` tokens, one batched forward per
token (``KVState.step({bid: tok, ...})``): cross-frame continuous batching. The first forward of
a frame also prefills the questions of the requests that joined since the last frame and may
carry a policy's closed-set scoring (:class:`ScoreRider`), all in one ``KVState.multi_step``.
Requests join and leave between token steps; a request that finishes frees its slot at once.

With ``batched=False`` every request is advanced in its own forward (the isolated baseline of
``csr-ros bench multitask``); the tokens are the same, only the cost differs.

When the engine's KV is replaced (a rebuilt state swapped in, or a synchronous eviction), the
branches are gone with the old KV: :meth:`suspend` closes them before a swap, and the next
:meth:`advance` re-opens every open request on the new state from its question plus the tokens
it generated so far (one prefill each), so the answer continues where it stopped.

Answer contexts (:mod:`csr_ros.core.runtime.answer`): ``prompt_ids`` may return an ``AnswerPrompt``;
its ``frame`` (the answer's start, in the prompt already) leads the answer's text.
A ``state`` prompt is a branch of the shared state as above. A ``memory`` prompt (a short fresh
prompt that does not read the state; it starts with the state's pinned system prefix) is a branch
of a small second KV state, the *memory lane*, that holds only that prefix: all memory answers
advance in one batched forward per token there, and a swap of the cached state does not touch
them. Every piece says which context produced it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("csr_ros.language")
CONTEXT = "state"


@dataclass(frozen=True)
class LanguageOut:
    """A piece of an answer (the node publishes it as csr_ros/Utterance).

    ``text``: the new text since the previous piece for partials, the whole answer for the final;
    a refusal is a final piece whose text starts with ``"refused:"``, a failure ``"error:"``.
    ``context``: what the answer was produced from (``"state"``: the cached state).
    """

    request_id: str
    text: str
    is_final: bool
    context: str
    stop_reason: str = ""  # finals: eos | length | cancelled | deactivated | refused | error
    tokens: int = 0  # generated tokens so far (count)
    ttft_ms: float = 0.0  # finals and partials: asked -> first token, ms (0: none yet)


@dataclass
class ScoreRider:
    """A closed-set scoring (a policy decision) that rides along in the first token step of a
    frame: ``prompt_ids`` and ``candidates`` in, ``scores`` out (None when it could not ride:
    nothing to step or admit, a backend without ``multi_step``, or a failure)."""

    prompt_ids: list[int]
    candidates: list[list[int]]
    scores: list[float] | None = None


@dataclass
class _Request:
    rid: str
    question: str
    asked_ns: int
    prompt: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)  # generated tokens; out[-1] is not fed yet
    bid: int | None = None
    context: str = CONTEXT
    own_kv: object | None = None  # the memory lane (memory context); None: the shared state
    opening: str = ""  # the answer frame, already in the prompt (AnswerPrompt.frame); leads the text
    emitted: str = ""
    done: bool = False
    max_new_tokens: int = 0  # 0: the batch's max_new_tokens
    want_context: str = ""  # "": the configured answer context
    stop: str = ""  # eos | length, once done
    ttft_ms: float = 0.0


class LanguageBatch:
    """Open requests decoded together on the engine's state (see the module doc).

    Args:
        engine: the :class:`csr_ros.core.runtime.engine.CsrEngine` whose KV the branches live in.
        max_new_tokens: longest answer, tokens. lead_in: text that starts every answer turn.
        batched: one forward per token step for all requests (True) or one per request (False).
        prompt_ids: question -> query token ids after the state (default
            ``engine.query_ids(question, lead_in)``), or an ``AnswerPrompt`` (its ``context``
            decides where it is decoded, see the module doc).
    """

    def __init__(self, engine, max_new_tokens: int = 48, lead_in: str = "", batched: bool = True,
                 prompt_ids: Callable[[str], list[int]] | None = None,
                 clock_ns: Callable[[], int] = time.monotonic_ns):
        self.engine, self.max_new_tokens, self.batched = engine, max_new_tokens, batched
        self.prompt_ids = prompt_ids or (lambda q, context=None: engine.query_ids(q, lead_in))
        self.clock_ns = clock_ns
        self._queued: deque[_Request] = deque()
        self._open: dict[str, _Request] = {}
        self._kv = None  # the KV state the open branches live in
        self._lane = None  # the memory lane: a KV state of the pinned prefix only (built when first used)
        self.tokens_generated = 0
        self.forwards = 0
        self.last_ttft_ms = 0.0

    # ------------------------------------------------------------------ membership
    @property
    def num_open(self) -> int:
        """Requests admitted or waiting to be admitted."""
        return len(self._open) + len(self._queued)

    def request_ids(self) -> list[str]:
        return [r.rid for r in self._queued] + list(self._open)

    def join(self, request_id: str, question: str, asked_ns: int | None = None, max_new_tokens: int = 0,
             context: str = "") -> None:
        """Queue a request; it is admitted (its question prefilled) at the next :meth:`advance`.
        ``max_new_tokens`` (0: the batch's) and ``context`` ("": the configured one) are per request."""
        if request_id in self.request_ids():
            raise ValueError(f"request {request_id!r} is already open")
        self._queued.append(_Request(request_id, question, self.clock_ns() if asked_ns is None else asked_ns,
                                     max_new_tokens=max_new_tokens, want_context=context))

    def cancel(self, request_id: str, reason: str = "cancelled") -> LanguageOut | None:
        """End a request now: its branch is closed and its final piece (the text so far, stop
        reason ``reason``) returned. None when it is not open."""
        r = next((q for q in self._queued if q.rid == request_id), None) or self._open.get(request_id)
        if r is None or not self.leave(request_id):
            return None
        return LanguageOut(r.rid, self.engine.backend.decode(r.out), True, r.context, reason, len(r.out), r.ttft_ms)

    def leave(self, request_id: str) -> bool:
        """Drop a request without an answer (its branch is closed). True if it was open."""
        for r in list(self._queued):
            if r.rid == request_id:
                self._queued.remove(r)
                return True
        r = self._open.pop(request_id, None)
        if r is None:
            return False
        self._close(r)
        return True

    def suspend(self) -> None:
        """Close every branch of the shared state (the KV is about to be swapped); :meth:`advance`
        re-opens them. Requests in their own KV state (memory context) are not touched."""
        for r in self._open.values():
            if r.own_kv is None:
                self._close(r)
        self._kv = None

    def _close(self, r: _Request) -> None:
        if r.own_kv is not None:
            if r.bid is not None:
                r.own_kv.close_branch(r.bid)
            r.own_kv = None
        elif r.bid is not None and self._kv is not None and self._kv is self.engine.kv:
            self._kv.close_branch(r.bid)
        r.bid = None

    # ------------------------------------------------------------------ decoding
    def advance(self, k: int, rider: ScoreRider | None = None) -> list[LanguageOut]:
        """Admit queued requests, then advance every open request by up to ``k`` tokens.

        ``rider``: a scoring that shares the first token step's forward (batched mode only).
        Returns the partial deltas and the finals of this frame. A model failure fails the
        requests it touched (final ``"error: ..."``) and leaves the state as it was.
        """
        outs: list[LanguageOut] = []
        if not self._open and not self._queued:
            return outs
        try:
            self._sync_kv()
            self._prepare_joiners()
            if self.batched and hasattr(self._kv, "multi_step"):
                self._fused_step(rider)  # joiners' prompts + one token for all + the rider: one forward
                k -= 1
            else:
                self._admit()
            for _ in range(k):
                if not self._step():
                    break
        except Exception as e:  # noqa: BLE001 - fail the requests, keep the frame loop alive
            log.error("language decoding failed: %s: %s", type(e).__name__, e)
            outs += self._fail_all(f"error: model failure ({type(e).__name__}: {e})")
        return outs + self._collect()

    def _sync_kv(self) -> None:
        """Re-open every admitted request when its branch was lost with a replaced KV."""
        kv = self.engine.kv
        if self._kv is kv:
            return
        self._kv = kv
        reqs = [r for r in self._open.values() if r.own_kv is None]
        prompts = [r.prompt + r.out[:-1] for r in reqs]  # out[-1] is fed by the next step
        if not reqs:
            return
        if hasattr(kv, "multi_step"):
            bids = [bid for bid, _ in kv.multi_step({}, prompts).opened]  # all in one forward
            self.forwards += 1
        else:
            bids = [kv.open_branch(p)[0] for p in prompts]
            self.forwards += len(prompts)
        for r, bid in zip(reqs, bids):
            r.bid = bid

    def _prepare_joiners(self) -> None:
        """Build the queued requests' prompts; open the memory-context ones at once as branches
        of the memory lane (one forward for all of them). The state ones stay queued."""
        lane_joiners = []
        for r in list(self._queued):
            p = self.prompt_ids(r.question, r.want_context) if r.want_context else self.prompt_ids(r.question)
            r.context, r.prompt = getattr(p, "context", CONTEXT), list(getattr(p, "ids", p))
            r.opening = getattr(p, "frame", "")
            if r.context != CONTEXT:
                self._queued.remove(r)
                lane_joiners.append(r)
        if not lane_joiners:
            return
        lane, prefix = self._memory_lane()
        for r in lane_joiners:
            if r.prompt[:len(prefix)] != prefix:
                raise ValueError(f"a {r.context} prompt must start with the state's pinned prefix")
        prompts = [r.prompt[len(prefix):] for r in lane_joiners]
        if hasattr(lane, "multi_step"):
            opened = lane.multi_step({}, prompts).opened
        else:
            opened = [lane.open_branch(p) for p in prompts]
        self.forwards += 1 if hasattr(lane, "multi_step") else len(prompts)
        for r, (bid, logits) in zip(lane_joiners, opened):
            r.own_kv, r.bid = lane, bid
            self._admitted(r, logits)

    def _memory_lane(self):
        """``(lane KV, prefix ids)``: the memory lane, built on first use (one prefill)."""
        prefix = list(self.engine.ledger.prefix_ids)
        if self._lane is None:
            self._lane = self.engine.backend.new_state()
            self._lane.append(prefix)
            self.forwards += 1
        return self._lane, prefix

    def _step_own(self) -> None:
        """One token for every unfinished memory-lane request (one batched forward)."""
        live = [r for r in self._open.values() if r.own_kv is not None and not r.done]
        if not live:
            return
        logits = self._lane.step({r.bid: r.out[-1] for r in live})
        self.forwards += 1
        for r in live:
            self._take(r, logits[r.bid])

    def _admit(self) -> None:
        """Open every queued request, one prefill forward each."""
        while self._queued:
            r = self._queued.popleft()
            r.bid, logits = self._kv.open_branch(r.prompt)
            self.forwards += 1
            self._admitted(r, logits)

    def _admitted(self, r: _Request, logits) -> None:
        self._open[r.rid] = r
        self.last_ttft_ms = r.ttft_ms = (self.clock_ns() - r.asked_ns) / 1e6
        self._take(r, logits)

    def _fused_step(self, rider: ScoreRider | None) -> None:
        """ONE forward: prefill the joiners' questions, one token for every open request, and
        the rider's scoring (``KVState.multi_step``)."""
        live = [r for r in self._open.values() if not r.done and r.own_kv is None]
        joiners = list(self._queued)
        self._step_own()
        if not live and not joiners:
            return
        prompts = [r.prompt for r in joiners]
        score = (rider.prompt_ids, rider.candidates) if rider is not None else None
        out = self._kv.multi_step({r.bid: r.out[-1] for r in live}, prompts, score)
        self.forwards += 1
        self._queued.clear()
        for r in live:
            self._take(r, out.steps[r.bid])
        for r, prompt, (bid, logits) in zip(joiners, prompts, out.opened):
            r.prompt, r.bid = prompt, bid
            self._admitted(r, logits)
        if rider is not None:
            rider.scores = out.scores

    def _take(self, r: _Request, logits) -> None:
        """Append the greedy token of ``logits`` (or finish at EOS / the length limit)."""
        tok = int(logits.argmax())
        if tok in self.engine.backend.eos_ids:
            r.done, r.stop = True, "eos"
            return
        r.out.append(tok)
        self.tokens_generated += 1
        if len(r.out) >= (r.max_new_tokens or self.max_new_tokens):
            r.done, r.stop = True, "length"

    def _step(self) -> bool:
        """One token for every unfinished request; False when none is left."""
        if not any(not r.done for r in self._open.values()):
            return False
        self._step_own()
        live = [r for r in self._open.values() if not r.done and r.own_kv is None]
        if not live:
            return True
        feeds = {r.bid: r.out[-1] for r in live}
        if self.batched:
            logits = self._kv.step(feeds)
            self.forwards += 1
        else:
            logits = {}
            for bid, tok in feeds.items():
                logits.update(self._kv.step({bid: tok}))
                self.forwards += 1
        for r in live:
            self._take(r, logits[r.bid])
        return True

    def _collect(self) -> list[LanguageOut]:
        """Partial deltas of every open request, finals of the finished (their slots freed)."""
        outs = []
        for r in list(self._open.values()):
            text = r.opening + self.engine.backend.decode(r.out)
            if r.done:
                self._close(r)
                del self._open[r.rid]
                outs.append(LanguageOut(r.rid, text, True, r.context, r.stop, len(r.out), r.ttft_ms))
            elif text.startswith(r.emitted) and len(text) > len(r.emitted) and not text.endswith("\ufffd"):
                outs.append(LanguageOut(r.rid, text[len(r.emitted):], False, r.context, "", len(r.out), r.ttft_ms))
                r.emitted = text
        return outs

    def _fail_all(self, reason: str) -> list[LanguageOut]:
        outs = []
        for r in list(self._open.values()) + list(self._queued):
            if r.own_kv is not None:  # the lane is dropped whole below (it may be what failed)
                r.own_kv = r.bid = None
            self._close(r)
            outs.append(LanguageOut(r.rid, reason, True, r.context, "error", len(r.out), r.ttft_ms))
        self._open.clear()
        self._queued.clear()
        self._lane = None
        return outs
