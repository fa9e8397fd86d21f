"""What the management services do to a running core (no ROS, no torch): read the entity
memory, compact now, reset the state, report the state's text.

Every function here touches the engine, which one thread owns: the node runs them on the model
worker through :meth:`FrameScheduler.calls` (``scheduler.calls.submit(lambda: f(scheduler))``),
never in an executor callback.
"""

from __future__ import annotations

from dataclasses import dataclass

from csr_ros.core.state.entity_memory import MemoryEntry

DEFAULT_TEXT_CHARS = 16_000
MAX_TEXT_CHARS = 1_000_000


def memory_entries(scheduler, entity: str = "") -> tuple[list[MemoryEntry], int]:
    """``(entries, increments folded in)``: every key for ``entity == ""``; else the keys of that
    entity (``red_cup`` -> ``red_cup.location``, ...) or exactly that key. Raises LookupError
    when the engine keeps no memory or nothing matches."""
    memory = scheduler.engine.memory
    if memory is None:
        raise LookupError("the engine keeps no entity memory (memory.focus_enabled false and "
                          "memory.answer_context state)")
    entity = entity.strip()
    keys = [k for k in memory.keys() if not entity or k == entity or k.startswith(entity + ".")]
    if entity and not keys:
        raise LookupError(f"no entity or key {entity[:64]!r} in the memory ({len(memory)} keys)")
    return [memory.get(k) for k in keys], memory.increments


@dataclass(frozen=True)
class Compacted:
    """A compaction's effect: versions and tokens before and after (``done`` False: nothing to evict)."""

    done: bool
    version_before: int
    version_after: int
    tokens_before: int
    tokens_after: int


def compact(scheduler) -> Compacted:
    """Compact the cached state now (the engine's synchronous path, counted as such)."""
    engine = scheduler.engine
    engine.flush()
    before = (engine.ledger.version, engine.ledger.num_tokens)
    done = engine.compact_now("service")
    return Compacted(done, before[0], engine.ledger.version, before[1], engine.ledger.num_tokens)


def reset(scheduler) -> tuple[str, int]:
    """A new, empty state; every open answer is cancelled (stop reason ``reset``). Returns the
    archived ledger's path ("" without ``ledger.dir``) and the new state's version."""
    scheduler.cancel_all("reset")
    if scheduler.reconciler is not None:
        scheduler.reconciler.cancel()
    archived = scheduler.engine.reset()
    return archived, scheduler.engine.ledger.version


def state_text(scheduler, max_chars: int = 0) -> tuple[str, bool, int, int]:
    """``(text, truncated, version, tokens)``: the cached state decoded, at most ``max_chars``
    characters (0: DEFAULT_TEXT_CHARS; capped at MAX_TEXT_CHARS); a longer one keeps its end."""
    limit = min(max_chars or DEFAULT_TEXT_CHARS, MAX_TEXT_CHARS)
    ledger = scheduler.engine.ledger
    text = scheduler.engine.backend.decode(ledger.token_ids())
    truncated = len(text) > limit
    return (text[-limit:] if truncated else text), truncated, ledger.version, ledger.num_tokens


def score_candidates(scheduler, question: str, candidates, context: str = "") -> list[float]:
    """Log-likelihood of each candidate answer after the answer context (closed set; one forward)."""
    from csr_ros.core.runtime.answer import AnswerPrompt, Focus, score

    p = scheduler.language.prompt_ids(question, context) if context else scheduler.language.prompt_ids(question)
    if not isinstance(p, AnswerPrompt):
        p = AnswerPrompt("state", tuple(p), Focus((), ()))
    return [float(x) for x in score(scheduler.engine, p, list(candidates))]
