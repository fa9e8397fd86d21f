"""Perception messages -> observation text + facts (one increment each), validated at the boundary.

A serializer is called with a message and its stamp (ns) and returns an :class:`Observation`, or
None when the message carries no meaningful change (not an error: nothing is appended), or raises
:class:`Rejected` (malformed: counted and logged by the ingest). Messages are read by attribute
only, so tests build them without ``rclpy.init``. Raw pixels never become text: images are
reduced to ArUco marker ids + image positions (OpenCV) or to a cheap scene-change descriptor.

Each serializer declares its own per-input parameters (``inputs.<name>.<field>``) in
:data:`SERIALIZERS`; :mod:`csr_ros.nodes.parameters` declares them as ROS parameters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from csr_ros.core.config import ConfigError
from csr_ros.core.state.ledger import Fact


class Rejected(ValueError):
    """A malformed message (the message says what is wrong with it)."""


@dataclass(frozen=True)
class Observation:
    """What one accepted message contributes: increment text and structured facts."""

    text: str
    facts: tuple[Fact, ...] = ()


def _finite(values, what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise Rejected(f"{what} contains NaN or inf")


# ------------------------------------------------------------------------------------ String
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # control characters other than tab, LF, CR
RAW_CHARS_PER_CHAR = 8
"""A raw String longer than this many times ``max_chars`` is rejected unread (whitespace collapses,
so the limit on the normalised text is checked after that, exactly)."""


class StringSerializer:
    """std_msgs/String observations. Configured regex patterns with named groups ``entity`` and
    ``value`` (optional ``attribute``) turn matches into facts; several patterns per input."""

    def __init__(self, name: str, patterns: list[str], attribute: str, max_chars: int):
        self.name, self.attribute, self.max_chars = name, attribute, max_chars
        self.patterns = []
        for i, pat in enumerate(patterns):
            try:
                rx = re.compile(pat)
            except re.error as e:
                raise ConfigError(f"parameter inputs.{name}.patterns[{i}]: invalid regex: {e}") from None
            if not {"entity", "value"} <= set(rx.groupindex):
                raise ConfigError(f"parameter inputs.{name}.patterns[{i}]: needs named groups "
                                  f"(?P<entity>...) and (?P<value>...)")
            self.patterns.append(rx)

    def __call__(self, msg: Any, stamp_ns: int) -> Observation:
        raw = msg.data
        if not isinstance(raw, str):
            raise Rejected("text is not a string")
        if len(raw) > RAW_CHARS_PER_CHAR * self.max_chars:  # before any per-character work: a
            raise Rejected(f"text of {len(raw)} characters (limit {self.max_chars})")  # megabyte costs nothing
        if _CONTROL.search(raw):
            raise Rejected("text has control characters")
        text = " ".join(raw.split())
        if not text:
            raise Rejected("empty text")
        if len(text) > self.max_chars:
            raise Rejected(f"text of {len(text)} characters (limit {self.max_chars})")
        facts = []
        for rx in self.patterns:
            for m in rx.finditer(text):
                groups = m.groupdict()
                entity, value = (groups["entity"] or "").strip(), (groups["value"] or "").strip()
                if entity and value:
                    attribute = (groups.get("attribute") or self.attribute).strip()
                    facts.append(Fact(entity, attribute, value, stamp_ns))
        return Observation(text, tuple(facts))


# -------------------------------------------------------------------------------- JointState
class JointStateSerializer:
    """sensor_msgs/JointState -> ``name=position`` pairs, rounded; only on a meaningful change
    (some joint moved by at least ``min_change``, or a joint appeared)."""

    def __init__(self, name: str, decimals: int, min_change: float):
        self.name, self.decimals, self.min_change = name, decimals, min_change
        self._last: dict[str, float] = {}

    def __call__(self, msg: Any, stamp_ns: int) -> Observation | None:
        names, pos = list(msg.name), [float(p) for p in msg.position]
        if not names:
            raise Rejected("no joint names")
        if len(pos) != len(names):
            raise Rejected(f"{len(names)} names but {len(pos)} positions")
        for field in ("velocity", "effort"):
            n = len(getattr(msg, field))
            if n not in (0, len(names)):
                raise Rejected(f"{len(names)} names but {n} {field} values")
        if len(set(names)) != len(names) or not all(names):
            raise Rejected("empty or duplicate joint names")
        _finite(pos, "position")
        _finite(msg.velocity, "velocity")
        _finite(msg.effort, "effort")
        current = {n: round(p, self.decimals) for n, p in zip(names, pos)}
        if not self._changed(current):
            return None
        self._last.update(current)
        text = " ".join(f"{n}={p:.{self.decimals}f}" for n, p in current.items())
        facts = tuple(Fact(n, "position", f"{p:.{self.decimals}f}", stamp_ns) for n, p in current.items())
        return Observation(text, facts)

    def _changed(self, current: Mapping[str, float]) -> bool:
        # 1e-9: float noise of the rounded values must not hide an exact min_change step
        return any(n not in self._last or 0 < abs(p - self._last[n]) >= self.min_change - 1e-9
                   for n, p in current.items())


# ------------------------------------------------------------------------------------- Image
_ENCODINGS = {"mono8": (1, np.uint8), "8UC1": (1, np.uint8), "bgr8": (3, np.uint8),
              "rgb8": (3, np.uint8), "bgra8": (4, np.uint8), "rgba8": (4, np.uint8),
              "mono16": (1, np.uint16), "16UC1": (1, np.uint16)}
MAX_IMAGE_SIDE = 16384


def image_to_gray(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> 2-D uint8 array (H, W); raises Rejected on a wrong encoding/step/size."""
    if msg.encoding not in _ENCODINGS:
        raise Rejected(f"unsupported encoding {msg.encoding!r} (supported: {sorted(_ENCODINGS)})")
    channels, dtype = _ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if not (0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE):
        raise Rejected(f"image size {w}x{h}")
    row_bytes = w * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise Rejected(f"step {step} < width*pixel size {row_bytes}")
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if buf.size != step * h:
        raise Rejected(f"data has {buf.size} bytes, step*height is {step * h}")
    rows = buf.reshape(h, step)[:, :row_bytes]
    px = rows.copy().view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    px = px.reshape(h, w, channels)
    if dtype is np.uint16:
        px = (px >> 8).astype(np.uint8)
    if channels == 1:
        return px[:, :, 0]
    weights = (0.299, 0.587, 0.114) if msg.encoding.startswith("rgb") else (0.114, 0.587, 0.299)
    return (px[:, :, :3].astype(np.float32) @ np.asarray(weights, np.float32)).astype(np.uint8)


