"""In-process Hugging Face causal-LM backend (the embedded SmolLM2, any local folder, or a named
randomly initialised shape for tests and latency benchmarks)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from csr_ros.core.model import attention
from csr_ros.core.model.buckets import DEFAULT_MAX_TOKENS, bucket_sizes
from csr_ros.core.model.cuda_graphs import StepRunner, unsupported_reason
from csr_ros.core.model.backends.embedded import ModelNotAvailable, resolve_model_dir
from csr_ros.core.model.kv_state import KVState
from csr_ros.core.state.template import PromptTemplate, template_from_tokenizer
from csr_ros.core.state.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


@dataclass
class HFBackend:
    """A loaded model + tokenizer; hands out KV states that share the weights.

    Attributes:
        name: model name for reports.
        model: the causal LM (eval mode, no grad).
        tokenizer: HF tokenizer or :class:`ByteTokenizer`.
        template: prompt template derived from the tokenizer.
    """

    name: str
    model: torch.nn.Module
    tokenizer: object
    template: PromptTemplate
    device: torch.device
    dtype: torch.dtype

    @property
    def eos_ids(self) -> set[int]:
        ids = set()
        for src in (getattr(self.tokenizer, "eos_token_id", None),
                    getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, (list, tuple)):
                ids.update(int(i) for i in src)
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added (callers render them explicitly)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    kv_capacity_tokens: int = 1024
    runner: StepRunner | None = None

    def new_state(self) -> KVState:
        """A fresh KV state (shared weights); its cache starts with ``kv_capacity_tokens`` slots
        preallocated and doubles when full. All states share the backend's graph runner."""
        return KVState(self.model, self.device, capacity_tokens=self.kv_capacity_tokens, runner=self.runner)

    def bos_ids(self) -> list[int]:
        """BOS token when the model's tokenizer adds one, else nothing."""
        ids = self.tokenizer.encode("x", add_special_tokens=True)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return [bos] if bos is not None and ids and ids[0] == bos else []


def _quiet() -> None:
    """No progress bars from transformers in a robot's logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _finish(model: torch.nn.Module, attn: str) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    if attn == "csr":
        model.set_attn_implementation(attention.register())
    elif attn != "default":
        model.set_attn_implementation(attn)
    return model


def make_runner(model: torch.nn.Module, cuda_graphs: bool | str,
                max_tokens: int = DEFAULT_MAX_TOKENS) -> StepRunner | None:
    """The shared CUDA-graph runner for every forward of up to ``max_tokens`` tokens (bucketed,
    :mod:`csr_ros.core.model.buckets`): only on CUDA, with ``cuda_graphs`` on and a supported
    (Llama-family) architecture; otherwise None (every forward stays eager). On CUDA every bucket
    is captured here, at load time, so no first use pays for a capture. ``"explicit"`` runs the
    runner's segments without capture on any device (tests, CPU dry runs)."""
    explicit = cuda_graphs == "explicit"
    dev = next(model.parameters()).device
    if not cuda_graphs or (dev.type != "cuda" and not explicit):
        return None
    reason = unsupported_reason(model)
    if reason:
        log.info("CUDA graphs off: %s", reason)
        return None
    runner = StepRunner(model, bucket_sizes(max_tokens), capture=not explicit)
    if runner.capture:
        log.info("CUDA graphs captured for %d of %d buckets", runner.capture_all(), len(runner.sizes))
    return runner


def load_hf(model: str = "embedded", device: str = "auto", dtype: str = "float32",
            attn: str = "csr", trust_remote_code: bool = False, cuda_graphs: bool | str = True,
            graph_max_tokens: int = DEFAULT_MAX_TOKENS) -> HFBackend:
    """Load a local model folder (``"embedded"`` = SmolLM2). Weights from safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    path = resolve_model_dir(model)
    dev, dt = pick_device(device), parse_dtype(dtype)
    if not any(path.glob("*.safetensors")):
        raise ModelNotAvailable(f"{path} has no .safetensors weights (pickled weights are refused)")
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dt, use_safetensors=True, trust_remote_code=trust_remote_code,
        attn_implementation="sdpa",
    ).to(dev)
    name = path.name if model != "embedded" else "SmolLM2-135M-Instruct"
    lm = _finish(lm, attn)
    return HFBackend(name, lm, tok, template_from_tokenizer(tok), dev, dt,
                     runner=make_runner(lm, cuda_graphs, graph_max_tokens))


def load_shape(shape: str = "tiny", device: str = "auto", dtype: str = "float32",
               attn: str = "csr", seed: int = 0, cuda_graphs: bool | str = True,
               graph_max_tokens: int = DEFAULT_MAX_TOKENS) -> HFBackend:
    """A randomly initialised Llama of a named shape (latency does not depend on weights)."""
    from transformers import AutoModelForCausalLM

    from csr_ros.core.model.backends.shapes import shape_config

    cfg = shape_config(shape)
    dev, dt = pick_device(device), parse_dtype(dtype)
    torch.manual_seed(seed)
    with torch.device(dev):
        lm = AutoModelForCausalLM.from_config(cfg, dtype=dt, attn_implementation="sdpa")
    tok = ByteTokenizer(cfg.vocab_size)
    lm = _finish(lm, attn)
    return HFBackend(f"random-{shape}", lm, tok, template_from_tokenizer(tok), dev, dt,
                     runner=make_runner(lm, cuda_graphs, graph_max_tokens))


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes one cached token takes over all layers (K and V)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


def budget_from_free_memory(backend: HFBackend, memory_frac: float, requested_tokens: int,
                            free_bytes: int | None = None) -> int:
    """The KV budget that fits in ``memory_frac`` of the device's free memory, capped at
    ``requested_tokens``. On a Jetson (unified memory) and on discrete GPUs alike the free memory
    is what ``torch.cuda.mem_get_info`` reports at start; on the CPU the request is kept.

    Room is reserved for two states (serving + the reconciler's rebuild) plus branch headroom.
    """
    if free_bytes is None:
        if backend.device.type != "cuda":
            return requested_tokens
        free_bytes, _ = torch.cuda.mem_get_info(backend.device)
    per_token = kv_bytes_per_token(backend.model.config, backend.dtype)
    fit = int(free_bytes * memory_frac) // (2 * per_token)
    return max(0, min(requested_tokens, fit))
