"""Fixtures for the core tier: the tiny random model and the fake backend (no ROS)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny():
    """A randomly initialised 2-layer Llama with a byte tokenizer (csr attention)."""
    from csr_ros.core.model.backends.hf import load_shape

    return load_shape("tiny", device="cpu", seed=0)


@pytest.fixture(scope="session")
def tiny_ref():
    """The same weights with transformers' default attention: the reference path."""
    from csr_ros.core.model.backends.hf import load_shape

    return load_shape("tiny", device="cpu", seed=0, attn="default")


@pytest.fixture
def fake():
    from csr_ros.core.model.backends.fake import FakeBackend

    return FakeBackend()
