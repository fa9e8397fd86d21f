"""The action registry: shipped file, primitives, clamping, hold chunk, errors naming the entry;
learned heads: safetensors round trip and metadata checks."""

from __future__ import annotations

import math

import pytest

from csr_ros.core.runtime.actions import ActionRegistry, ActionRegistryError, expand_primitive, resolve_config_file

pytestmark = pytest.mark.core

DIMS = [{"name": "vx", "unit": "m/s", "min": -0.5, "max": 0.5}, {"name": "wz", "unit": "rad/s", "min": -1, "max": 1}]


def reg(entries, h=4, dt=0.1, **extra) -> ActionRegistry:
    return ActionRegistry.from_dict({"dimensions": DIMS, "entries": entries, **extra}, h, dt, source="t.yaml")


HOLD = {"name": "hold", "description": "stay still", "primitive": {"type": "hold"}}


def test_shipped_registry_loads_with_the_default_horizon():
    r = ActionRegistry.load(resolve_config_file("", "actions.yaml"), 10, 0.1)
    assert {"hold", "approach", "retreat", "turn_left", "turn_right", "wave", "reach"} <= set(r.entry_names)
    assert r.hold_chunk == (0.0,) * r.chunk_size
    for e in r.entries:
        assert len(e.chunk) == 10 * len(r.names)
        assert r.clamp(e.chunk) == pytest.approx(e.chunk), f"{e.name} exceeds the configured limits"
    assert "turn_left: rotate the base to the left" in r.prompt_block()


def test_primitives_expand_to_h_steps():
    dims = reg([HOLD]).dims
    lin = expand_primitive({"type": "linear", "params": {"start": {"vx": 0.0}, "end": {"vx": 0.3}}}, dims, 4, 0.1)
    assert lin[0::2] == pytest.approx([0.0, 0.1, 0.2, 0.3]) and lin[1::2] == [0.0] * 4
    trap = expand_primitive({"type": "trapezoid", "params": {"peak": [0.4, 0.0], "ramp_steps": 2}}, dims, 6, 0.1)
    assert trap[0::2] == pytest.approx([0.2, 0.4, 0.4, 0.4, 0.4, 0.2])
    sine = expand_primitive({"type": "sine", "params": {"amplitude": {"wz": 1.0}, "frequency_hz": 2.5}}, dims, 4, 0.1)
    assert sine[1::2] == pytest.approx([math.sin(2 * math.pi * 0.25 * i) for i in range(4)])
    const = expand_primitive({"type": "constant", "params": {"value": {"wz": -0.2}}}, dims, 3, 0.1)
    assert const == [0.0, -0.2] * 3


def test_values_entry_and_clamp():
    r = reg([HOLD, {"name": "spin", "description": "spin fast", "values": [[0, 3], [0, 3], [0.9, -3], {"vx": -2}]}])
    assert r.entry("spin").chunk == (0, 3, 0, 3, 0.9, -3, -2, 0)
    assert r.clamp(r.entry("spin").chunk) == (0, 1, 0, 1, 0.5, -1, -0.5, 0)
    with pytest.raises(ValueError, match="not finite"):
        r.clamp([0.0] * 7 + [float("nan")])
    with pytest.raises(ValueError, match="expected 4 x 2"):
        r.clamp([0.0] * 3)


@pytest.mark.parametrize("entry, match", [
    ({"name": "bad", "description": "x", "values": [[0, 0]] * 3}, "entry 'bad': 'values' has 3 rows, the configured horizon is 4"),
    ({"name": "bad", "description": "x", "values": [[0, 0, 0]] * 4}, r"entry 'bad' values\[0\]: has 3 values, expected 2"),
    ({"name": "bad", "description": "x", "primitive": {"type": "jump"}}, "entry 'bad': primitive needs a 'type'"),
    ({"name": "bad", "description": "x", "primitive": {"type": "linear", "params": {"end": {"vy": 1}}}},
     r"entry 'bad' end: unknown dimension\(s\) \['vy'\]"),
    ({"name": "bad", "description": "x", "primitive": {"type": "sine", "params": {"freq": 1}}}, "unknown sine param"),
    ({"name": "bad", "description": "", "primitive": {"type": "hold"}}, "entry 'bad': needs a non-empty 'description'"),
    ({"name": "two words", "description": "x", "primitive": {"type": "hold"}}, "names must be one word"),
    ({"name": "bad", "description": "x"}, "entry 'bad': give exactly one of 'values' or 'primitive'"),
    ({"name": "bad", "description": "x", "primitive": {"type": "trapezoid", "params": {"ramp_steps": 3}}}, "ramp_steps"),
])
def test_errors_name_the_entry(entry, match):
    with pytest.raises(ActionRegistryError, match=match):
        reg([HOLD, entry])


