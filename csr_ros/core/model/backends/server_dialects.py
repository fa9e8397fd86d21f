"""The serving engines' APIs (llama.cpp's server, vLLM, SGLang, any OpenAI-compatible one).

Each *dialect* turns the four requests the remote state needs into the engine's own API and parses
the answers back (token ids in and out wherever the server allows it):

==========  ==================================  ==============================================
dialect     endpoint                            prompt / tokens / log-probabilities / counters
==========  ==================================  ==============================================
llamacpp    ``POST /completion``                ``prompt``: ids; ``tokens`` per streamed chunk;
                                                ``n_probs``; ``timings.prompt_n`` / ``cache_n``;
                                                ``id_slot`` pins a lane to one server slot
vllm        ``POST /v1/completions``            ``prompt``: ids; ``return_tokens_as_token_ids``;
                                                ``logprobs`` (top <= 20);
                                                ``usage.prompt_tokens_details.cached_tokens``
sglang      ``POST /generate`` (native)         ``input_ids``; ``output_ids``; ``token_ids_logprob``
                                                (exact candidate log-probs); ``meta_info.cached_tokens``
openai      ``POST /v1/completions``            ids (or the exact text); streamed text is mapped
                                                back to ids with the local tokenizer (approximate)
==========  ==================================  ==============================================

The transport is :mod:`csr_ros.core.model.backends.server_client`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Lane:
    """Where a state lives: a server URL and, for llama.cpp, the slot that holds its prompt cache."""

    url: str
    slot: int | None = None

    def __str__(self) -> str:
        return self.url if self.slot is None else f"{self.url}#slot{self.slot}"


@dataclass(frozen=True)
class Usage:
    """Prompt accounting of one request as the server reported it (None: not reported).

    ``evaluated``: prompt tokens the server computed; ``cached``: prompt tokens it took from its
    prefix cache; ``prompt_ms``: the server's own prompt-evaluation time, ms.
    """

    prompt_tokens: int = 0
    evaluated: int | None = None
    cached: int | None = None
    prompt_ms: float | None = None


@dataclass
class StreamEvent:
    """What one streamed chunk carried: new token ids, whether it ended (and why), usage."""

    tokens: list[int]
    done: bool = False
    finish: str = ""  # "eos" | "length" | other server reasons
    usage: Usage | None = None


# ====================================================================================== dialects
class Dialect:
    """Request bodies and answer parsing of one server API. ``decode_one(id) -> str`` and
    ``encode(text) -> ids`` come from the local tokenizer (for servers that only speak text)."""

    name = "base"
    max_top_k = 1 << 30

    def __init__(self, model: str = "", encode: Callable[[str], list[int]] | None = None,
                 decode_one: Callable[[int], str] | None = None):
        self.model, self.encode, self.decode_one = model, encode, decode_one

    # subclasses implement: warm_req, stream_req, logprob_req, choice_req, parse_*
    def stream_parser(self) -> Callable[[dict], StreamEvent]:
        return self.parse_event


class LlamaCppDialect(Dialect):
    """llama.cpp's ``llama-server`` native API (``/completion``)."""

    name = "llamacpp"

    def _base(self, prompt, lane: Lane, n_predict: int, cache: bool = True) -> dict:
        body = {"prompt": prompt, "n_predict": n_predict, "cache_prompt": cache, "temperature": 0.0,
                "return_tokens": True, "timings_per_token": True}
        if lane.slot is not None:
            body["id_slot"] = lane.slot
        return body

    def warm_req(self, prompt, lane: Lane) -> tuple[str, dict]:
        return "/completion", self._base(prompt, lane, 1)  # the token is the greedy next one

    def stream_req(self, prompt, lane: Lane, max_tokens: int, cache: bool = True) -> tuple[str, dict]:
        body = self._base(prompt, lane, max_tokens, cache)
        body["stream"] = True
        return "/completion", body

    def logprob_req(self, prompt, lane: Lane, k: int, want: Sequence[int]) -> tuple[str, dict]:
        body = self._base(prompt, lane, 1)
        body["n_probs"] = k
        return "/completion", body

    def choice_req(self, prompt, lane: Lane, allowed: Sequence[int]) -> tuple[str, dict]:
        body = self._base(prompt, lane, 1)
        body["logit_bias"] = [[int(t), 100.0] for t in allowed]
        return "/completion", body

    @staticmethod
    def parse_usage(d: dict) -> Usage | None:
        t = d.get("timings")
        if not isinstance(t, dict) or "prompt_n" not in t:
            return None
        ev, ca = int(t.get("prompt_n", 0)), int(t.get("cache_n", 0))
        return Usage(ev + ca, ev, ca, float(t.get("prompt_ms", 0.0)))

    def parse_tokens(self, d: dict) -> list[int]:
        return [int(t) for t in d.get("tokens") or []]

    def parse_event(self, d: dict) -> StreamEvent:
        done = bool(d.get("stop"))
        finish = {"eos": "eos", "limit": "length"}.get(d.get("stop_type", ""), d.get("stop_type", "")) if done else ""
        return StreamEvent(self.parse_tokens(d), done, finish, self.parse_usage(d))

    def parse_logprobs(self, d: dict, want: Sequence[int]) -> dict[int, float] | None:
        probs = d.get("completion_probabilities")
        if not probs:
            return None
        top = probs[0].get("top_logprobs") or probs[0].get("probs") or []
        out = {}
        for e in top:
            if "logprob" in e:
                out[int(e["id"])] = float(e["logprob"])
            elif "prob" in e and e["prob"] > 0:  # older servers report probabilities
                out[int(e["id"])] = math.log(float(e["prob"]))
        return out or None