def aruco_available() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "aruco") and hasattr(cv2.aruco, "ArucoDetector")


class MarkerSerializer:
    """sensor_msgs/Image -> ArUco marker ids and image positions (pixel centres), on change."""

    def __init__(self, name: str, dictionary: str, min_move_px: float):
        import cv2

        if not hasattr(cv2.aruco, dictionary):
            raise ConfigError(f"parameter inputs.{name}.aruco_dictionary: unknown dictionary {dictionary!r}")
        dic = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, dictionary))
        self._detector = cv2.aruco.ArucoDetector(dic, cv2.aruco.DetectorParameters())
        self.name, self.min_move_px = name, min_move_px
        self._last: dict[int, tuple[float, float]] | None = None

    def detect(self, gray: np.ndarray) -> dict[int, tuple[float, float]]:
        """{marker id: (x, y) centre in pixels}."""
        corners, ids, _ = self._detector.detectMarkers(gray)
        if ids is None:
            return {}
        return {int(i): tuple(float(v) for v in c.reshape(-1, 2).mean(axis=0)) for i, c in zip(ids.ravel(), corners)}

    def __call__(self, msg: Any, stamp_ns: int) -> Observation | None:
        markers = self.detect(image_to_gray(msg))
        last = self._last
        if last is not None and set(last) == set(markers) and all(
                math.dist(markers[i], last[i]) < self.min_move_px for i in markers):
            return None
        self._last = markers
        if not markers:
            return Observation("no markers visible")
        items = sorted(markers.items())
        text = "markers " + ", ".join(f"{i} at ({x:.0f}, {y:.0f}) px" for i, (x, y) in items)
        facts = tuple(Fact(f"marker {i}", "image_position", f"{x:.0f},{y:.0f}", stamp_ns) for i, (x, y) in items)
        return Observation(text, facts)


