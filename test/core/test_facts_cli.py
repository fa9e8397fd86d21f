"""``csr-ros facts``: the facts a params file extracts, per input, on the shipped episode and a
generated one (a few seconds: two small bags read through the serializers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csr_ros.cli import main
from csr_ros.cli.facts import extract
from csr_ros.cli.make_episode import CAMERA, make_episode

pytestmark = pytest.mark.core
SHIPPED = Path(__file__).resolve().parents[2] / "episodes" / "household_small"


def test_facts_of_the_shipped_episode(tmp_path, capsys):
    assert main(["facts", str(SHIPPED), "--max-facts", "3", "--sample", "2", "--json", str(tmp_path / "f.json")]) == 0
    out = json.loads((tmp_path / "f.json").read_text())
    obs = next(i for i in out["inputs"] if i["topic"] == "/observations")
    # every sighting is a fact; every other text matched no pattern and is counted and sampled
    assert obs["facts_n"] > 0 and obs["attributes"] == ["location"] and len(obs["facts"]) == 3
    assert obs["facts_n"] + obs["unmatched_n"] == obs["accepted"]
    assert 0.0 < obs["unmatched_share"] < 1.0 and len(obs["unmatched_sample"]) == 2
    assert not any(" in the " in s["text"] and s["text"].startswith(("I see", "Spotted")) for s in obs["unmatched_sample"])
    pose = next(i for i in out["inputs"] if i["topic"] == "/robot_pose")
    assert pose["unmatched_share"] is None  # not a pattern input
    text = capsys.readouterr().out
    assert "== input observations (/observations, string)" in text and "matched no pattern" in text


def test_facts_of_a_generated_episode_match_its_sightings(tmp_path):
    make_episode(tmp_path / "ep", seed=4, n_messages=120, n_questions=8, phrasing=CAMERA)
    res = {r.topic: r for r in extract(tmp_path / "ep" / "bag", tmp_path / "ep" / "params.yaml")}
    obs, doors = res["/observations"], res["/doors"]
    sightings = [u for _, u in obs.unmatched if u.startswith("Camera sees the") and " in the " in u]
    assert obs.facts and not sightings  # every camera sighting matched a pattern
    assert doors.facts and doors.unmatched_share == 0.0 and {f[2] for f in doors.facts} == {"state"}
    assert {f[3] for f in doors.facts} <= {"open", "closed"}
