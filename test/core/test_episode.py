"""Episode format: QA JSON Lines, rosbag2 read/write, inputs from params files, the generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csr_ros.core.config import ConfigError, load_params_file
from csr_ros.cli.eval.episode import (EpisodeError, dump_qa, load_qa, parse_qa_item, read_bag,
                                  resolve_episode, typestore, write_bag)
from csr_ros.cli.eval.inputs import Perception, parse_inputs, split_params
from csr_ros.cli.eval.questions import KINDS
from csr_ros.cli.eval.wordings import HELDOUT
from csr_ros.cli.make_episode import CAMERA, ROOMS, make_episode
from csr_ros.core.state.question import NEVER_SEEN

pytestmark = pytest.mark.core
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "episodes" / "household_small"
Q = {"id": "q1", "t": 3.5, "question": "Where is the cup?", "answers": ["kitchen"], "rejects": ["garage"]}


def _write(tmp_path, rows):
    p = tmp_path / "qa.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


def test_qa_load_keeps_extra_keys_and_sorts_by_time(tmp_path):
    rows = [dict(Q, id="b", t=9, kind="now", evidence=[1.5], lead_in="The cup is in the"), dict(Q, id="a", t=2)]
    items = load_qa(_write(tmp_path, rows + [""]))
    assert [q.id for q in items] == ["a", "b"]
    b = items[1]
    assert b.kind == "now" and b.extra == {"kind": "now"} and b.evidence_s == (1.5,)
    assert b.lead_in == "The cup is in the" and b.candidates == ("kitchen", "garage")
    assert b.correct_choice(0) and not b.correct_choice(1)
    dump_qa(items, tmp_path / "out.jsonl")
    assert load_qa(tmp_path / "out.jsonl") == items


@pytest.mark.parametrize("bad,msg", [
    (dict(Q, t=-1), "'t'"), (dict(Q, t="3"), "'t'"), ({k: v for k, v in Q.items() if k != "question"}, "'question'"),
    (dict(Q, answers=[]), "'answers'"), (dict(Q, answers="kitchen"), "'answers'"),
    (dict(Q, rejects=["Kitchen"]), "both accepted and rejected"), (dict(Q, evidence="1"), "'evidence'"),
    (dict(Q, lead_in=3), "'lead_in'"), ("not json", "not JSON"), ([1, 2], "JSON object"),
])
def test_qa_errors_name_the_line(tmp_path, bad, msg):
    p = _write(tmp_path, [Q, bad])
    with pytest.raises(EpisodeError, match=msg) as e:
        load_qa(p)
    assert ":2:" in str(e.value)


def test_qa_duplicate_ids_and_empty(tmp_path):
    with pytest.raises(EpisodeError, match="duplicate id"):
        load_qa(_write(tmp_path, [Q, Q]))
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(EpisodeError, match="no questions"):
        load_qa(tmp_path / "e.jsonl")


def test_free_form_correctness():
    q = parse_qa_item(dict(Q, rejects=["garage", "living room"]), "x")
    assert q.correct_text("It is in the Kitchen.")
    assert not q.correct_text("the kitchen or the garage")
    assert not q.correct_text("no idea")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_roundtrip(tmp_path, storage):
    import numpy as np

    ts = typestore()
    String, JS = ts.types["std_msgs/msg/String"], ts.types["sensor_msgs/msg/JointState"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    t0 = 10**18
    js = JS(header=Header(stamp=Time(sec=1, nanosec=0), frame_id=""), name=["a"], position=np.array([0.5]),
            velocity=np.zeros(0), effort=np.zeros(0))
    recs = [(t0, "/obs", "std_msgs/msg/String", String(data="hello")),
            (t0 + 500_000_000, "/joint_states", "sensor_msgs/msg/JointState", js),
            (t0 + 2 * 10**9, "/obs", "std_msgs/msg/String", String(data="bye"))]
    assert write_bag(tmp_path / "bag", recs, storage) == 3
    msgs = read_bag(tmp_path / "bag")
    assert [(m.t_s, m.topic) for m in msgs] == [(0.0, "/obs"), (0.5, "/joint_states"), (2.0, "/obs")]
    assert msgs[0].msg.data == "hello" and list(msgs[1].msg.position) == [0.5] and msgs[0].raw
    assert [m.msg.data for m in read_bag(tmp_path / "bag", topics=["/obs"])] == ["hello", "bye"]
    with pytest.raises(EpisodeError):
        read_bag(tmp_path / "missing")


def _inputs(patterns, **extra):
    flat = {"inputs.names": ["obs"], "inputs.obs.topic": "/obs", "inputs.obs.type": "std_msgs/msg/String",
            "inputs.obs.patterns": patterns, "budget.budget_tokens": 1024}
    flat.update(extra)
    core, inputs = split_params(flat)
    assert core == {"budget.budget_tokens": 1024}
    return parse_inputs(inputs)


def test_inputs_from_params_serialize_with_patterns_and_throttle():
    ts = typestore()
    S = ts.types["std_msgs/msg/String"]
    per = Perception(_inputs([r"saw (?P<entity>\w+) in (?P<value>\w+)"], **{"inputs.obs.min_period_s": 1.0}))
    o = per("/obs", "std_msgs/msg/String", S(data="saw cup in kitchen"), 0)
    assert o.text == "saw cup in kitchen" and [(f.entity, f.value) for f in o.facts] == [("cup", "kitchen")]
    assert per("/obs", "std_msgs/msg/String", S(data="x"), 500_000_000) is None  # throttled
    assert per("/obs", "std_msgs/msg/String", S(data="no pattern here"), 2 * 10**9).facts == ()
    assert per("/other", "std_msgs/msg/String", S(data="x"), 3 * 10**9) is None and per.ignored == 1
    assert per("/obs", "std_msgs/msg/String", S(data=""), 9 * 10**9) is None  # rejected, counted
    c = per.counts["/obs"]
    assert (c.accepted, c.throttled, c.rejected) == (2, 1, 1)


@pytest.mark.parametrize("bad,msg", [
    ({"inputs.obs.patterns": ["(unclosed"]}, "invalid regex"),
    ({"inputs.obs.patterns": ["(?P<entity>x)"]}, "named groups"),
    ({"inputs.obs.type": "foo/msg/Bar"}, "inputs.obs.type"),
    ({"inputs.obs.min_period_s": -1.0}, "min_period_s"),
])
def test_input_errors_name_the_parameter(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        _inputs([r"(?P<entity>\w+) (?P<value>\w+)"], **bad)


def _truth_from_bag(ep: Path):
    """Every fact ``(t_s, entity, attribute, value)`` read back from the bag through the episode's
    own params file."""
    _, inputs = split_params(load_params_file(ep / "params.yaml"))
    per = Perception(parse_inputs(inputs))
    facts = []
    for m in read_bag(ep / "bag"):
        o = per(m.topic, m.msgtype, m.msg, m.stamp_ns)
        facts += [(m.t_s, f.entity.replace("_", " "), f.attribute, f.value) for f in (o.facts if o else ())]
    return facts


def _check_answers_from_bag(ep: Path):
    """Every question's answers follow from the facts the params file reads (all kinds)."""
    facts, qa = _truth_from_bag(ep), load_qa(ep / "qa.jsonl")
    for q in qa:
        def seen(name, attr="location"):
            return [(t, v) for t, e, a, v in facts if e == name and a == attr and t <= q.t_s]

        s = seen(q.extra["object"], "state" if q.kind == "door" else "location")
        if q.kind in ("now", "first"):
            t_ev, room = s[-1] if q.kind == "now" else s[0]
            assert q.answers == (room,), q.id
            assert q.evidence_s == pytest.approx((t_ev,), abs=1e-3)
            assert set(ROOMS) <= set(q.candidates) and set(q.candidates) <= set(ROOMS) | {NEVER_SEEN}
        elif q.kind in ("when_last", "when_first"):
            assert q.answers == (f"{(s[-1] if q.kind == 'when_last' else s[0])[0]:.1f} s",), q.id
        elif q.kind == "count":
            assert q.answers == (f"{len(s)} time{'s' if len(s) > 1 else ''}",), q.id
        elif q.kind == "which":
            room = q.extra["object"]
            assert all(seen(o)[-1][1] == room for o in q.answers) and all(seen(o)[-1][1] != room for o in q.rejects)
        elif q.kind == "never":
            assert q.answers == (NEVER_SEEN,) and not [f for f in facts if f[1] == q.extra["object"]]
        else:
            assert q.kind == "door" and q.answers == (s[-1][1],), q.id
        assert not q.lead_in or q.lead_in[0].isupper()
    return qa


