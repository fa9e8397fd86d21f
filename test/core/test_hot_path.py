"""The CPU hot-path gate: a background build waits at layer boundaries while a query runs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from csr_ros.core.reconcile.hot_path import HotPathGate, checkpoint_modules, decoder_layers, enable_for, gate_of

pytestmark = pytest.mark.core


class _Tiny(torch.nn.Module):
    def __init__(self, n: int = 3):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(n))

    def forward(self, x):
        for layer in self.model.layers:
            x = layer(x)
        return x


class _Backend:
    def __init__(self, device: str = "cpu"):
        self.model, self.device = _Tiny(), device


def test_background_thread_waits_at_layer_boundaries_while_hot():
    be = _Backend()
    assert enable_for(be, max_wait_s=5.0)
    gate = gate_of(be)
    entered = threading.Event()
    done = threading.Event()

    def build():
        with gate.background():
            entered.set()
            be.model(torch.zeros(1, 4))
        done.set()

    with gate.hot():
        t = threading.Thread(target=build)
        t.start()
        assert entered.wait(5)
        time.sleep(0.2)
        assert not done.is_set()  # parked at the first layer while the hot section is open
        with gate.hot():  # re-entrant
            pass
        assert not done.is_set()
    t.join(5)
    assert done.is_set() and gate.counters.waits >= 1 and gate.counters.timeouts == 0


def test_threads_not_registered_never_wait_and_disabled_gate_is_a_no_op():
    be = _Backend()
    gate = gate_of(be)
    with gate.hot():  # disabled: nothing attached, nothing counted
        be.model(torch.zeros(1, 4))
    assert enable_for(be)
    with gate.hot():
        be.model(torch.zeros(1, 4))  # the hot thread itself, and any unregistered thread, runs on
    assert gate.counters.waits == 0


def test_waits_are_bounded_and_fair_under_a_hot_path_that_never_pauses():
    gate = HotPathGate(max_wait_s=0.05)
    gate.enabled = True
    with gate.hot(), gate.background():
        t0 = time.monotonic()
        for _ in range(20):
            gate.checkpoint()
        elapsed = time.monotonic() - t0
    assert gate.counters.timeouts >= 1
    assert elapsed < 20 * 0.05  # after a cut wait the background runs free for as long again


def test_cuda_models_and_modelless_backends_keep_it_off():
    assert not enable_for(_Backend("cuda:0"))

    class NoModel:
        device = "cpu"

    assert not enable_for(NoModel())
    assert decoder_layers(object()) == []


def test_reconciler_builds_yield_to_engine_queries():
    """End to end on the tiny model: a query issued while a rebuild runs gives the same answer
    as without a rebuild, and the build finished with at least one wait when they overlapped."""
    from csr_ros.core.model.backends.hf import load_shape
    from csr_ros.core.runtime.engine import CsrEngine
    from csr_ros.core.reconcile.reconciler import Reconciler

    be = load_shape("tiny", device="cpu", dtype="float32", attn="csr")
    assert not Reconciler(be, policy="drop_oldest").yields_to_hot_path  # opt-in
    rec = Reconciler(be, policy="drop_oldest", evict_frac=0.5, chunk_tokens=16, yield_to_hot_path=True)
    assert rec.yields_to_hot_path and gate_of(be).enabled
    eng = CsrEngine(be, budget_tokens=4096, high_water_frac=0.5, compactor=rec.compactor)
    for k in range(40):
        eng.submit("/observations", (k + 1) * 10**9, f"observation number {k} about the kitchen")
    eng.flush()
    ref = eng.query("What is in the kitchen?", max_new_tokens=4).token_ids
    rec.request(eng.snapshot())
    worker = threading.Thread(target=rec.run_once)
    worker.start()
    got = eng.query("What is in the kitchen?", max_new_tokens=4).token_ids
    worker.join(30)
    assert got == ref and not worker.is_alive()
    assert rec.take_ready(eng.ledger.version) is not None  # the build completed


def test_checkpoints_sit_before_attention_and_mlp_of_each_layer():
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn, self.mlp = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    layers = [Layer(), Layer()]
    plain = torch.nn.Linear(4, 4)
    assert checkpoint_modules(layers) == [layers[0].self_attn, layers[0].mlp, layers[1].self_attn, layers[1].mlp]
    assert checkpoint_modules([plain]) == [plain]  # neither part: the whole layer


def test_a_hot_section_longer_than_a_query_does_not_release_the_build_by_default():
    gate = HotPathGate()
    assert gate.max_wait_s >= 1.0  # a ~0.3 s CPU query must not be cut by the fairness timeout