class SceneChangeSerializer:
    """sensor_msgs/Image -> a cheap descriptor (16x12 grey thumbnail); an increment only when the
    mean absolute difference to the last reported thumbnail reaches ``threshold`` (0..1)."""

    SIZE = (16, 12)

    def __init__(self, name: str, threshold: float):
        self.name, self.threshold = name, threshold
        self._last: np.ndarray | None = None

    def descriptor(self, gray: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.resize(gray, self.SIZE, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0

    def __call__(self, msg: Any, stamp_ns: int) -> Observation | None:
        desc = self.descriptor(image_to_gray(msg))
        brightness = float(desc.mean())
        if self._last is None:
            self._last = desc
            return Observation(f"scene brightness {brightness:.2f}",
                               (Fact(self.name, "brightness", f"{brightness:.2f}", stamp_ns),))
        change = float(np.abs(desc - self._last).mean())
        if change < self.threshold:
            return None
        self._last = desc
        return Observation(f"scene changed by {change:.2f}, brightness {brightness:.2f}",
                           (Fact(self.name, "brightness", f"{brightness:.2f}", stamp_ns),
                            Fact(self.name, "scene_change", f"{change:.2f}", stamp_ns)))


def make_image_serializer(name: str, mode: str, aruco_dictionary: str, min_move_px: float,
                          scene_threshold: float) -> Callable:
    """``mode`` auto: ArUco markers when cv2.aruco is available, else the scene descriptor."""
    if mode == "aruco" or (mode == "auto" and aruco_available()):
        if not aruco_available():
            raise ConfigError(f"parameter inputs.{name}.mode: aruco needs OpenCV with cv2.aruco")
        return MarkerSerializer(name, aruco_dictionary, min_move_px)
    return SceneChangeSerializer(name, scene_threshold)


# --------------------------------------------------------------------------------- PoseStamped
def _yaw(q: Any) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


class PoseSerializer:
    """geometry_msgs/PoseStamped -> position and yaw in the header's frame, on a meaningful change."""

    def __init__(self, name: str, decimals: int, min_change_m: float, min_change_rad: float):
        self.name, self.decimals = name, decimals
        self.min_change_m, self.min_change_rad = min_change_m, min_change_rad
        self._last: tuple[str, tuple[float, float, float], float] | None = None

    def __call__(self, msg: Any, stamp_ns: int) -> Observation | None:
        p, q = msg.pose.position, msg.pose.orientation
        xyz, quat = (p.x, p.y, p.z), (q.x, q.y, q.z, q.w)
        _finite(xyz + quat, "pose")
        norm = math.sqrt(sum(v * v for v in quat))
        if abs(norm - 1.0) > 0.01:
            raise Rejected(f"orientation is not a unit quaternion (norm {norm:.3f})")
        frame, yaw = msg.header.frame_id, _yaw(q)
        if self._last is not None:
            lframe, lxyz, lyaw = self._last
            dyaw = abs(math.remainder(yaw - lyaw, math.tau))
            if lframe == frame and math.dist(xyz, lxyz) < self.min_change_m and dyaw < self.min_change_rad:
                return None
        self._last = (frame, xyz, yaw)
        d = self.decimals
        where = " ".join(f"{v:.{d}f}" for v in xyz)
        text = f"x={xyz[0]:.{d}f} y={xyz[1]:.{d}f} z={xyz[2]:.{d}f} m yaw={yaw:.{d}f} rad in {frame or 'unknown frame'}"
        facts = (Fact(self.name, "position", f"{where} in {frame}", stamp_ns),
                 Fact(self.name, "yaw", f"{yaw:.{d}f}", stamp_ns))
        return Observation(text, facts)


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Field:
    """A per-input parameter ``inputs.<name>.<field>`` (the parameter table's row shape)."""

    name: str
    type: str
    default: Any
    description: str
    validation: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SerializerKind:
    """A serializer: the message type it reads, its factory and its own parameters."""

    msg_type: str
    factory: Callable[..., Callable]
    fields: tuple[Field, ...]


_DECIMALS = Field("decimals", "int", 2, "Decimals the values are rounded to in the text.", {"bounds<>": [0, 6]})
SERIALIZERS: dict[str, SerializerKind] = {
    "string": SerializerKind("std_msgs/msg/String", StringSerializer, (
        Field("patterns", "string_array", [], "Regexes with named groups entity and value (optional "
              "attribute); every match becomes a fact."),
        Field("attribute", "string", "state", "Fact attribute when a pattern has no attribute group."),
        Field("max_chars", "int", 512, "Longer texts are rejected, characters.", {"bounds<>": [1, 100000]}),
    )),
    "joint_state": SerializerKind("sensor_msgs/msg/JointState", JointStateSerializer, (
        _DECIMALS,
        Field("min_change", "double", 0.01, "Smallest joint move that makes an increment, rad "
              "(m for prismatic joints).", {"bounds<>": [0.0, 100.0]}),
    )),
    "image": SerializerKind("sensor_msgs/msg/Image", make_image_serializer, (
        Field("mode", "string", "auto", "aruco (marker ids + pixel positions), scene (scene-change "
              "descriptor) or auto (aruco when OpenCV has cv2.aruco).", {"one_of<>": [["auto", "aruco", "scene"]]}),
        Field("aruco_dictionary", "string", "DICT_4X4_50", "OpenCV predefined ArUco dictionary."),
        Field("min_move_px", "double", 4.0, "Smallest marker move that makes an increment, pixels.",
              {"bounds<>": [0.0, 10000.0]}),
        Field("scene_threshold", "double", 0.08, "Mean absolute thumbnail difference (0..1) that "
              "makes a scene-change increment.", {"bounds<>": [0.0, 1.0]}),
    )),
    "pose": SerializerKind("geometry_msgs/msg/PoseStamped", PoseSerializer, (
        _DECIMALS,
        Field("min_change_m", "double", 0.02, "Smallest translation that makes an increment, m.",
              {"bounds<>": [0.0, 1000.0]}),
        Field("min_change_rad", "double", 0.05, "Smallest yaw change that makes an increment, rad.",
              {"bounds<>": [0.0, 7.0]}),
    )),
}
DEFAULT_SERIALIZER = {kind.msg_type: key for key, kind in SERIALIZERS.items()}


def build_serializer(input_name: str, serializer: str, options: Mapping[str, Any]) -> Callable:
    """The configured serializer of one input (options: its fields, already validated)."""
    kind = SERIALIZERS[serializer]
    return kind.factory(input_name, **{f.name: options[f.name] for f in kind.fields})
