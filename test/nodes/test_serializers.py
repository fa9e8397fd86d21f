"""Serializers: perception messages -> text + facts; malformed input rejected (no rclpy.init)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from csr_ros.core.config import ConfigError
from csr_ros.nodes.ingest import InputGate
from csr_ros.nodes.parameters import InputSpec
from csr_ros.nodes.serializers import (JointStateSerializer, MarkerSerializer, PoseSerializer,
                                       Rejected, SceneChangeSerializer, StringSerializer,
                                       aruco_available, image_to_gray, make_image_serializer)

pytestmark = pytest.mark.nodes

ROOM = r"(?P<entity>[a-z ]+?) (?:is )?in the (?P<value>kitchen|hall|office)"


def _string(text: str) -> String:
    return String(data=text)


# ---------------------------------------------------------------- String
def test_string_patterns_make_facts_with_named_groups():
    ser = StringSerializer("obs", [ROOM, r"(?P<entity>door) (?P<attribute>state) (?P<value>open|closed)"],
                           attribute="location", max_chars=200)
    obs = ser(_string("  red mug is in the kitchen;\n  door state open "), 7)
    assert obs.text == "red mug is in the kitchen; door state open"
    assert [(f.entity, f.attribute, f.value, f.stamp_ns) for f in obs.facts] == [
        ("red mug", "location", "kitchen", 7), ("door", "state", "open", 7)]


def test_string_without_patterns_has_no_facts():
    assert StringSerializer("obs", [], "state", 100)(_string("hello"), 1).facts == ()


@pytest.mark.parametrize("text", ["", "   \n ", "x" * 101, "bad\x00byte"])
def test_string_rejects_empty_long_or_binary(text):
    with pytest.raises(Rejected):
        StringSerializer("obs", [], "state", 100)(_string(text), 1)


def test_string_limit_is_on_the_collapsed_text_and_a_huge_raw_string_is_refused_unread():
    ser = StringSerializer("obs", [], "state", 100)
    assert ser(_string("a" + " " * 500 + "b\tc\r\n"), 1).text == "a b c"  # whitespace collapses first
    with pytest.raises(Rejected, match="1100000 characters"):
        ser(_string("x \x00" * 275_000 + "y" * 275_000), 1)  # long before the control character scan


@pytest.mark.parametrize("pattern", ["(unclosed", r"(?P<entity>\w+) only"])
def test_bad_pattern_is_a_config_error_naming_the_parameter(pattern):
    with pytest.raises(ConfigError, match=r"inputs\.obs\.patterns\[1\]"):
        StringSerializer("obs", [ROOM, pattern], "state", 100)


# ---------------------------------------------------------------- JointState
def _joints(names, pos, vel=(), eff=()) -> JointState:
    return JointState(name=list(names), position=list(pos), velocity=list(vel), effort=list(eff))


def test_joint_state_named_rounded_and_only_on_meaningful_change():
    ser = JointStateSerializer("joints", decimals=2, min_change=0.05)
    first = ser(_joints(["elbow", "wrist"], [1.23456, -0.5]), 10)
    assert first.text == "elbow=1.23 wrist=-0.50"
    assert [(f.entity, f.attribute, f.value) for f in first.facts] == [
        ("elbow", "position", "1.23"), ("wrist", "position", "-0.50")]
    assert ser(_joints(["elbow", "wrist"], [1.25, -0.52]), 11) is None      # below min_change
    assert ser(_joints(["elbow", "wrist"], [1.28, -0.52]), 12).text == "elbow=1.28 wrist=-0.52"
    assert ser(_joints(["gripper"], [0.0]), 13).text == "gripper=0.00"       # a new joint


@pytest.mark.parametrize("msg", [
    _joints([], []),
    _joints(["a", "b"], [0.1]),
    _joints(["a"], [float("nan")]),
    _joints(["a"], [float("inf")]),
    _joints(["a"], [0.1], vel=[1.0, 2.0]),
    _joints(["a"], [0.1], eff=[float("nan")]),
    _joints(["a", "a"], [0.1, 0.2]),
])
def test_joint_state_rejects_malformed(msg):
    with pytest.raises(Rejected):
        JointStateSerializer("joints", 2, 0.01)(msg, 1)


# ---------------------------------------------------------------- Image
def _image(arr: np.ndarray, encoding: str = "mono8", step: int | None = None) -> Image:
    h, w = arr.shape[:2]
    data = arr.tobytes()
    return Image(height=h, width=w, encoding=encoding, step=step or len(data) // h, data=data)


def _marker_scene(marker_id: int, x0: int, y0: int) -> np.ndarray:
    import cv2

    dic = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
    img = np.full((240, 320), 255, np.uint8)
    img[y0:y0 + 80, x0:x0 + 80] = cv2.aruco.generateImageMarker(dic, marker_id, 80)
    return img


@pytest.mark.skipif(not aruco_available(), reason="OpenCV without cv2.aruco")
def test_aruco_markers_become_ids_and_image_positions():
    ser = MarkerSerializer("cam", "DICT_4X4_50", min_move_px=4.0)
    obs = ser(_image(_marker_scene(7, 100, 60)), 5)
    assert obs.text == "markers 7 at (140, 100) px"
    assert [(f.entity, f.attribute, f.value) for f in obs.facts] == [("marker 7", "image_position", "140,100")]
    assert ser(_image(_marker_scene(7, 101, 60)), 6) is None                 # moved < 4 px
    rgb = np.repeat(_marker_scene(3, 20, 20)[:, :, None], 3, axis=2)
    assert ser(_image(rgb, "rgb8"), 7).text == "markers 3 at (60, 60) px"
    assert ser(_image(np.full((240, 320), 255, np.uint8)), 8).text == "no markers visible"


def test_scene_change_descriptor_reports_only_changes():
    ser = SceneChangeSerializer("cam", threshold=0.1)
    dark = np.zeros((48, 64), np.uint8)
    assert ser(_image(dark), 1).text == "scene brightness 0.00"
    assert ser(_image(dark + 5), 2) is None
    changed = ser(_image(np.full((48, 64), 200, np.uint8)), 3)
    assert changed.text.startswith("scene changed by 0.7") and changed.facts[1].attribute == "scene_change"


def test_image_mode_scene_is_used_when_asked():
    assert isinstance(make_image_serializer("cam", "scene", "DICT_4X4_50", 4.0, 0.1), SceneChangeSerializer)
    with pytest.raises(ConfigError, match="inputs.cam.aruco_dictionary"):
        make_image_serializer("cam", "aruco", "DICT_NOPE", 4.0, 0.1)


def test_image_row_padding_and_16_bit_are_read():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = np.zeros((3, 8), np.uint8)
    padded[:, :4] = arr
    msg = Image(height=3, width=4, encoding="mono8", step=8, data=padded.tobytes())
    assert (image_to_gray(msg) == arr).all()
    wide = (np.arange(6, dtype=np.uint16) * 256).reshape(2, 3)
    assert image_to_gray(_image(wide.astype("<u2"), "mono16")).tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("msg", [
    Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)),      # unsupported encoding
    Image(height=2, width=2, encoding="mono8", step=1, data=bytes(2)),       # step < width
    Image(height=2, width=2, encoding="mono8", step=2, data=bytes(3)),       # size != step*height
    Image(height=0, width=2, encoding="mono8", step=2, data=b""),            # empty
    Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(4)),        # too short for rgb
])
def test_image_rejects_wrong_encoding_step_or_size(msg):
    with pytest.raises(Rejected):
        image_to_gray(msg)


# ---------------------------------------------------------------- PoseStamped
def _pose(x, y, yaw, frame="map", qnorm=1.0) -> PoseStamped:
    p = PoseStamped()
    p.header.frame_id = frame
    p.pose.position.x, p.pose.position.y = float(x), float(y)
    p.pose.orientation.z, p.pose.orientation.w = qnorm * math.sin(yaw / 2), qnorm * math.cos(yaw / 2)
    return p


def test_pose_frame_facts_and_meaningful_change():
    ser = PoseSerializer("base", decimals=2, min_change_m=0.05, min_change_rad=0.1)
    obs = ser(_pose(1.0, 2.0, math.pi / 2), 3)
    assert obs.text == "x=1.00 y=2.00 z=0.00 m yaw=1.57 rad in map"
    assert [(f.entity, f.attribute, f.value) for f in obs.facts] == [
        ("base", "position", "1.00 2.00 0.00 in map"), ("base", "yaw", "1.57")]
    assert ser(_pose(1.01, 2.0, math.pi / 2 + 0.01), 4) is None
    assert ser(_pose(1.01, 2.0, math.pi / 2 + 0.2), 5) is not None            # turned
    assert ser(_pose(1.01, 2.0, math.pi / 2 + 0.2, frame="odom"), 6) is not None


@pytest.mark.parametrize("msg", [_pose(float("nan"), 0, 0), _pose(0, 0, 0, qnorm=0.0), _pose(0, 0, 0, qnorm=2.0)])
def test_pose_rejects_nan_and_non_unit_quaternions(msg):
    with pytest.raises(Rejected):
        PoseSerializer("base", 2, 0.01, 0.01)(msg, 1)


# ---------------------------------------------------------------- InputGate
def test_input_gate_throttles_counts_and_rate_limits_its_log():
    submitted, warnings = [], []
    spec = InputSpec("joints", "/joint_states", "sensor_msgs/msg/JointState", "joint_state", 0.5,
                     options={"decimals": 2, "min_change": 0.0})
    gate = InputGate(spec, lambda *a: submitted.append(a), warnings.append, log_throttle_s=10.0)
    s = 1_000_000_000
    assert gate.offer(_joints(["a"], [0.1]), 1 * s) == "accepted"
    assert gate.offer(_joints(["a"], [0.2]), int(1.2 * s)) == "throttled"
    assert gate.offer(_joints(["a"], [0.1]), 2 * s) == "unchanged"
    assert gate.offer(_joints(["a"], [0.2]), 3 * s) == "accepted"
    for k in range(3):
        assert gate.offer(_joints(["a", "b"], [0.1]), (4 + k) * s) == "rejected"
    assert gate.offer(object(), 20 * s) == "rejected"                        # not even a JointState
    c = gate.counters
    assert (c.received, c.accepted, c.throttled, c.unchanged, c.rejected) == (8, 2, 1, 1, 4)
    assert [a[:3] for a in submitted] == [("/joint_states", 1 * s, "a=0.10"), ("/joint_states", 3 * s, "a=0.20")]
    assert len(warnings) == 2 and "2 more since the last report" in warnings[1]
    assert "AttributeError" in warnings[1]
