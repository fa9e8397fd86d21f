"""A KV state that lives in a serving engine's prefix cache (the remote twin of ``KVState``).

The server's state IS the prompt prefix: this object keeps the state's exact token ids (the
ledger's) and sends them, never re-rendered, at the head of every request, so the server's
prefix cache (llama.cpp's slot cache, vLLM's automatic prefix caching, SGLang's radix cache)
always matches them. It implements the interface :class:`csr_ros.core.runtime.engine.CsrEngine`, the
reconciler and the language batch use:

* ``append(ids)`` - the state grows and is *warmed* at once: one request that evaluates only the
  new tokens and generates at most one; a query then pays only for its question.
* ``prefill(ids, chunk_tokens, should_stop)`` - the same, chunk by chunk (cancellable).
* ``open_branch / step / close_branch`` - a streamed generation (greedy) whose tokens are read
  one by one: ``open_branch`` returns the first token, each ``step`` feeds the token the caller
  took and reads the next (a different, forced token restarts the stream from it); closing the
  branch closes the stream, which cancels it on the server.
* ``score(prompt, candidates)`` - closed-set log-likelihoods from the server's log-probabilities
  (one request per distinct candidate prefix; tokens outside the server's top-k get a floor),
  else - no log-probabilities, or no candidate's first token among the top-k - a one-token
  choice restricted to the candidates (the chosen one scores 0, the others ``NOT_CHOSEN``).

"Logits" here are :class:`TokenChoice` objects: the server already chose the greedy token, and
``argmax()`` returns it. No hidden states (learned heads need the in-process backend).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from csr_ros.core.model.state_ops import ChunkedPrefill, check_truncate
from csr_ros.core.model.backends.server_client import (Lane, LaneClient, ServerError, ServerUnavailable, TokenStream,
                                                       Usage)

log = logging.getLogger("csr_ros.server")
NOT_CHOSEN = -1.0e4  # score of the candidates a one-token choice did not pick


def _wrapped(what: str, e: Exception) -> ServerError:
    """``e`` with context, keeping its kind (a refusal stays a :class:`ServerUnavailable`)."""
    if isinstance(e, ServerUnavailable):
        return ServerUnavailable(f"{what}: {e}")
    return ServerError(f"{what}: {e}", getattr(e, "reason", "connect"))


@dataclass(frozen=True)
class TokenChoice:
    """Stands in for a logits row: ``argmax()`` is the token the server chose greedily.

    ``logprob``: its log-probability when the server reported one."""

    token: int
    logprob: float | None = None

    def argmax(self) -> int:
        return self.token

    def __getitem__(self, i: int) -> "TokenChoice":  # ``logits[-1]`` of a one-row result
        if i in (0, -1):
            return self
        raise IndexError(i)


@dataclass
class RemoteStep:
    """Result of an append: the server's greedy next token (None when it gave none)."""

    logits: TokenChoice | None
    hidden: None = None


@dataclass
class _Branch:
    bid: int
    horizon: int  # state tokens it continues
    parent: int | None
    ids: list[int] = field(default_factory=list)  # its prompt + the tokens fed so far
    stream: TokenStream | None = None
    pending: int | None = None  # the server's next token (not fed yet)
    accounted: bool = False  # the stream's usage was counted
    streamed: int = 0  # tokens read from the current stream


