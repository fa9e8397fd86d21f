"""Serving-engine backend: the cached state lives in a vLLM, SGLang or llama.cpp server.

For models that outgrow the robot: the engine keeps the same ledger as with the in-process
backend and the server's prefix cache plays the KV cache (see
:mod:`csr_ros.core.model.backends.remote_state`). Prompts are sent as the ledger's token ids (llama.cpp
``/completion``, vLLM ``/v1/completions``, SGLang ``/generate``), or as the exact decoded text for
servers that only take text (``prompt_format: text``), never re-rendered, so the server's prefix
cache always matches. Increments are warmed as they are appended, so a query pays only for its
question; a compacted state is warmed on the standby lane and promoted when it is installed
(:mod:`csr_ros.core.model.backends.server_pool`).

    be = load_server(["http://127.0.0.1:8080"], dialect="llamacpp")      # llama-server
    be = load_server(["http://gpu-a:8000", "http://gpu-b:8000"], dialect="vllm", tokenizer="/models/llama-70b")
    eng = CsrEngine(be, budget_tokens=8192)

The tokenizer is a local Hugging Face folder matching the served model (``embedded`` = SmolLM2,
whose vocabulary the embedded GGUF shares); nothing is downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from csr_ros.core.model.backends.remote_state import RemoteState
from csr_ros.core.model.backends.server_client import RequestPolicy
from csr_ros.core.model.backends.server_dialects import make_dialect
from csr_ros.core.model.backends.server_pool import ServerPool
from csr_ros.core.state.template import PromptTemplate, template_from_tokenizer

log = logging.getLogger("csr_ros.server")


@dataclass
class ServerBackend:
    """Backend interface of :class:`csr_ros.core.model.backends.hf.HFBackend`, over serving engines.

    Attributes:
        name: model name for reports. pool: the servers (primary and standby lanes).
        tokenizer: the local HF tokenizer of the served model. template: prompt template.
        max_new_tokens: tokens per streamed request (answers go on in new requests).
        top_k: log-probabilities asked for when scoring. text_prompt: send text, not ids.
    """

    name: str
    pool: ServerPool
    tokenizer: object
    template: PromptTemplate
    max_new_tokens: int = 64
    top_k: int = 100
    text_prompt: bool = False
    device: str = "server"
    dtype: str = "server"
    kv_capacity_tokens: int = 0
    _states: list = field(default_factory=list, repr=False)

    @property
    def eos_ids(self) -> set[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return {int(eos)} if isinstance(eos, int) else {int(i) for i in (eos or [])}

    @property
    def eos_id(self) -> int:
        return min(self.eos_ids) if self.eos_ids else 0

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def exact_text(self, ids: Sequence[int]) -> str:
        """The rendered text of ``ids`` byte for byte (special tokens kept, no clean-up)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode_one(self, tok: int) -> str:
        return self.exact_text([tok])

    def bos_ids(self) -> list[int]:
        ids = self.tokenizer.encode("x", add_special_tokens=True)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return [bos] if bos is not None and ids and ids[0] == bos else []

    def _state_on(self, lane) -> RemoteState:
        prompt = self.exact_text if self.text_prompt else list
        return RemoteState(self.pool.client(lane), self.pool.counters, self.eos_id, prompt,
                           self.max_new_tokens, self.top_k, on_use=self.pool.note_use)

    def new_state(self) -> RemoteState:
        """A state on the primary lane (the engine's own, and the synchronous fallback's)."""
        return self._state_on(self.pool.primary)

    def new_build_state(self) -> RemoteState:
        """A state on the standby lane: the reconciler warms the compacted prompt there."""
        return self._state_on(self.pool.standby)

    def promote(self, kv) -> bool:
        """``kv`` was installed in the engine: its lane becomes the primary."""
        lane = getattr(kv, "lane", None)
        return self.pool.promote(lane) if lane is not None else False

    def unavailable(self) -> str:
        """Why a query would be refused now: the primary server is away or being re-warmed
        ('' when it is up). The scheduler refuses new questions with this text."""
        return self.pool.health.away_reason([self.pool.primary.url])

    def fault_counters(self):
        """The servers' fault counters (:class:`~csr_ros.core.model.backends.server_health.ServerFaultCounters`)."""
        return self.pool.health.counters

    def report(self) -> dict:
        """Server counters (prompt tokens evaluated vs cached, warm-up times), lanes, and the
        prefix-cache hit rate the servers export (vLLM / SGLang ``/metrics``)."""
        return self.pool.report()


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from csr_ros.core.model.backends.embedded import resolve_model_dir

    hf_logging.disable_progress_bar()
    path = resolve_model_dir(name)
    return AutoTokenizer.from_pretrained(str(path)), ("SmolLM2-135M-Instruct" if name == "embedded" else path.name)


def load_server(urls: Sequence[str], dialect: str = "llamacpp", tokenizer: str = "embedded", model: str = "",
                timeout_s: "float | RequestPolicy" = 120.0, ready_timeout_s: float = 60.0, max_new_tokens: int = 64,
                top_k: int = 100, prompt_format: str = "tokens", api_key: str = "",
                slot_ids: Sequence[int] = (0, 1), health_period_s: float = 0.5,
                start_monitor: bool = True) -> ServerBackend:
    """Connect to one or two servers (waits for ``/health``) and return the backend.

    ``dialect``: llamacpp | vllm | sglang | openai. ``model``: the served model's name for the
    ``/v1`` APIs (empty: the first of ``/v1/models``). ``prompt_format``: tokens | text.
    ``timeout_s``: one timeout for every request, or a :class:`RequestPolicy` (per kind, retries).
    ``health_period_s``: the server-health thread's period (dead, stalled, restarted servers);
    ``start_monitor`` False: no thread (tests run its rounds with ``pool.health.poll_once()``).
    """
    if prompt_format not in ("tokens", "text"):
        raise ValueError(f"prompt_format {prompt_format!r}: use tokens or text")
    tok, name = _load_tokenizer(tokenizer)
    be_holder: dict = {}
    d = make_dialect(dialect, model=model,
                     encode=lambda s: be_holder["be"].encode(s), decode_one=lambda t: be_holder["be"].decode_one(t))
    pool = ServerPool(urls, d, timeout_s, api_key, slot_ids, health_period_s)
    pool.wait_ready(ready_timeout_s)
    pool.check_slots()
    if dialect in ("vllm", "openai") and not model:
        d.model = pool.discover_model()
    be = ServerBackend(name, pool, tok, template_from_tokenizer(tok), max_new_tokens, top_k, prompt_format == "text")
    be_holder["be"] = be
    if start_monitor:
        pool.health.start()
    log.info("server backend: %s over %s (%s)", dialect, ", ".join(str(l) for l in pool.lanes), name)
    return be


def from_config(cfg) -> ServerBackend:
    """The backend described by the ``server`` parameter group (``model.backend: openai``)."""
    s = cfg.server
    policy = RequestPolicy(s.timeout_s, s.query_timeout_s, s.score_timeout_s, s.retries, s.retry_backoff_s)
    return load_server(s.urls, s.dialect, s.tokenizer, s.model, policy, s.ready_timeout_s,
                       s.max_new_tokens, s.logprobs_top_k, s.prompt_format, s.api_key, s.slot_ids, s.health_period_s)