class OpenAIDialect(Dialect):
    """``/v1/completions`` of an OpenAI-compatible server (token-id prompts where accepted)."""

    name = "openai"
    token_ids_extra: dict = {}

    def _base(self, prompt, max_tokens: int) -> dict:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
        if self.model:
            body["model"] = self.model
        body.update(self.token_ids_extra)
        return body

    def warm_req(self, prompt, lane: Lane) -> tuple[str, dict]:
        return "/v1/completions", self._base(prompt, 1)

    def stream_req(self, prompt, lane: Lane, max_tokens: int, cache: bool = True) -> tuple[str, dict]:
        body = self._base(prompt, max_tokens)
        body.update(stream=True, logprobs=1, stream_options={"include_usage": True})
        return "/v1/completions", body

    def logprob_req(self, prompt, lane: Lane, k: int, want: Sequence[int]) -> tuple[str, dict]:
        body = self._base(prompt, 1)
        body["logprobs"] = min(k, self.max_top_k)
        return "/v1/completions", body

    def choice_req(self, prompt, lane: Lane, allowed: Sequence[int]) -> tuple[str, dict]:
        body = self._base(prompt, 1)
        body["logit_bias"] = {str(int(t)): 100 for t in allowed}
        return "/v1/completions", body

    @staticmethod
    def parse_usage(d: dict) -> Usage | None:
        u = d.get("usage")
        if not isinstance(u, dict) or "prompt_tokens" not in u:
            return None
        n = int(u["prompt_tokens"])
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
        return Usage(n, None if cached is None else n - int(cached), None if cached is None else int(cached))

    def _token_id(self, tok: str) -> list[int]:
        if tok.startswith("token_id:"):
            return [int(tok[9:])]
        return list(self.encode(tok)) if self.encode else []

    def parse_tokens(self, d: dict) -> list[int]:
        ch = (d.get("choices") or [{}])[0]
        lp = ch.get("logprobs") or {}
        if lp.get("tokens"):
            return [i for t in lp["tokens"] for i in self._token_id(t)]
        if isinstance(ch.get("token_ids"), list):
            return [int(t) for t in ch["token_ids"]]
        return list(self.encode(ch.get("text", ""))) if self.encode and ch.get("text") else []

    def parse_event(self, d: dict) -> StreamEvent:
        choices = d.get("choices") or []
        finish = (choices[0].get("finish_reason") or "") if choices else ""
        reason = {"stop": "eos", "length": "length"}.get(finish, finish)
        return StreamEvent(self.parse_tokens(d) if choices else [], bool(finish), reason, self.parse_usage(d))

    def parse_logprobs(self, d: dict, want: Sequence[int]) -> dict[int, float] | None:
        ch = (d.get("choices") or [{}])[0]
        tops = (ch.get("logprobs") or {}).get("top_logprobs") or []
        if not tops or not isinstance(tops[0], dict):
            return None
        out: dict[int, float] = {}
        by_text = {self.decode_one(t): t for t in want} if self.decode_one else {}
        for key, lp in tops[0].items():
            if key.startswith("token_id:"):
                out[int(key[9:])] = float(lp)
            elif key in by_text:
                out[by_text[key]] = float(lp)
        return out