def test_registry_level_errors():
    with pytest.raises(ActionRegistryError, match="hold entry 'stop' is not in the registry"):
        reg([HOLD], hold="stop")
    with pytest.raises(ActionRegistryError, match="entry 'hold' is defined twice"):
        reg([HOLD, HOLD])
    with pytest.raises(ActionRegistryError, match="'dimensions' must be a non-empty list"):
        ActionRegistry.from_dict({"entries": [HOLD]}, 4, 0.1)
    with pytest.raises(ActionRegistryError, match="no such file"):
        resolve_config_file("/nonexistent/actions.yaml", "actions.yaml")


def test_head_round_trip_through_safetensors_only(tmp_path):
    torch = pytest.importorskip("torch")
    from csr_ros.core.model.heads import ActionHead, load_head, save_head

    head = ActionHead(16, 8, 4, ("vx", "wz"), 0.1)
    path = save_head(head, tmp_path / "h.safetensors")
    assert path.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    loaded = load_head(path, ("vx", "wz"), 4, 16)
    x = torch.randn(16)
    assert loaded.predict(x) == pytest.approx(head.predict(x))
    with pytest.raises(ValueError, match="action dimensions"):
        load_head(path, ("vx", "vy"), 4, 16)
    with pytest.raises(ValueError, match="input size"):
        load_head(path, ("vx", "wz"), 4, 32)
    with pytest.raises(ValueError, match="hidden state has 3 values"):
        loaded.predict([0.0, 1.0, 2.0])


def test_shipped_example_head_matches_the_registry_and_the_embedded_model():
    pytest.importorskip("torch")
    from csr_ros.core.model.heads import load_head

    path = resolve_config_file("", "heads/example_head.safetensors")
    assert path.stat().st_size < 200_000
    r = ActionRegistry.load(resolve_config_file("", "actions.yaml"), 10, 0.1)
    head = load_head(path, r.names, r.horizon_steps, 576)  # SmolLM2-135M hidden size
    assert len(head.predict([0.0] * 576)) == r.chunk_size


def test_train_head_from_a_recording_writes_a_loadable_head(tmp_path):
    pytest.importorskip("torch")
    from csr_ros.core.model.backends.hf import load_shape
    from csr_ros.core.runtime.head_data import synthetic_recording
    from csr_ros.core.model.heads import load_head
    from csr_ros.core.runtime.head_training import read_recording, train_head
    from csr_ros.core.runtime.policy import LearnedHeadPolicy

    rec = synthetic_recording(tmp_path / "rec.jsonl", episodes=4, steps=3, seed=1)
    assert [len(ep) for ep in read_recording(rec)] == [3] * 4
    r = ActionRegistry.load(resolve_config_file("", "actions.yaml"), 10, 0.1)
    metrics = train_head(rec, tmp_path / "h.safetensors", load_shape("tiny", device="cpu"), r, hidden_dim=8, epochs=20)
    assert metrics["train_records"] + metrics["val_records"] == 12 and metrics["in_dim"] == 64
    head = load_head(tmp_path / "h.safetensors", r.names, 10, 64)
    assert len(LearnedHeadPolicy(r, head).decide(None, "", [0.1] * 64).values) == r.chunk_size
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"episode": 0, "source": "/a", "text": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: give exactly one of 'action' or 'chunk'"):
        read_recording(bad)