def test_make_episode_is_deterministic_and_its_answers_follow_from_the_bag(tmp_path):
    a = make_episode(tmp_path / "a", seed=5, n_messages=120, n_questions=10)
    make_episode(tmp_path / "b", seed=5, n_messages=120, n_questions=10)
    assert a["messages"] == 120 and a["questions"] == 10
    assert (tmp_path / "a" / "qa.jsonl").read_text() == (tmp_path / "b" / "qa.jsonl").read_text()
    qa = _check_answers_from_bag(tmp_path / "a")
    assert {q.kind for q in qa} == set(KINDS) and not any(q.lead_in for q in qa)
    make_episode(tmp_path / "c", seed=5, n_messages=120, n_questions=10, lead_ins=True)
    qc = _check_answers_from_bag(tmp_path / "c")  # the same questions, with the older lead-ins
    assert all(q.lead_in for q in qc) and [(q.question, q.answers) for q in qc] == [(q.question, q.answers) for q in qa]
    make_episode(tmp_path / "d", seed=5, n_messages=120, n_questions=10, wordings="heldout", phrasing=CAMERA)
    held = {w for ws in HELDOUT.values() for w in ws}
    assert all(any(q.question.startswith(w.split("{")[0]) for w in held) for q in _check_answers_from_bag(tmp_path / "d"))
    assert any(q.answers != qb.answers for q, qb in zip(qa, qa[1:]))
    with pytest.raises(FileExistsError):
        make_episode(tmp_path / "a", seed=5)


