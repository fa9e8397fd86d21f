"""The ROS interface of the csr graph as data, and the README's interface reference generated
from it (``python -m csr_ros.nodes.interface`` prints the block; a test keeps README.md equal to
it and checks every name against a running graph's introspection)."""

from __future__ import annotations

from csr_ros.core.config import param_table

NODES = ("csr", "csr_actions", "csr_reconciler")
TOPICS = (  # direction, name, type, what
    ("in", "each `inputs.<name>.topic`", "its `inputs.<name>.type`", "perception (String, JointState, PoseStamped, Image, ArUco, ...); sensor data QoS, reliable for String"),
    ("in", "csr/ask", "csr_ros/msg/Utterance", "a question with a `request_id` (rosbag-recordable questions; answers on csr/language)"),
    ("in", "csr/instruction", "std_msgs/msg/String", "the task the policy acts on"),
    ("out", "csr/action_chunk", "csr_ros/msg/ActionChunk", "at `control.control_rate_hz` while active (the hold chunk, `is_hold`, in every period without a valid chunk); the hold chunk once at deactivation"),
    ("out", "csr/joint_trajectory", "trajectory_msgs/msg/JointTrajectory", "the same chunks (`ros.publish_joint_trajectory`)"),
    ("out", "csr/language", "csr_ros/msg/Utterance", "answers to csr/ask: partials, then one final"),
    ("out", "csr/increments", "csr_ros/msg/StateIncrement", "one per accepted perception message (also while inactive)"),
    ("out", "csr/status", "csr_ros/msg/CacheStatus", "at `ros.status_rate_hz` while configured (transient local)"),
    ("out", "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "the same figures for diagnostic tools"),
)
ACTIONS = (("csr/ask", "csr_ros/action/Ask", "question -> streamed answer (feedback: the text so far every "
            "`language.tokens_per_frame` tokens; result: answer, ttft_ms, total_ms, state_version, state_tokens, "
            "stop_reason, candidate_scores); cancel ends it within one frame; beyond "
            "`language.max_open_requests` open answers a goal is rejected"),)
SERVICES = (
    ("csr/get_entity_memory", "csr_ros/srv/GetEntityMemory", "entity memory: all keys or one entity's (first/newest value, times, count)"),
    ("csr/compact", "csr_ros/srv/CompactState", "compact the cached state now"),
    ("csr/reset_state", "csr_ros/srv/ResetState", "a new empty state; the old on-disk ledger is kept under a new name"),
    ("csr/get_state_text", "csr_ros/srv/GetStateText", "the text the model sees (bounded by max_chars)"),
)
LIFECYCLE_SERVICES = (
    ("csr/change_state", "lifecycle_msgs/srv/ChangeState"),
    ("csr/get_state", "lifecycle_msgs/srv/GetState"),
    ("csr/get_available_states", "lifecycle_msgs/srv/GetAvailableStates"),
    ("csr/get_available_transitions", "lifecycle_msgs/srv/GetAvailableTransitions"),
    ("csr/get_transition_graph", "lifecycle_msgs/srv/GetAvailableTransitions"),
)


def _range(spec) -> str:
    v = spec.validation
    if "bounds<>" in v:
        return f"[{v['bounds<>'][0]}, {v['bounds<>'][1]}]"
    if "one_of<>" in v:
        return " \\| ".join(f"`{c}`" for c in v["one_of<>"][0])
    return "not empty" if "not_empty<>" in v else ""


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def parameter_rows() -> list[str]:
    rows = ["| parameter | type | default | range | run time | description |", "|---|---|---|---|---|---|"]
    for s in param_table():
        default = s.default if s.default != "" else '""'
        rows.append(f"| `{s.key}` | {s.type} | `{_cell(default)}` | {_range(s)} | "
                    f"{'read-only' if s.read_only else 'settable'} | {_cell(s.description)} |")
    return rows


def reference_markdown() -> str:
    """The README's interface reference (between the interface-reference markers)."""
    out = ["Nodes (one process): `csr` (inference; a lifecycle node), `csr_actions` (action clock) and "
           "`csr_reconciler`; names are relative, so a namespace applies.", "",
           "| direction | topic | type | what |", "|---|---|---|---|"]
    out += [f"| {d} | `{n}` | `{t}` | {w} |" if not n.startswith("each") else f"| {d} | {n} | {t} | {w} |"
            for d, n, t, w in TOPICS]
    out += ["", "| action | type | what |", "|---|---|---|"]
    out += [f"| `{n}` | `{t}` | {w} |" for n, t, w in ACTIONS]
    out += ["", "| service | type | what |", "|---|---|---|"]
    out += [f"| `{n}` | `{t}` | {w} |" for n, t, w in SERVICES]
    out += [f"| `{n}` | `{t}` | lifecycle (`ros2 lifecycle set /csr configure`, ...) |" for n, t in LIFECYCLE_SERVICES]
    out += ["", "Parameters of `csr` (the one table, `csr_ros/core/parameters.yaml`; units in the names and "
            "descriptions; `settable` ones change at run time with `ros2 param set`, `read-only` ones are "
            "read at configure), plus the perception inputs `inputs.names` and `inputs.<name>.{topic,type,"
            "serializer,qos,min_period_s,...}`:", ""]
    return "\n".join(out + parameter_rows())


if __name__ == "__main__":
    print(reference_markdown())
