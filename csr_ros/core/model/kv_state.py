"""The KV state: the only code in csr_ros that touches a transformers Cache.

Physical layout of the cache (batch 1)::

    slots [0, S)          the state: exactly the ledger's tokens, in order
    slots [S, S + T)      the tail: tokens of open *branches* (language requests, scoring prompts)

A branch is a transient continuation of the state: it attends to the state's first ``horizon``
tokens (the state length when it was opened), to its ancestors' tokens and to its own. Branches
live only in the tail, so "crop back to the state" is removing tail slots, and queries never
pollute the state. Many branches advance in ONE forward with a 4-D mask, sharing the state prefix
without copying it (cross-task KV sharing + continuous batching). When no other branch is in the
way, appends run mask-free through :mod:`csr_ros.core.model.attention` (lower-right causal); every
forward of up to the runner's largest bucket (decode, queries, increments, batched branch steps
with their mask) can run as CUDA graphs through :mod:`csr_ros.core.model.cuda_graphs`, its
tensor-side helper, which writes the cache only through the layers' ``update`` handed to it from
here (valid rows only: bucket padding never reaches the cache).

Positions are explicit (``position_ids``) everywhere, so a token's rotary position is its logical
index in its own sequence, whatever its physical slot (see transformers issue #36151).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Sequence

import torch
from transformers import DynamicCache

from csr_ros.core.model.kv_layers import InPlaceLayer, use_in_place_layers
from csr_ros.core.model.kv_types import Branch, MultiOut, StepOut
from csr_ros.core.model.state_ops import ChunkedPrefill, check_truncate

if TYPE_CHECKING:
    from csr_ros.core.model.cuda_graphs import StepRunner

__all__ = ["Branch", "KVState", "MultiOut", "StepOut", "new_cache"]


def new_cache(config, capacity_tokens: int | None = None) -> DynamicCache:
    """An empty cache for ``config``; with ``capacity_tokens``, its layers are preallocated and
    written in place (:class:`csr_ros.core.model.kv_layers.InPlaceLayer`) instead of growing by cat."""
    try:
        cache = DynamicCache(config=config)
    except TypeError:  # pragma: no cover - older signature
        cache = DynamicCache()
    if capacity_tokens:
        use_in_place_layers(cache, capacity_tokens)
    return cache


class KVState(ChunkedPrefill):
    """A model's KV cache for one state plus its open branches.

    Not thread-safe: one owner thread drives it (the inference frame loop, or the reconciler
    while it builds a fresh state that it then hands over). ``runner`` (shared by the states of
    one model, :class:`csr_ros.core.model.cuda_graphs.StepRunner`) serves forwards up to its largest
    bucket with CUDA graphs; it only needs the in-place cache layers' ``update``.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str | None = None,
                 capacity_tokens: int | None = 1024, runner: "StepRunner | None" = None):
        self._model = model
        self._base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        self._head = model.get_output_embeddings()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        params = inspect.signature(self._base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._cache = new_cache(model.config, capacity_tokens)
        in_place = all(isinstance(layer, InPlaceLayer) for layer in self._cache.layers)
        self._runner = runner if in_place else None  # forwards up to its largest bucket (CUDA graphs)
        self._state: list[int] = []
        self._tail_owner: list[int] = []  # branch id of each tail slot
        self._branches: dict[int, Branch] = {}
        self._next_bid = 0
        self.forwards = 0  # number of model forwards run (for tests/benchmarks)

    # ------------------------------------------------------------------ views
    @property
    def length(self) -> int:
        """Number of state tokens held (excludes branch tokens)."""
        return len(self._state)

    @property
    def physical_length(self) -> int:
        """Tokens physically in the cache (state + tail)."""
        return len(self._state) + len(self._tail_owner)

    def token_ids(self) -> list[int]:
        """The state's token ids (must equal the ledger's)."""
        return list(self._state)

    def cache_seq_length(self) -> int:
        """Sequence length reported by the underlying Cache object."""
        return int(self._cache.get_seq_length())

    def open_branches(self) -> list[int]:
        return list(self._branches)

    # --------------------------------------------------------------- forward
    @torch.inference_mode()
    def _forward(
        self,
        ids: Sequence[int],
        positions: Sequence[int],
        mask: torch.Tensor | None,
        logit_rows: Sequence[int],
        want_hidden: bool = False,
    ) -> StepOut:
        h = None
        if self._runner is not None and self._runner.accepts(len(ids)):  # padded to its bucket
            h = self._runner.forward(ids, positions, lambda i, k, v: self._cache.layers[i].update(k, v), mask)
        if h is None:  # the plain transformers forward
            input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
            pos = torch.tensor([list(positions)], dtype=torch.long, device=self.device)
            out = self._base(input_ids=input_ids, position_ids=pos, attention_mask=mask, use_cache=True,
                             **{self._cache_kw: self._cache})
            h = out.last_hidden_state[0]
        self.forwards += 1
        rows = torch.tensor(list(logit_rows), dtype=torch.long, device=h.device)
        logits = self._head(h.index_select(0, rows)).float() if len(logit_rows) else h.new_zeros(0)
        return StepOut(logits=logits, hidden=h[-1].float().clone() if want_hidden else None)

    # ----------------------------------------------------------- tail moves
    @torch.inference_mode()
    def _take_tail(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copy out the tail's K/V (small) and crop the cache back to the state."""
        t = len(self._tail_owner)
        if t == 0:
            return []
        s = len(self._state)
        saved = [(l.keys[..., s:, :].clone(), l.values[..., s:, :].clone()) for l in self._cache.layers]
        self._cache.crop(-t)
        return saved

    @torch.inference_mode()
    def _restore_length(self, length: int) -> None:
        """Crop every layer back to ``length`` (after a forward that failed half-way)."""
        for layer in self._cache.layers:
            extra = layer.get_seq_length() - length
            if extra > 0:
                layer.crop(-extra)

    @torch.inference_mode()
    def _put_tail(self, saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Re-append saved K/V rows (no forward: K/V do not depend on their physical slot)."""
        for layer, (k, v) in zip(self._cache.layers, saved):
            layer.update(k, v)

    # ----------------------------------------------------------- state ops
    def append(self, ids: Sequence[int], want_hidden: bool = False) -> StepOut:
        """Append state tokens (one forward). Open branches keep their KV and horizon.

        Returns the last token's logits ``[1, vocab]`` (and hidden state when asked).
        """
        if not ids:
            raise ValueError("append() needs at least one token")
        s = len(self._state)
        saved = self._take_tail()
        try:
            out = self._forward(ids, range(s, s + len(ids)), None, [len(ids) - 1], want_hidden)
        except Exception:
            self._restore_length(s)  # a forward that failed half-way may have grown some layers
            self._put_tail(saved)
            raise
        self._state.extend(int(i) for i in ids)
        self._put_tail(saved)
        return out

    def truncate(self, length: int) -> None:
        """Remove state tokens after ``length`` (rollback). Not allowed while branches are open."""
        check_truncate(len(self._state), length, len(self._branches))
        if length < len(self._state):
            self._cache.crop(-(len(self._state) - length))
            del self._state[length:]

    # -------------------------------------------------------------- branches
    def _new_branch(self, parent: int | None) -> Branch:
        if parent is None:
            b = Branch(self._next_bid, len(self._state), len(self._state), None)
        else:
            p = self._branches[parent]
            b = Branch(self._next_bid, p.horizon, p.next_pos, parent)
        self._next_bid += 1
        self._branches[b.bid] = b
        return b

    def _lineage(self, bid: int) -> set[int]:
        out, cur = set(), bid
        while cur is not None:
            out.add(cur)
            cur = self._branches[cur].parent
        return out

    def _mask(self, feed_owner: list[int]) -> torch.Tensor | None:
        """Boolean ``[1, 1, q, kv]`` mask for new tokens owned by ``feed_owner`` (None if causal)."""
        s = len(self._state)
        owners = self._tail_owner + feed_owner
        kinds = set(feed_owner)
        if len(kinds) == 1:
            (b,) = kinds
            lineage = self._lineage(b)
            if self._branches[b].horizon == s and all(o in lineage for o in self._tail_owner):
                return None  # everything before is visible: plain lower-right causal
        q, kv = len(feed_owner), s + len(owners)
        owner_t = torch.tensor(owners, dtype=torch.long)
        mask = torch.zeros(q, kv, dtype=torch.bool)
        for b in kinds:
            rows = torch.tensor([i for i, o in enumerate(feed_owner) if o == b])
            allowed = torch.zeros(kv, dtype=torch.bool)
            allowed[: self._branches[b].horizon] = True
            lin = torch.tensor(sorted(self._lineage(b)))
            allowed[s:] = torch.isin(owner_t, lin)
            mask[rows] = allowed
        causal = torch.arange(kv)[None, :] <= (torch.arange(q) + s + len(self._tail_owner))[:, None]
        return (mask & causal)[None, None].to(self.device)

    def _feed(self, feeds: list[tuple[int, list[int]]], logit_rows_of: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        """One forward over several branches' new tokens; returns logits per branch."""
        ids, pos, owner, rows, where = [], [], [], [], {}
        for bid, toks in feeds:
            b = self._branches[bid]
            for k, t in enumerate(toks):
                ids.append(int(t))
                pos.append(b.next_pos + k)
                owner.append(bid)
            first = len(ids) - len(toks)
            want = logit_rows_of.get(bid, [len(toks) - 1])
            where[bid] = (len(rows), len(want))
            rows.extend(first + r for r in want)
        try:
            out = self._forward(ids, pos, self._mask(owner), rows)
        except Exception:
            self._restore_length(self.physical_length)  # a half-done forward may have grown some layers
            raise
        for bid, toks in feeds:
            self._branches[bid].ids.extend(int(t) for t in toks)
        self._tail_owner.extend(owner)
        return {bid: out.logits[a:a + n] for bid, (a, n) in where.items()}

    def open_branch(self, prompt_ids: Sequence[int], parent: int | None = None) -> tuple[int, torch.Tensor]:
        """Open a branch with ``prompt_ids``; returns ``(branch id, last logits [vocab])``."""
        b = self._new_branch(parent)
        try:
            logits = self._feed([(b.bid, list(prompt_ids))], {})[b.bid]
        except Exception:
            del self._branches[b.bid]
            raise
        return b.bid, logits[-1]

    def step(self, feeds: dict[int, int]) -> dict[int, torch.Tensor]:
        """Advance several branches by one token each in ONE forward.

        Args:
            feeds: branch id -> the token to append (usually the one it just generated).
        Returns:
            branch id -> next-token logits ``[vocab]``.
        """
        res = self._feed([(bid, [tok]) for bid, tok in feeds.items()], {})
        return {bid: lg[-1] for bid, lg in res.items()}

    def close_branch(self, bid: int) -> None:
        """Remove a branch and its descendants; the state is untouched."""
        doomed = {d for d in self._branches if bid in self._lineage(d)}
        for d in doomed:
            del self._branches[d]
        keep = [i for i, o in enumerate(self._tail_owner) if o not in doomed]
        if len(keep) == len(self._tail_owner):
            return
        if keep == list(range(len(keep))):  # removed slots are the last ones: a crop
            self._cache.crop(-(len(self._tail_owner) - len(keep)))
        else:
            idx = torch.tensor(keep, dtype=torch.long, device=self.device)
            saved = self._take_tail()
            self._put_tail([(k.index_select(-2, idx), v.index_select(-2, idx)) for k, v in saved])
        self._tail_owner = [self._tail_owner[i] for i in keep]

    def append_and_open(self, state_ids: Sequence[int], prompt_ids: Sequence[int]) -> tuple[int, torch.Tensor]:
        """Append pending state tokens AND open a branch on top, in one forward when possible.

        One forward is the cheapest path when increments and a query are both waiting; it is
        only possible when no other branch is open (otherwise it falls back to two forwards).
        Returns ``(branch id, last logits [vocab])``.
        """
        if not state_ids:
            return self.open_branch(prompt_ids)
        if self._branches:
            self.append(state_ids)
            return self.open_branch(prompt_ids)
        s, n, m = len(self._state), len(state_ids), len(prompt_ids)
        ids = list(state_ids) + list(prompt_ids)
        out = self._forward(ids, range(s, s + n + m), None, [n + m - 1])
        self._state.extend(int(i) for i in state_ids)
        b = self._new_branch(None)
        b.ids.extend(int(t) for t in prompt_ids)
        self._tail_owner.extend([b.bid] * m)
        return b.bid, out.logits[-1]

    # -------------------------------------------------------------- scoring
    def score(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[float]:
        """Log-likelihood of each candidate continuation after the state + ``prompt_ids``.

        One forward: the prompt is a branch, every candidate a child branch of it; the state is
        shared, never copied. Everything is closed afterwards.
        Returns: summed log-probabilities (natural log), one per candidate.
        """
        return self.multi_step({}, (), (prompt_ids, candidates)).scores

    def multi_step(self, steps: dict[int, int], opens: Sequence[Sequence[int]] = (),
                   score: tuple[Sequence[int], Sequence[Sequence[int]]] | None = None) -> "MultiOut":
        """ONE forward for every task of a frame (continuous batching): the branches in ``steps``
        advance by one token each, a new branch is opened on the state for every prompt in
        ``opens``, and ``score`` = ``(prompt_ids, candidates)`` is scored as in :meth:`score`
        (its branches are closed afterwards). All share the state prefix; none sees another.
        """
        if score is not None and (not score[1] or any(len(c) == 0 for c in score[1])):
            raise ValueError("score() needs non-empty candidates")
        if any(len(ids) == 0 for ids in opens):
            raise ValueError("open_branch() needs a non-empty prompt")
        new = [self._new_branch(None) for _ in opens]
        feeds = [(bid, [tok]) for bid, tok in steps.items()] + [(b.bid, list(ids)) for b, ids in zip(new, opens)]
        rows: dict[int, list[int]] = {}
        p, kids = None, []
        if score is not None:  # last in the tail, so closing it is a crop
            prompt_ids, candidates = score
            p = self._new_branch(None)
            feeds.append((p.bid, list(prompt_ids)))
            rows[p.bid] = [len(prompt_ids) - 1]
            base = p.next_pos + len(prompt_ids)
            for c in candidates:
                k = Branch(self._next_bid, p.horizon, base, p.bid)
                self._next_bid += 1
                self._branches[k.bid] = k
                kids.append(k.bid)
                feeds.append((k.bid, list(c)))
                rows[k.bid] = list(range(len(c) - 1))
        try:
            logits = self._feed([f for f in feeds if f[1]], rows)
        except Exception:
            for b in new:
                del self._branches[b.bid]  # never fed: no tail slots
            raise
        finally:
            if p is not None:
                self.close_branch(p.bid)
        scores = None
        if p is not None:
            first = torch.log_softmax(logits[p.bid][-1], -1)
            scores = []
            for kid, c in zip(kids, score[1]):
                lp = float(first[c[0]])
                if len(c) > 1:
                    rest = torch.log_softmax(logits[kid], -1)
                    lp += float(rest.gather(1, torch.tensor(c[1:], device=rest.device)[:, None]).sum())
                scores.append(lp)
        return MultiOut({bid: logits[bid][-1] for bid in steps}, [(b.bid, logits[b.bid][-1]) for b in new], scores)

    # ------------------------------------------------------------ benchmarks
    @torch.inference_mode()
    def plain_copy(self) -> "KVState":
        """A copy of this state in transformers' own DynamicCache (for the benchmark floor)."""
        if self._branches:
            raise RuntimeError("plain_copy() needs a state without open branches")
        other = KVState(self._model, self.device, capacity_tokens=None)
        for src, dst in zip(self._cache.layers, other._cache.layers):
            dst.update(src.keys.clone(), src.values.clone())
        other._state = list(self._state)
        return other

    @torch.inference_mode()
    def raw_forward_then_crop(self, ids: Sequence[int]) -> torch.Tensor:
        """The latency floor: ONE plain model forward of ``ids`` onto this cache, exactly as a
        user would call the model (its own attention setting, logits of the last token only),
        then cropped back. Returns logits ``[vocab]``. Benchmarks only; no branches allowed."""
        if self._branches:
            raise RuntimeError("raw_forward_then_crop() needs a state without open branches")
        s = len(self._state)
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        pos = torch.arange(s, s + len(ids), device=self.device)[None]
        out = self._model(input_ids=input_ids, position_ids=pos, use_cache=True, logits_to_keep=1,
                          **{self._cache_kw: self._cache})
        self._cache.crop(-len(ids))
        return out.logits[0, -1]