class RemoteState(ChunkedPrefill):
    """One state on one lane. Not thread-safe: one owner thread (like ``KVState``).

    Args:
        client: the lane's client. prompt: ids -> what the dialect sends (ids, or exact text).
        counters: :class:`csr_ros.core.model.backends.server_pool.ServerCounters`.
        eos_id: the token reported when a generation ends. max_new_tokens: tokens per streamed
        request (a longer answer continues in a new request). top_k: log-probabilities asked for.
    """

    def __init__(self, client: LaneClient, counters, eos_id: int, prompt: Callable[[list[int]], object] = list,
                 max_new_tokens: int = 64, top_k: int = 100, on_use: Callable[["RemoteState"], None] | None = None):
        self._client, self._counters, self._prompt = client, counters, prompt
        self._on_use = on_use  # the pool's note of which state uses a lane (re-warmed after a restart)
        self.eos_id, self.max_new_tokens, self.top_k = eos_id, max_new_tokens, top_k
        self._state: list[int] = []
        self._branches: dict[int, _Branch] = {}
        self._next_bid = 0
        self.forwards = 0  # requests sent
        self.warm_ms = 0.0  # time spent warming this state (client side), ms
        self.warm_failures = 0
        self.last_usage: Usage | None = None  # prompt accounting of the latest request
        self.last_ttft_s: float | None = None  # request sent -> first token of the latest stream
        self.scores_outside_top_k = 0  # candidate tokens scored with the top-k floor
        self.one_token_choices = 0  # scorings that fell back to a one-token choice

    # ------------------------------------------------------------------ views
    @property
    def lane(self) -> Lane:
        return self._client.lane

    @property
    def length(self) -> int:
        return len(self._state)

    @property
    def physical_length(self) -> int:
        return len(self._state) + sum(len(b.ids) for b in self._branches.values())

    def token_ids(self) -> list[int]:
        return list(self._state)

    def cache_seq_length(self) -> int:
        return len(self._state)

    def open_branches(self) -> list[int]:
        return list(self._branches)

    def prompt_of(self, ids: list[int]):
        """What the dialect sends for ``ids`` (the ids, or their exact text)."""
        return self._prompt(ids)

    def rebind(self, client: LaneClient) -> None:
        """Move this state to another lane (a fail-over, from the health thread; the state's
        tokens were warmed there first). Open streams stay on the old server and fail there."""
        self._client = client

    # ------------------------------------------------------------------ requests
    def _request(self, kind: str, fn, *args):
        t0 = time.perf_counter()
        self.forwards += 1
        if self._on_use is not None:
            self._on_use(self)
        try:
            out, usage = fn(*args)
        except (ServerError, OSError) as e:
            self._counters.record(kind, None, (time.perf_counter() - t0) * 1e3, failed=True)
            raise _wrapped(f"{kind} request to {self.lane} failed", e) from e
        ms = (time.perf_counter() - t0) * 1e3
        self.last_usage = usage
        self._counters.record(kind, usage, ms)
        if kind == "warm":
            self.warm_ms += ms
        return out

    def _warm(self) -> TokenChoice | None:
        toks = self._request("warm", self._client.warm, self._prompt(self._state))
        return TokenChoice(toks[0]) if toks else None

    # ------------------------------------------------------------------ state ops
    def append(self, ids: Sequence[int], want_hidden: bool = False) -> RemoteStep:
        """Append state tokens and warm them. A failed warm-up is counted and logged, not raised:
        the ledger is the truth and every request carries the whole prompt anyway."""
        if not ids:
            raise ValueError("append() needs at least one token")
        self._state.extend(int(i) for i in ids)
        try:
            return RemoteStep(self._warm())
        except ServerError as e:
            self.warm_failures += 1
            if e.reason != "away":  # a server known away: its re-warm sends these tokens too
                log.warning("warm-up failed (the next request evaluates these tokens): %s", e)
            return RemoteStep(None)

    def _prefill_chunk(self, ids: Sequence[int]) -> RemoteStep:
        """A prefill chunk is appended and warmed; unlike :meth:`append`, a failed warm-up raises
        (a build must not hand over a cold state)."""
        self._state.extend(int(i) for i in ids)
        return RemoteStep(self._warm())

    def truncate(self, length: int) -> None:
        check_truncate(len(self._state), length, len(self._branches))
        del self._state[length:]  # the server's cache is matched by prefix: nothing to send

    # ------------------------------------------------------------------ branches
    def _lineage_ids(self, b: _Branch) -> list[int]:
        chain, cur = [], b
        while cur is not None:
            chain.append(cur)
            cur = self._branches.get(cur.parent) if cur.parent is not None else None
        return [t for x in reversed(chain) for t in x.ids]

    def _start(self, b: _Branch) -> int:
        """(Re)start ``b``'s stream from its whole prompt; returns its first token."""
        self._finish_stream(b)
        prompt = self._prompt(self._state[:b.horizon] + self._lineage_ids(b))
        self.forwards += 1
        if self._on_use is not None:
            self._on_use(self)
        t0 = time.perf_counter()
        try:
            b.stream = self._client.stream(prompt, self.max_new_tokens)
        except (ServerError, OSError) as e:
            self._counters.record("query", None, (time.perf_counter() - t0) * 1e3, failed=True)
            raise _wrapped(f"query request to {self.lane} failed", e) from e
        b.accounted, b.streamed = False, 0
        return self._read(b)

    def _read(self, b: _Branch) -> int:
        try:
            tok = b.stream.next_token()
        except (ServerError, OSError) as e:
            self._finish_stream(b)
            raise _wrapped(f"stream from {self.lane} failed", e) from e
        if self.last_ttft_s is None and b.stream.ttft_s is not None:
            self.last_ttft_s = b.stream.ttft_s
        self._account(b)
        if tok is not None:
            b.streamed += 1
            return tok
        if b.stream.finish in ("length", "closed") and b.streamed:  # continue in a new request
            return self._start(b)
        return self.eos_id

    def _account(self, b: _Branch, final: bool = False) -> None:
        """Record the stream's prompt accounting once (llama.cpp reports it with the first token,
        OpenAI-style servers at the end; ``final``: record it even if it never came)."""
        st = b.stream
        if b.accounted or st is None or (st.usage is None and not final):
            return
        b.accounted = True
        if st.usage is not None:
            self.last_usage = st.usage
        self._counters.record("query", st.usage, (st.ttft_s or 0.0) * 1e3)

    def _finish_stream(self, b: _Branch) -> None:
        if b.stream is not None:
            self._account(b, final=True)
            b.stream.close()
            b.stream = None

    def open_branch(self, prompt_ids: Sequence[int], parent: int | None = None) -> tuple[int, TokenChoice]:
        """Open a branch (a streamed generation); returns ``(branch id, its first token)``."""
        horizon = len(self._state) if parent is None else self._branches[parent].horizon
        b = _Branch(self._next_bid, horizon, parent, [int(t) for t in prompt_ids])
        self._next_bid += 1
        self._branches[b.bid] = b
        self.last_ttft_s = None
        try:
            b.pending = self._start(b)
        except Exception:
            self._finish_stream(b)
            del self._branches[b.bid]
            raise
        return b.bid, TokenChoice(b.pending)

    def step(self, feeds: dict[int, int]) -> dict[int, TokenChoice]:
        """Feed each branch the token taken; returns each branch's next token."""
        out = {}
        for bid, tok in feeds.items():
            b = self._branches[bid]
            b.ids.append(int(tok))
            if b.pending is not None and int(tok) == b.pending and b.pending != self.eos_id and b.stream:
                b.pending = self._read(b)
            else:  # a forced token (or one past the end): continue from it in a new request
                b.pending = self._start(b)
            out[bid] = TokenChoice(b.pending)
        return out

    def close_branch(self, bid: int) -> None:
        """Close a branch and its descendants (their streams are closed: the server cancels)."""
        doomed = {bid}
        grew = True
        while grew:
            kids = {d for d, b in self._branches.items() if b.parent in doomed} - doomed
            grew = bool(kids)
            doomed |= kids
        for d in doomed:
            b = self._branches.pop(d, None)
            if b is not None:
                self._finish_stream(b)

    def append_and_open(self, state_ids: Sequence[int], prompt_ids: Sequence[int]) -> tuple[int, TokenChoice]:
        """Pending state tokens and a question in ONE request (no separate warm-up: the server
        evaluates both, which is what a query with un-warmed increments costs)."""
        self._state.extend(int(i) for i in state_ids)
        return self.open_branch(prompt_ids)

    # ------------------------------------------------------------------ scoring
    def score(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[float]:
        """Summed log-probability of each candidate after the state + ``prompt_ids``."""
        if not candidates or any(len(c) == 0 for c in candidates):
            raise ValueError("score() needs non-empty candidates")
        base = self._state + [int(t) for t in prompt_ids]
        wanted: dict[tuple[int, ...], set[int]] = {}
        for c in candidates:
            for i in range(len(c)):
                wanted.setdefault(tuple(c[:i]), set()).add(int(c[i]))
        dists: dict[tuple[int, ...], dict[int, float]] = {}
        for prefix, want in wanted.items():
            lp = self._request("score", self._client.next_logprobs, self._prompt(base + list(prefix)),
                               self.top_k, sorted(want))
            if not lp or (not prefix and not want & set(lp)):  # no log-probs, or none of them matter
                return self._one_token_choice(base, candidates)
            dists[prefix] = lp
        scores = []
        for c in candidates:
            total = 0.0
            for i, t in enumerate(c):
                d = dists[tuple(c[:i])]
                if int(t) not in d:
                    self.scores_outside_top_k += 1
                total += d.get(int(t), min(d.values()) - 1.0)
            scores.append(total)
        return scores

    def _one_token_choice(self, base: list[int], candidates: Sequence[Sequence[int]]) -> list[float]:
        self.one_token_choices += 1
        firsts = sorted({int(c[0]) for c in candidates})
        tok = self._request("score", self._client.choose, self._prompt(base), firsts)
        return [0.0 if int(c[0]) == tok else NOT_CHOSEN for c in candidates]

    def close(self) -> None:
        for bid in list(self._branches):
            self.close_branch(bid)
        self._client.close()
