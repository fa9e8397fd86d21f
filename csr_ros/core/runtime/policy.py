"""Action policies over the cached state: pick a registry entry, or map a hidden state to a chunk.

Both return a :class:`Decision` (an unclamped ``H x D`` chunk; the scheduler clamps and stamps
it). Neither ever parses generated text into motor commands.

* :class:`RegistryPolicy` scores every entry *name* as the answer to a short question about the
  cached state, in ONE batched forward (``CsrEngine.score``: the question is a branch of the
  state, every candidate a child branch; the state is shared, never copied) and takes the most
  likely. The model sees each entry's description: in the pinned system prefix when the engine
  was built with :func:`system_prompt_with_actions` (cheapest: cached once), else in the question.
* :class:`LearnedHeadPolicy` applies an :class:`csr_ros.core.model.heads.ActionHead` to the hidden
  state of the newest state token, which the append already computed (no forward at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from csr_ros.core.runtime.actions import ActionRegistry, resolve_config_file
from csr_ros.core.state.template import DEFAULT_SYSTEM

DEFAULT_HEAD = "heads/example_head.safetensors"


@dataclass(frozen=True)
class Decision:
    """A policy output. ``action``: registry entry name ("" for a learned head); ``values``:
    row-major ``horizon x D`` chunk, unclamped; ``scores``: per-entry log-likelihoods (registry)."""

    action: str
    values: tuple[float, ...]
    scores: tuple[float, ...] = ()


class Policy(Protocol):
    wants_hidden: bool  # True: the scheduler appends with want_hidden and passes the hidden state

    def decide(self, engine, instruction: str, hidden=None) -> Decision | None:
        """A decision from the engine's (flushed) state; None when it cannot decide yet."""


def system_prompt_with_actions(base: str, registry: ActionRegistry) -> str:
    """The system prompt with the registry's entries (names + descriptions) appended, so they are
    part of the pinned, cached prefix instead of every scoring question."""
    return (base or DEFAULT_SYSTEM) + registry.prompt_block()


def engine_system_prompt(cfg, registry: ActionRegistry | None = None) -> str:
    """The system prompt to build the engine with: for the ``registry`` policy,
    ``cfg.model.system_prompt`` plus the registry's entries (cached once in the prefix); for a
    learned head, ``cfg.model.system_prompt`` alone (what ``csr-ros train-head`` trains with)."""
    if cfg.control.policy != "registry":
        return cfg.model.system_prompt
    from csr_ros.core.runtime.actions import registry_from_config

    return system_prompt_with_actions(cfg.model.system_prompt, registry or registry_from_config(cfg))


class RegistryPolicy:
    """Closed-set choice among the registry's entries (see the module doc)."""

    wants_hidden = False

    def __init__(self, registry: ActionRegistry, question: str = "Task: {instruction} Which action should the robot take now?",
                 lead_in: str = "Action:"):
        self.registry, self.question_template, self.lead_in = registry, question, lead_in
        self._prefix_has_actions: dict[int, bool] = {}

    def _actions_in_prefix(self, engine) -> bool:
        key = hash(engine.ledger.prefix_ids)
        if key not in self._prefix_has_actions:
            text = engine.backend.decode(engine.ledger.prefix_ids)
            self._prefix_has_actions[key] = all(f"{e.name}: {e.description}" in text for e in self.registry.entries)
        return self._prefix_has_actions[key]

    def question(self, engine, instruction: str) -> str:
        q = self.question_template.format(instruction=" ".join(instruction.split()))
        if not self._actions_in_prefix(engine):
            q += " " + " ".join(f"{e.name}: {e.description}." for e in self.registry.entries)
        return q

    def decide(self, engine, instruction: str, hidden=None) -> Decision:
        """Score every entry name against the engine's state (one forward)."""
        scores = engine.score(self.question(engine, instruction), list(self.registry.entry_names), self.lead_in)
        return self.decide_from_scores(scores)

    def score_request(self, engine, instruction: str) -> tuple[list[int], list[list[int]]]:
        """The ``(prompt ids, candidate ids)`` :meth:`decide` scores, for a caller that batches the
        scoring with other work in one forward (``KVState.multi_step``); same ids as
        ``engine.score`` builds."""
        prompt = engine.query_ids(self.question(engine, instruction), self.lead_in)
        return prompt, [engine.backend.encode(" " + n) for n in self.registry.entry_names]

    def decide_from_scores(self, scores) -> Decision:
        names = self.registry.entry_names
        best = max(range(len(names)), key=scores.__getitem__)
        return Decision(names[best], self.registry.entry(names[best]).chunk, tuple(float(s) for s in scores))


class LearnedHeadPolicy:
    """A learned head on the newest state token's hidden state (see the module doc)."""

    wants_hidden = True

    def __init__(self, registry: ActionRegistry, head):
        if tuple(head.names) != registry.names or head.horizon != registry.horizon_steps:
            raise ValueError(f"head dimensions {head.names} x {head.horizon} do not match the registry's "
                             f"{registry.names} x {registry.horizon_steps}")
        self.registry, self.head = registry, head

    def decide(self, engine, instruction: str, hidden=None) -> Decision | None:
        if hidden is None:
            return None  # nothing appended yet: no hidden state to read
        return Decision("", self.head.predict(hidden))


def model_hidden_size(backend) -> int | None:
    cfg = getattr(getattr(backend, "model", None), "config", None)
    return getattr(cfg, "hidden_size", None)


def make_policy(cfg, registry: ActionRegistry, backend) -> RegistryPolicy | LearnedHeadPolicy:
    """The policy ``cfg.control.policy`` names (the head from ``cfg.control.head_file``)."""
    if cfg.control.policy == "registry":
        return RegistryPolicy(registry)
    from csr_ros.core.model.heads import load_head

    path = resolve_config_file(cfg.control.head_file, DEFAULT_HEAD)
    head = load_head(path, registry.names, registry.horizon_steps, model_hidden_size(backend))
    return LearnedHeadPolicy(registry, head)