def test_rephrased_episode_reads_through_its_params_only(tmp_path):
    from csr_ros.cli.eval.rephrase import TOPIC, rephrase_episode

    make_episode(tmp_path / "src", seed=3, n_messages=80, n_questions=6)
    rephrase_episode(tmp_path / "src", tmp_path / "dst")
    texts = [m.msg.data for m in read_bag(tmp_path / "dst" / "bag") if m.topic == TOPIC]
    assert texts and all(t.startswith("{") for t in texts)
    assert not any("I see the" in t for t in texts)  # a phrasing the generator never produces
    _check_answers_from_bag(tmp_path / "dst")  # same facts (snake_case labels), from config alone


def test_resolve_episode(tmp_path):
    make_episode(tmp_path / "ep", seed=1, n_messages=20, n_questions=2)
    p = resolve_episode(tmp_path / "ep")
    assert p.bag == tmp_path / "ep" / "bag" and p.qa.name == "qa.jsonl" and p.params.name == "params.yaml"
    assert resolve_episode(tmp_path / "ep" / "bag").qa == p.qa
    assert resolve_episode(tmp_path / "ep", qa="x.jsonl").qa == Path("x.jsonl")
    with pytest.raises(EpisodeError):
        resolve_episode(tmp_path)


def test_shipped_episode_is_small_valid_and_consistent():
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 1_000_000
    qa = _check_answers_from_bag(SHIPPED)
    assert len(qa) >= 10


def test_readme_pattern_examples_produce_the_documented_facts():
    import re as _re

    import yaml

    text = (ROOT / "episodes" / "README.md").read_text()
    block = _re.search(r"```yaml\n(/\*\*:.*?)```", text, _re.S).group(1)
    flat = {}
    for k, v in yaml.safe_load(block)["/**"]["ros__parameters"]["inputs"].items():
        if k == "names":
            flat["inputs.names"] = v
        else:
            flat.update({f"inputs.{k}.{f}": x for f, x in v.items()})
    per = Perception(parse_inputs(flat))
    S = typestore().types["std_msgs/msg/String"]
    cases = {"/observations": ("I see the red cup on the table in the kitchen.", ("red cup", "location", "kitchen")),
             "/detector/objects": ('{"label": "red_cup", "room": "kitchen", "score": 0.91}',
                                   ("red_cup", "location", "kitchen")),
             "/doors": ("front door: OPEN", ("front door", "state", "OPEN"))}
    for i, (topic, (msg, fact)) in enumerate(cases.items()):
        o = per(topic, "std_msgs/msg/String", S(data=msg), i)
        assert [(f.entity, f.attribute, f.value) for f in o.facts] == [fact]
