"""A deterministic fake backend for node and graph tests (no torch, no weights, microseconds).

It implements the same state interface as :class:`csr_ros.core.model.kv_state.KVState` with plain
Python bookkeeping, and behaves predictably:

* an answer is the text ``"state has N tokens"`` (N = tokens the branch could see), then EOS;
* closed-set scores favour candidates that occur in the visible text, newest occurrence highest
  (so a policy picks the action named in the latest observation);
* an optional ``fail_next`` hook raises from the next forward (fault-injection tests);
* an optional ``delay_s`` per forward simulates model latency.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from csr_ros.core.model.state_ops import ChunkedPrefill, check_truncate
from csr_ros.core.state.template import PromptTemplate
from csr_ros.core.state.tokenizer import ByteTokenizer

EOS = ByteTokenizer.eos_token_id
VOCAB = 512
HIDDEN = 16


@dataclass
class FakeStep:
    logits: list[float]
    hidden: list[float] | None = None


class _Logits(list):
    """A list of floats with ``argmax()`` (what the engine calls on logits)."""

    def argmax(self) -> int:
        return max(range(len(self)), key=self.__getitem__)


def _one_hot(tok: int) -> _Logits:
    out = _Logits([0.0] * VOCAB)
    out[tok] = 10.0
    return out


@dataclass
class _FakeBranch:
    horizon: int
    parent: int | None
    ids: list[int] = field(default_factory=list)
    answer: list[int] = field(default_factory=list)
    generated: int = 0


class FakeState(ChunkedPrefill):
    """Bookkeeping-only KV state with deterministic outputs."""

    def __init__(self, backend: "FakeBackend"):
        self._be = backend
        self._state: list[int] = []
        self._branches: dict[int, _FakeBranch] = {}
        self._next = 0
        self.forwards = 0

    length = property(lambda self: len(self._state))
    physical_length = property(lambda self: len(self._state) + sum(len(b.ids) for b in self._branches.values()))

    def token_ids(self) -> list[int]:
        return list(self._state)

    def cache_seq_length(self) -> int:
        return self.physical_length

    def open_branches(self) -> list[int]:
        return list(self._branches)

    def _tick(self) -> None:
        self.forwards += 1
        if self._be.fail_next:
            self._be.fail_next -= 1
            raise RuntimeError("injected model failure")
        if self._be.delay_s:
            time.sleep(self._be.delay_s)

    def _hidden(self) -> list[float]:
        h = hashlib.sha256(bytes(t % 256 for t in self._state[-64:])).digest()
        return [b / 255.0 - 0.5 for b in h[:HIDDEN]]

    def append(self, ids, want_hidden: bool = False) -> FakeStep:
        if not ids:
            raise ValueError("append() needs at least one token")
        self._tick()
        self._state.extend(int(i) for i in ids)
        return FakeStep(_one_hot(EOS), self._hidden() if want_hidden else None)

    def truncate(self, length: int) -> None:
        check_truncate(len(self._state), length, len(self._branches))
        del self._state[length:]

    def _answer(self, horizon: int) -> list[int]:
        return self._be.encode(f"state has {horizon} tokens")

    def open_branch(self, prompt_ids, parent: int | None = None):
        self._tick()
        horizon = len(self._state) if parent is None else self._branches[parent].horizon
        b = _FakeBranch(horizon, parent, list(prompt_ids), self._answer(horizon))
        bid, self._next = self._next, self._next + 1
        self._branches[bid] = b
        return bid, _one_hot(b.answer[0])

    def append_and_open(self, state_ids, prompt_ids):
        if state_ids:
            self._state.extend(int(i) for i in state_ids)
        return self.open_branch(prompt_ids)

    def step(self, feeds: dict[int, int]) -> dict[int, _Logits]:
        self._tick()
        out = {}
        for bid, tok in feeds.items():
            b = self._branches[bid]
            b.ids.append(int(tok))
            b.generated += 1  # the canned answer is replayed token by token
            out[bid] = _one_hot(b.answer[b.generated] if b.generated < len(b.answer) else EOS)
        return out

    def close_branch(self, bid: int) -> None:
        doomed = [d for d, b in self._branches.items() if d == bid or b.parent == bid]
        for d in doomed:
            self._branches.pop(d, None)

    def score(self, prompt_ids, candidates) -> list[float]:
        self._tick()
        text = self._be.decode(self._state)
        scores = []
        for c in candidates:
            word = self._be.decode(c).strip().lower()
            pos = text.lower().rfind(word) if word else -1
            tie = int(hashlib.sha256(word.encode()).hexdigest()[:4], 16) / 65536.0
            scores.append((pos / max(1, len(text)) + 1.0 if pos >= 0 else 0.0) - 2.0 + 1e-3 * tie)
        return scores


class FakeBackend:
    """Backend with the HFBackend interface, backed by :class:`FakeState`."""

    name = "fake"
    device = "cpu"
    dtype = "none"

    def __init__(self, delay_s: float = 0.0):
        self.tokenizer = ByteTokenizer(VOCAB)
        self.template = PromptTemplate(head="{system}\n\n", tail="\nAnswer:")
        self.delay_s = delay_s
        self.fail_next = 0
        self.eos_ids = {EOS}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def bos_ids(self) -> list[int]:
        return []

    def new_state(self) -> FakeState:
        return FakeState(self)
