"""Named model shapes for randomly initialised benchmark models (latency does not depend on weights)."""

from __future__ import annotations

SHAPES: dict[str, dict] = {
    # Llama-3.1-8B: 32 layers, 32 query heads, 8 KV heads, head dim 128.
    "llama-3.1-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072,
    ),
    "llama-3.2-3b": dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    # Tiny: for unit tests (milliseconds per forward on a CPU).
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, rope_theta=10000.0, max_position_embeddings=16384,
    ),
}


def shape_config(name: str):
    """A transformers LlamaConfig for a named shape (raises KeyError naming the known shapes)."""
    from transformers import LlamaConfig

    if name not in SHAPES:
        raise KeyError(f"unknown model shape {name!r}; known: {', '.join(sorted(SHAPES))}")
    return LlamaConfig(**SHAPES[name])