class VllmDialect(OpenAIDialect):
    """vLLM's ``/v1/completions``: token ids in and (``return_tokens_as_token_ids``) out."""

    name = "vllm"
    max_top_k = 20  # vLLM's default --max-logprobs
    token_ids_extra = {"return_tokens_as_token_ids": True}


class SglangDialect(Dialect):
    """SGLang's native ``/generate`` (ids in, ``output_ids`` out, exact candidate log-probs)."""

    name = "sglang"

    def _base(self, prompt, n: int, **sampling) -> dict:
        key = "text" if isinstance(prompt, str) else "input_ids"
        return {key: prompt, "sampling_params": {"max_new_tokens": n, "temperature": 0.0, **sampling}}

    def warm_req(self, prompt, lane: Lane) -> tuple[str, dict]:
        return "/generate", self._base(prompt, 1)

    def stream_req(self, prompt, lane: Lane, max_tokens: int, cache: bool = True) -> tuple[str, dict]:
        body = self._base(prompt, max_tokens)
        body["stream"] = True
        return "/generate", body

    def logprob_req(self, prompt, lane: Lane, k: int, want: Sequence[int]) -> tuple[str, dict]:
        body = self._base(prompt, 1)
        body.update(return_logprob=True, top_logprobs_num=k, token_ids_logprob=[int(t) for t in want],
                    logprob_start_len=-1)
        return "/generate", body

    def choice_req(self, prompt, lane: Lane, allowed: Sequence[int]) -> tuple[str, dict]:
        return "/generate", self._base(prompt, 1, logit_bias={str(int(t)): 100.0 for t in allowed})

    @staticmethod
    def parse_usage(d: dict) -> Usage | None:
        m = d.get("meta_info") or {}
        if "prompt_tokens" not in m:
            return None
        n, cached = int(m["prompt_tokens"]), m.get("cached_tokens")
        return Usage(n, None if cached is None else n - int(cached), None if cached is None else int(cached))

    def parse_tokens(self, d: dict) -> list[int]:
        return [int(t) for t in d.get("output_ids") or []]

    def stream_parser(self) -> Callable[[dict], StreamEvent]:
        seen: list[int] = []  # output_ids are cumulative unless --incremental-streaming-output

        def parse(d: dict) -> StreamEvent:
            ids = self.parse_tokens(d)
            new = ids[len(seen):] if ids[:len(seen)] == seen and len(ids) >= len(seen) else ids
            seen.extend(new)
            fr = (d.get("meta_info") or {}).get("finish_reason") or {}
            kind = fr.get("type", "") if isinstance(fr, dict) else str(fr)
            reason = {"stop": "eos", "length": "length"}.get(kind, kind)
            return StreamEvent(new, bool(kind), reason, self.parse_usage(d))

        return parse

    def parse_event(self, d: dict) -> StreamEvent:
        return self.stream_parser()(d)

    def parse_logprobs(self, d: dict, want: Sequence[int]) -> dict[int, float] | None:
        m = d.get("meta_info") or {}
        out: dict[int, float] = {}
        for key in ("output_top_logprobs", "output_token_ids_logprobs"):
            rows = m.get(key) or []
            for e in (rows[0] if rows and rows[0] else []):
                if e and e[0] is not None:
                    out[int(e[1])] = float(e[0])
        return out or None


DIALECTS = {"llamacpp": LlamaCppDialect, "vllm": VllmDialect, "sglang": SglangDialect, "openai": OpenAIDialect}


def make_dialect(name: str, **kw) -> Dialect:
    try:
        return DIALECTS[name](**kw)
    except KeyError:
        raise ValueError(f"unknown server dialect {name!r}; use one of {sorted(DIALECTS)}") from None
