"""The server tier: a real llama.cpp ``llama-server`` (C++, built from source once by
``scripts/build_llama_server.sh``) started here on 127.0.0.1 free ports with the embedded GGUF.

Every test module in this folder sets ``pytestmark = pytest.mark.server``; CI runs them in their own step
(``pytest -m server``). They skip, with the reason, ONLY when the server binary is not installed;
any other start-up problem (missing GGUF, a server that does not come up) fails.
"""

from __future__ import annotations

import os
import shutil

import pytest

from csr_ros.core.model.backends.llama_server import LlamaServer, ServerNotInstalled, server_binary


def _require_binary() -> None:
    try:
        server_binary()
    except ServerNotInstalled as e:
        pytest.skip(str(e))


def _start(**kw) -> LlamaServer:
    _require_binary()
    return LlamaServer.start(**kw)


@pytest.fixture(scope="session")
def llama_server():
    """One server, two slots of 2048 tokens (the two lanes of the single-URL mode)."""
    srv = _start(ctx_tokens=2048, parallel=2, threads=1)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def two_servers():
    """Two servers, one slot each: the primary and the standby of the two-server mode."""
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2  # one core each
    a = _start(ctx_tokens=2048, parallel=1, threads=1, cpus="0" if pin else None)
    try:
        b = _start(ctx_tokens=2048, parallel=1, threads=1, cpus="1" if pin else None)
    except Exception:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


@pytest.fixture(scope="session")
def server_backend(llama_server):
    from csr_ros.core.model.backends.openai import load_server

    return load_server([llama_server.url], dialect="llamacpp")
