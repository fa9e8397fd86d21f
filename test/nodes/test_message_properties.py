"""Property-based tests (hypothesis) of every message converter and serializer, and of the input
gate: for ANY message (NaN/inf, mismatched arrays, wrong image geometry, huge or binary text, odd
stamps) a serializer returns an observation that satisfies its contract, returns None, or raises
:class:`Rejected`; nothing else escapes. Converters always produce messages that survive real
serialization unchanged (no silent wrap-around of int32 seconds or unsigned counters)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from csr_ros.core.runtime.actions import ActionRegistry, resolve_config_file
from csr_ros.core.state.ledger import Fact, Increment
from csr_ros.core.runtime.engine import EngineCounters
from csr_ros.core.runtime.outputs import SchedulerCounters
from csr_ros.core.runtime.scheduler import ChunkOut, LanguageOut, StatusOut
from csr_ros.nodes import conversions as conv
from csr_ros.nodes.ingest import InputGate
from csr_ros.nodes.parameters import InputSpec
from csr_ros.nodes.serializers import (JointStateSerializer, MarkerSerializer, PoseSerializer, Rejected,
                                       SceneChangeSerializer, StringSerializer, aruco_available, image_to_gray)

pytestmark = pytest.mark.nodes
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NS = 1_000_000_000
MAX_NS = (2**31 - 1) * NS + NS - 1

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
any_int = st.integers(-2**70, 2**70)
text = st.text(max_size=200)  # hypothesis' text never holds lone surrogates (not valid UTF-8 anyway)


def _roundtrip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


# ------------------------------------------------------------------------------ conversions
@FAST
@given(any_int)
def test_times_clamp_into_the_message_range_and_survive_serialization(ns):
    t = _roundtrip(conv.ns_to_time(ns))
    assert conv.time_to_ns(t) == min(max(0, ns), MAX_NS)


@FAST
@given(any_float)
def test_durations_are_never_negative_nor_wrapped(seconds):
    d = _roundtrip(conv.s_to_duration(seconds))
    ns = d.sec * NS + d.nanosec
    assert 0 <= ns <= MAX_NS
    if math.isfinite(seconds) and 0 <= seconds < 2**31 - 1:
        assert abs(ns - seconds * NS) <= 1 + abs(seconds) * NS * 1e-15


@st.composite
def chunks(draw) -> ChunkOut:
    width, horizon = draw(st.integers(0, 4)), draw(st.integers(0, 6))
    n = draw(st.sampled_from([width * horizon, width * horizon + 1, 0]))
    return ChunkOut(draw(any_int), draw(any_int), draw(any_int), tuple(draw(st.lists(text, min_size=width, max_size=width))),
                    draw(st.floats(0.001, 10.0)), horizon, tuple(draw(st.lists(st.floats(-1e6, 1e6), min_size=n, max_size=n))),
                    draw(text), draw(any_int), draw(st.booleans()))


@FAST
@given(chunks())
def test_action_chunks_and_trajectories_are_always_valid_messages(chunk):
    msg = _roundtrip(conv.chunk_to_msg(chunk))
    assert list(msg.data) == list(chunk.data) and 0 <= msg.state_version < 2**64 and 0 <= msg.horizon < 2**32
    assert conv.time_to_ns(msg.header.stamp) == min(max(0, chunk.stamp_ns), MAX_NS)
    traj = conv.chunk_to_trajectory(chunk)
    consistent = chunk.names and chunk.horizon > 0 and len(chunk.data) == chunk.horizon * len(chunk.names)
    assert (traj is None) == (not consistent)
    if traj is not None:
        traj = _roundtrip(traj)
        assert len(traj.points) == chunk.horizon and all(len(p.positions) == len(chunk.names) for p in traj.points)
        times = [p.time_from_start.sec * NS + p.time_from_start.nanosec for p in traj.points]
        assert times == sorted(times)


@FAST
@given(st.lists(any_int, min_size=9, max_size=9), st.floats(-1e9, 1e9), st.floats(-1e9, 1e9), any_int, text)
def test_status_counters_clamp_into_unsigned_fields(ints, ttft, rebuild, extra, state):
    status = StatusOut(ints[0], ints[1], ints[2], state, ttft, rebuild,
                       engine=EngineCounters(increments_total=ints[3], increments_rejected=ints[4], swaps=ints[5],
                                             sync_evictions=ints[7]),
                       scheduler=SchedulerCounters(frame_overruns=ints[6]))
    msg = _roundtrip(conv.status_to_msg(status, ints[8], extra))
    assert msg.cached_tokens == min(max(0, ints[1]), 2**32 - 1)
    assert msg.increments_rejected == min(max(0, ints[4] + extra), 2**64 - 1)
    diag = _roundtrip(conv.status_to_diagnostics(status, ints[8], extra_rejected=extra))
    assert {kv.key for kv in diag.status[0].values} >= {"requests_refused", "increments_coalesced"}


@FAST
@given(text, text, st.booleans(), any_int, st.lists(st.integers(0, 2**40), min_size=0, max_size=5), any_int)
def test_utterances_and_increments_round_trip(rid, body, final, stamp, ids, version):
    u = _roundtrip(conv.language_to_msg(LanguageOut(rid, body, final, "state"), stamp))
    rid, body = rid.replace("\x00", ""), body.replace("\x00", "")  # a DDS string ends at a NUL
    assert (u.request_id, u.text, u.is_final) == (rid, body, final)
    assert conv.utterance_request(u) == (rid, body)
    inc = Increment(abs(version) % 2**70, "/t", stamp, body, tuple(ids), (Fact("e", "a", "v", stamp),))
    m = _roundtrip(conv.increment_to_msg(inc, version))
    assert m.text == body and m.num_tokens == len(ids) and 0 <= m.sequence < 2**64


# ------------------------------------------------------------------------------ serializers
@FAST
@given(st.text(max_size=700))
def test_string_serializer_contract(raw):
    ser = StringSerializer("obs", [r"(?P<entity>\w+) in the (?P<value>\w+)"], "location", 512)
    try:
        obs = ser(String(data=raw), 5)
    except Rejected:
        return
    assert 0 < len(obs.text) <= 512 and obs.text == " ".join(obs.text.split())
    assert not any(ord(c) < 32 for c in obs.text)
    assert all(f.entity and f.value and f.stamp_ns == 5 for f in obs.facts)


@FAST
@given(st.lists(st.text(max_size=8), max_size=5), st.lists(any_float, max_size=6), st.lists(any_float, max_size=6),
       st.lists(any_float, max_size=6))
def test_joint_state_serializer_contract(names, pos, vel, eff):
    ser = JointStateSerializer("joints", 2, 0.01)
    try:
        obs = ser(JointState(name=names, position=pos, velocity=vel, effort=eff), 7)
    except Rejected:
        return
    assert len(names) == len(pos) > 0 and len(set(names)) == len(names) and all(names)
    assert all(math.isfinite(v) for v in pos + vel + eff) and len(vel) in (0, len(names))
    assert obs is not None and len(obs.facts) == len(names)  # the first message always reports
    assert all(math.isfinite(float(f.value)) for f in obs.facts)


encodings = st.sampled_from(["mono8", "8UC1", "bgr8", "rgb8", "rgba8", "mono16", "16UC1", "yuv422", "", "jpeg"])


@st.composite
def images(draw) -> Image:
    h, w = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    enc = draw(encodings)
    step = draw(st.integers(0, 60))
    size = draw(st.sampled_from([step * h, step * h + 1, max(0, step * h - 1), draw(st.integers(0, 800))]))
    return Image(height=h, width=w, encoding=enc, step=step, is_bigendian=draw(st.integers(0, 1)),
                 data=bytes(draw(st.binary(min_size=size, max_size=size))))


@FAST
@given(images())
def test_image_decoding_contract(msg):
    try:
        gray = image_to_gray(msg)
    except Rejected:
        return
    assert gray.shape == (msg.height, msg.width) and gray.dtype.name == "uint8"
    assert msg.step * msg.height == len(msg.data)
    obs = SceneChangeSerializer("cam", 0.08)(msg, 3)
    assert obs is not None and obs.text.startswith("scene brightness")
    if aruco_available():
        markers = MarkerSerializer("cam", "DICT_4X4_50", 4.0)(msg, 3)
        assert markers is not None and markers.text  # first message: markers or "no markers visible"


@FAST
@given(st.lists(any_float, min_size=7, max_size=7), st.text(max_size=20))
def test_pose_serializer_contract(v, frame):
    msg = PoseStamped()
    msg.header.frame_id = frame
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z, q.x, q.y, q.z, q.w = v
    try:
        obs = PoseSerializer("base", 2, 0.01, 0.01)(msg, 9)
    except Rejected:
        return
    assert all(math.isfinite(x) for x in v) and abs(math.sqrt(sum(x * x for x in v[3:])) - 1) <= 0.01
    assert obs is not None and len(obs.facts) == 2


REGISTRY = ActionRegistry.load(resolve_config_file("", "actions.yaml"), 10, 0.1)


@FAST
@given(st.one_of(st.lists(any_float, max_size=40), st.lists(st.floats(-1e3, 1e3), min_size=10 * len(REGISTRY.dims),
                                                             max_size=10 * len(REGISTRY.dims))))
def test_clamp_is_within_limits_or_refused(values):
    reg = REGISTRY
    try:
        out = reg.clamp(values)
    except ValueError:
        assert len(values) != reg.chunk_size or not all(math.isfinite(v) for v in values)
        return
    d = len(reg.dims)
    assert all(reg.dims[i % d].min <= x <= reg.dims[i % d].max for i, x in enumerate(out))


# ------------------------------------------------------------------------------ the input gate
joint_msgs = st.builds(lambda n, p: JointState(name=n, position=p), st.lists(st.sampled_from(["a", "b", ""]), max_size=3),
                       st.lists(any_float, max_size=3))
junk = st.sampled_from([None, 42, "text", object(), String(data="not joints")])


@FAST
@given(st.lists(st.tuples(st.one_of(joint_msgs, junk), st.integers(0, 3 * NS)), max_size=60),
       st.floats(0.0, 0.5), st.floats(0.5, 5.0))
def test_input_gate_never_raises_and_accounts_for_every_message(stream, min_period_s, throttle_s):
    submitted, warnings = [], []
    spec = InputSpec("joints", "/joint_states", "sensor_msgs/msg/JointState", "joint_state", min_period_s,
                     options={"decimals": 2, "min_change": 0.01})
    gate = InputGate(spec, lambda *a: submitted.append(a), warnings.append, log_throttle_s=throttle_s)
    now = 0
    for msg, dt in stream:
        now += dt
        assert gate.offer(msg, now) in ("accepted", "throttled", "unchanged", "rejected")
    c = gate.counters
    assert c.received == len(stream) == c.accepted + c.throttled + c.unchanged + c.rejected
    assert len(submitted) == c.accepted
    assert len(warnings) <= min(c.rejected, now / (throttle_s * NS) + 1)  # throttled log
