"""Prefix-stable prompt rendering (pure strings; no torch, no ROS).

The cached state is one open user turn of the model's chat format::

    <head: system turn + start of user turn> Observations so far, oldest first:
    [memory block]
    \\n[  12.3 s] /camera/objects: red cup on the kitchen table      <- one increment
    \\n[  13.1 s] /joint_states: shoulder=0.12 elbow=1.57             <- the next one
    ...                                                              <- state ends here
    \\n\\nQuestion: where is the cup?<tail: end of user turn + generation prompt>   <- query, cropped away

Every rendered piece starts with a newline so BPE merges never cross an increment boundary, and
every time is relative to the state's pinned epoch, so nothing already rendered ever changes.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SYSTEM = (
    "You are the onboard policy of a mobile robot. You receive a stream of timestamped "
    "observations from the robot's sensors. Answer questions about what the robot observed "
    "and choose the robot's next action. Be brief."
)
_SENTINEL = "\x00CSR_USER_CONTENT\x00"


@dataclass(frozen=True)
class PromptTemplate:
    """Strings around the state; derived once from the tokenizer's chat template."""

    head: str
    tail: str
    state_intro: str = " Observations so far, oldest first:"

    def prefix(self, system: str = DEFAULT_SYSTEM) -> str:
        """The pinned system prefix (rendered once per state lifetime)."""
        return self.head.replace("{system}", system) + self.state_intro

    @staticmethod
    def increment(t_s: float, source: str, text: str) -> str:
        """One increment line; ``t_s`` is seconds since the state's epoch."""
        clean = " ".join(text.split())
        return f"\n[{t_s:8.1f} s] {source}: {clean}"

    @staticmethod
    def memory(lines: list[str]) -> str:
        """The memory block that stands for evicted increments (empty when there are none)."""
        if not lines:
            return ""
        body = "\n".join(lines)
        return f"\nMemory of earlier observations:\n{body}\nRecent observations:"

    def query(self, question: str, focus_lines: list[str] | None = None, lead_in: str = "") -> str:
        """The query appended after the state (and cropped away afterwards)."""
        focus = ""
        if focus_lines:
            focus = "\n\nRelevant memory:\n" + "\n".join(focus_lines)
        q = " ".join(question.split())
        return f"{focus}\n\nQuestion: {q}{self.tail}{lead_in}"


def _adds_bos(tokenizer: object) -> bool:
    bos_id = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer.encode("x", add_special_tokens=True)
    return bos_id is not None and bool(ids) and ids[0] == bos_id


def template_from_tokenizer(tokenizer: object) -> PromptTemplate:
    """Derive head/tail from a Hugging Face tokenizer's chat template (plain text otherwise)."""
    apply = getattr(tokenizer, "apply_chat_template", None)
    if apply is not None and getattr(tokenizer, "chat_template", None):
        try:
            rendered = apply(
                [
                    {"role": "system", "content": "{system}"},
                    {"role": "user", "content": _SENTINEL},
                ],
                tokenize=False,
                add_generation_prompt=True,
            )
            head, tail = rendered.split(_SENTINEL)
            bos = getattr(tokenizer, "bos_token", None)
            if bos and head.startswith(bos) and _adds_bos(tokenizer):
                head = head[len(bos):]  # the engine adds the BOS id itself (see HFBackend.bos_ids)
            return PromptTemplate(head=head, tail=tail)
        except Exception:  # noqa: BLE001 - any template failure falls back to plain text
            pass
    return PromptTemplate(head="{system}\n\n", tail="\nAnswer:")
