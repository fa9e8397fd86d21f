"""Pooling per-episode eval results: the pooled figures are the ones one run over all episodes
gives (recomputed from the per-question records), and the Markdown tables show them."""

from __future__ import annotations

import json

import pytest

from csr_ros.cli.eval.report import markdown, pool
from csr_ros.cli.eval.report import summarize

pytestmark = pytest.mark.core


def _episode(label: str, correct: dict[str, list[bool]], kinds: list[str]) -> dict:
    records = [{"episode": label, "id": f"q{i}", "method": m, "correct": c, "ttft_ms": 10.0 * (i + 1),
                "extra": {"kind": kinds[i]}}
               for m, cs in correct.items() for i, c in enumerate(cs)]
    return {"questions_n": len(kinds), "chance": 0.1, "methods": summarize(records, list(correct)),
            "questions": records, "qa_chance": [0.1] * len(kinds)}


def _result(tmp_path, name: str, label: str, correct, kinds, budget: int = 2048) -> str:
    ep = _episode(label, correct, kinds)
    res = {"model": "m", "budget_tokens": budget, "chance": 0.1, "n": len(kinds), "free_form": False,
           "methods": ep["methods"], "wall_s": 1.0, "episodes": {label: ep}}
    path = tmp_path / name
    path.write_text(json.dumps(res))
    return str(path)


def test_pooled_recall_is_over_all_questions_not_a_mean_of_episodes(tmp_path):
    a = _result(tmp_path, "a.json", "ep_a", {"csr": [True, False], "full": [False, False]}, ["now", "first"])
    b = _result(tmp_path, "b.json", "ep_b", {"csr": [True, True, True, True], "full": [True, False, False, False]},
                ["now", "now", "first", "first"])
    res = pool([a, b])
    assert list(res["episodes"]) == ["ep_a", "ep_b"] and res["n"] == 6
    assert res["methods"]["csr"]["recall"] == round(5 / 6, 4)  # the mean of episodes would be 0.75
    assert res["methods"]["full"]["recall"] == round(1 / 6, 4)
    assert res["methods"]["csr"]["by_kind"] == {"first": round(2 / 3, 4), "now": 1.0}
    table = markdown(res)
    assert "| **pooled** | 6 | 0.10 | **0.83** (0.67/1.00) | **0.17** (0.00/0.33) |" in table
    assert "| ep_a | 2 | 0.10 | **0.50** (0.00/1.00) | **0.00** (0.00/0.00) |" in table


def test_one_episode_in_two_runs_of_disjoint_methods_is_one_episode(tmp_path):
    a = _result(tmp_path, "a.json", "ep", {"csr": [True, False], "memory": [True, True]}, ["now", "first"])
    b = _result(tmp_path, "b.json", "ep", {"full": [False, True]}, ["now", "first"])
    res = pool([a, b])
    assert list(res["episodes"]) == ["ep"] and res["n"] == 2
    assert {m: v["recall"] for m, v in res["methods"].items()} == {"csr": 0.5, "memory": 1.0, "full": 0.5}
    assert res["episodes"]["ep"]["methods"]["full"]["by_kind"] == {"first": 1.0, "now": 0.0}


def test_results_of_different_budgets_or_the_same_method_twice_are_refused(tmp_path):
    a = _result(tmp_path, "a.json", "ep_a", {"csr": [True]}, ["now"])
    b = _result(tmp_path, "b.json", "ep_b", {"csr": [True]}, ["now"], budget=4096)
    with pytest.raises(ValueError, match="budget_tokens"):
        pool([a, b])
    with pytest.raises(ValueError, match="more than one"):
        pool([a, a])


def test_a_rerun_method_replaces_the_earlier_records_only_when_asked(tmp_path):
    a = _result(tmp_path, "a.json", "ep", {"csr": [False, False], "window": [True, False]}, ["now", "first"])
    b = _result(tmp_path, "b.json", "ep", {"csr": [True, True]}, ["now", "first"])
    with pytest.raises(ValueError, match="more than one"):
        pool([a, b])
    res = pool([a, b], rerun=True)
    assert {m: v["recall"] for m, v in res["methods"].items()} == {"csr": 1.0, "window": 0.5}
    ep = res["episodes"]["ep"]
    assert len(ep["questions"]) == 4 and ep["method_files"] == {"csr": b, "window": a}
