"""Durability on the real SmolLM2: SIGKILL a process mid-stream, restart from the on-disk ledger.

A child process streams increments into an engine with a ledger store (fsync=always, the
entity_memory policy, a budget small enough that several compactions are recorded). After every
increment it appends it (one forward) and reports a checkpoint: state version, a hash of the
state's tokens, and the next-token logits (saved to a file). The test SIGKILLs it while it is
still streaming, restarts an engine from the ledger directory and checks it holds the state of
the last durable record: same version, same tokens, same next-token logits (within 1e-3, the
model tier's tolerance for a fresh prefill vs incremental appends) and the same greedy token.
If the kill landed after an increment was written but before its checkpoint, the expected state
is replayed deterministically from the same stream without a store.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from csr_ros.core.state.compaction import Compactor
from csr_ros.core.runtime.engine import CsrEngine
from csr_ros.core.state.entity_memory import EntityMemory
from csr_ros.core.state.ledger_store import LedgerStore
from csr_ros.share import child_env

pytestmark = [pytest.mark.model, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
LOGIT_ATOL = 1e-3
BUDGET, KILL_AFTER = 448, 30

CHILD = textwrap.dedent('''
    import hashlib, json, sys, time, torch
    from csr_ros.core.model.backends.hf import load_hf
    from csr_ros.core.state.compaction import Compactor
    from csr_ros.core.runtime.engine import CsrEngine
    from csr_ros.core.state.entity_memory import EntityMemory
    from csr_ros.core.state.ledger_store import LedgerStore
    from csr_ros.cli.bench.evict import observation

    torch.set_num_threads(1)
    out_dir, budget = sys.argv[1], int(sys.argv[2])
    be = load_hf("embedded", device="cpu")
    comp = Compactor("entity_memory", 0.5, be.template, be.encode)
    eng = CsrEngine(be, budget_tokens=budget, compactor=comp, memory=EntityMemory(),
                    store=LedgerStore(out_dir + "/ledger", fsync="always"))
    for k in range(10_000):
        stamp = k * 250_000_000
        src, text, facts = observation(k, stamp)
        inc = eng.submit(src, stamp, text, facts)
        logits = eng.flush().logits[-1]
        torch.save(logits, f"{out_dir}/logits_{inc.seq}.pt")
        sha = hashlib.sha256(json.dumps(eng.ledger.token_ids()).encode()).hexdigest()
        print(json.dumps({"seq": inc.seq, "version": eng.ledger.version, "sha": sha,
                          "tokens": eng.ledger.num_tokens}), flush=True)
        time.sleep(0.1)
''')


def token_sha(ids) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def make_engine(be, store=None) -> CsrEngine:
    comp = Compactor("entity_memory", 0.5, be.template, be.encode)
    return CsrEngine(be, budget_tokens=BUDGET, compactor=comp, memory=EntityMemory(), store=store)


def replay_reference(be, last_seq: int) -> tuple[CsrEngine, torch.Tensor]:
    """The child's stream without a store, up to ``last_seq`` (same deterministic stream)."""
    from csr_ros.cli.bench.evict import observation

    eng = make_engine(be)
    for k in range(last_seq + 1):
        src, text, facts = observation(k, k * 250_000_000)
        eng.submit(src, k * 250_000_000, text, facts)
        logits = eng.flush().logits[-1]
    return eng, logits


def run_child_and_kill(tmp_path: Path) -> dict[int, dict]:
    env = child_env()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(BUDGET)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    checkpoints: dict[int, dict] = {}
    try:
        for line in child.stdout:
            ck = json.loads(line)
            checkpoints[ck["seq"]] = ck
            if len(checkpoints) >= KILL_AFTER:
                break
    finally:
        child.send_signal(signal.SIGKILL)  # mid-stream: no shutdown, no final fsync
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    return checkpoints


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the child's thread count: same kernels, comparable rounding
    yield
    torch.set_num_threads(before)


def test_sigkill_mid_stream_then_restart_gives_the_same_state(smol, tmp_path, one_thread):
    checkpoints = run_child_and_kill(tmp_path)
    assert len(checkpoints) == KILL_AFTER
    assert max(ck["version"] for ck in checkpoints.values()) >= 2  # compactions were recorded

    restarted = make_engine(smol, LedgerStore(tmp_path / "ledger"))
    assert restarted.restored is not None and restarted.check_invariant()
    last_seq = restarted.last_seq
    assert last_seq in (max(checkpoints), max(checkpoints) + 1)  # at most the in-flight one extra
    if restarted.pending:  # restored over budget: the append runs the fallback as before the kill
        logits = restarted.flush().logits[-1]
    else:  # next-token logits read from the restored KV itself (re-append its last token)
        ids = restarted.ledger.token_ids()
        restarted.kv.truncate(len(ids) - 1)
        logits = restarted.kv.append(ids[-1:]).logits[-1]
    assert restarted.check_invariant()

    if last_seq in checkpoints:  # the pre-kill process reported this very state
        ck = checkpoints[last_seq]
        want_version, want_sha = ck["version"], ck["sha"]
        want_logits = torch.load(tmp_path / f"logits_{last_seq}.pt")
    else:
        ref, want_logits = replay_reference(smol, last_seq)
        want_version, want_sha = ref.ledger.version, token_sha(ref.ledger.token_ids())
    assert restarted.ledger.version == want_version
    assert token_sha(restarted.ledger.token_ids()) == want_sha
    torch.testing.assert_close(logits, want_logits, atol=LOGIT_ATOL, rtol=0)
    assert int(logits.argmax()) == int(want_logits.argmax())
    restarted.store.close()
