"""The model tier: the embedded SmolLM2 installed by scripts/setup.sh (no download, ever)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smol():
    from csr_ros.core.model.backends.embedded import is_prepared
    from csr_ros.core.model.backends.hf import load_hf

    if not is_prepared():
        pytest.fail("the embedded model is not prepared: run `bash scripts/setup.sh`")
    return load_hf("embedded", device="cpu")


@pytest.fixture(scope="session")
def smol_ref(smol):
    """The same weights through transformers' default attention and a fresh prefill."""
    from csr_ros.core.model.backends.hf import load_hf

    return load_hf("embedded", device="cpu", attn="default")
