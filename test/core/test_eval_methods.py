"""``csr-ros eval`` plumbing on a deterministic fake reader (no weights): every method, the JSON,
budgets, reconciliations, the focus switch, and csr_nofocus == full when the history fits."""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest

from csr_ros.core.model.backends.fake import FakeBackend, FakeState
from csr_ros.cli.eval import run_eval
from csr_ros.cli.make_episode import make_episode
from csr_ros.cli.eval.methods import METHODS, evidence_increments

pytestmark = pytest.mark.core
BUDGET = 4096  # fake tokens are bytes: about 2.5 budgets of history in the test episode


class ReaderState(FakeState):
    """Scores a candidate by how late its last word (the answer inside its frame) occurs in
    everything visible (state + prompt); words under 3 letters score -1."""

    def score(self, prompt_ids, candidates):
        self._tick()
        text = self._be.decode(list(self._state) + list(prompt_ids)).lower()
        out = []
        for c in candidates:
            words = self._be.decode(c).lower().split()
            pos = text.rfind(words[-1]) if words and len(words[-1]) >= 3 else -1
            out.append(pos / len(text) if pos >= 0 else -1.0)
        return out


class Reader(FakeBackend):
    def new_state(self):
        return ReaderState(self)


class WordsEmbedder:
    """Bag of hashed words, unit length (deterministic stand-in for MiniLM)."""

    def embed(self, texts):
        import torch

        out = torch.zeros(len(texts), 64)
        for i, t in enumerate(texts):
            for w in t.lower().replace(".", " ").replace("?", " ").split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 64] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)

    def __call__(self, q, cands):
        return [0.0] * len(cands)


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    d = tmp_path_factory.mktemp("ep") / "e"
    make_episode(d, seed=11, n_messages=90, n_questions=8, kinds=("now", "first"))
    return d


def _args(bags, tmp_path, **kw):
    p = argparse.ArgumentParser()
    run_eval.add_args(p)
    argv = [str(b) for b in bags] + ["--model", "fake", "--quiet", "--json", str(tmp_path / "r.json")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return p.parse_args(argv)


def _run(monkeypatch, bags, tmp_path, params=(), **kw):
    monkeypatch.setattr(run_eval, "load_backend", lambda *a: (Reader(), 1 << 30))
    monkeypatch.setattr("csr_ros.cli.eval.embed.LazyMiniLM", WordsEmbedder)
    args = _args(bags, tmp_path, **kw)
    args.param = list(params)
    assert run_eval.run(args) == 0
    return json.loads((tmp_path / "r.json").read_text())


def test_every_method_answers_every_question(monkeypatch, tmp_path, episode, capsys):
    res = _run(monkeypatch, [episode, episode], tmp_path, budget=BUDGET)
    assert res["budget_tokens"] == BUDGET and res["chance"] == pytest.approx(1 / 11, abs=1e-4) and res["n"] == 16
    assert set(res["methods"]) == set(METHODS)
    for name, m in res["methods"].items():
        assert m["n"] == 16 and 0.0 <= m["recall"] <= 1.0
        assert 0 <= m["ttft_ms_p50"] <= m["ttft_ms_p99"]
        assert set(m["by_kind"]) == {"now", "first"}
    assert res["methods"]["oracle"]["recall"] == 1.0  # the evidence alone names the answer last
    ep = next(iter(res["episodes"].values()))
    assert len(ep["questions"]) == 8 * len(METHODS)
    assert ep["streams"]["csr"]["reconciliations"] >= 1 and ep["streams"]["window"]["evictions"] >= 1
    qs = {(r["id"], r["method"]): r for r in ep["questions"]}
    q0 = ep["questions"][0]["id"]
    assert qs[(q0, "rag")]["prompt_tokens"] <= BUDGET
    assert qs[(q0, "memory")]["prompt_tokens"] < qs[(q0, "csr")]["prompt_tokens"]
    last = ep["questions"][-1]["id"]
    assert qs[(last, "full")]["prompt_tokens"] > BUDGET  # the whole history, beyond the budget
    assert qs[(last, "csr")]["prompt_tokens"] <= BUDGET + 400
    assert all(len(r["scores"]) == 11 for r in ep["questions"])  # 10 rooms + "not seen"
    assert all(r["frame"].endswith(" in the") for r in ep["questions"])  # derived: the QA has no lead-in
    out = capsys.readouterr().out
    assert "pooled over 2 episodes" in out and "oracle" in out


def test_csr_nofocus_equals_full_when_the_history_fits(monkeypatch, tmp_path, episode):
    res = _run(monkeypatch, [episode], tmp_path, budget=200000, methods="csr_nofocus,full")
    ep = next(iter(res["episodes"].values()))
    by = {}
    for r in ep["questions"]:
        by.setdefault(r["id"], {})[r["method"]] = r
    for rs in by.values():
        assert rs["csr_nofocus"]["scores"] == rs["full"]["scores"]
        assert rs["csr_nofocus"]["prompt_tokens"] == rs["full"]["prompt_tokens"]
    assert ep["streams"]["csr"]["reconciliations"] == 0


def test_focus_can_be_switched_off(monkeypatch, tmp_path, episode):
    on = _run(monkeypatch, [episode], tmp_path, methods="csr,csr_nofocus")
    off = _run(monkeypatch, [episode], tmp_path, params=["memory.focus_enabled=false"], methods="csr,csr_nofocus")
    q_on = [r for r in next(iter(on["episodes"].values()))["questions"] if r["method"] == "csr"]
    q_off = {(r["id"], r["method"]): r for r in next(iter(off["episodes"].values()))["questions"]}
    assert any(r["focus"] for r in q_on)
    for r in q_on:
        assert q_off[(r["id"], "csr")]["focus"] == []
        assert q_off[(r["id"], "csr")]["scores"] == q_off[(r["id"], "csr_nofocus")]["scores"]


def test_free_form_generates(monkeypatch, tmp_path, episode):
    res = _run(monkeypatch, [episode], tmp_path, methods="csr,memory,full", free_form=True, max_new_tokens=6)
    ep = next(iter(res["episodes"].values()))
    assert res["free_form"] is True
    assert all(r["answer"] and r["ttft_ms"] > 0 and r["scores"] == [] for r in ep["questions"])


def test_bad_method_and_missing_qa(tmp_path, episode):
    with pytest.raises(SystemExit):
        run_eval.run(_args([episode], tmp_path, methods="csr,bogus"))
    bag_only = tmp_path / "lonely"
    bag_only.mkdir()
    (episode / "bag").rename(bag_only / "bag")
    try:
        with pytest.raises(SystemExit, match="qa.jsonl"):
            run_eval.run(_args([bag_only / "bag"], tmp_path))
    finally:
        (bag_only / "bag").rename(episode / "bag")


def test_evidence_matching_picks_the_closest_increment():
    from csr_ros.core.state.ledger import Increment

    incs = [Increment(i, "/o", 10**9 * i + 5, "x", (1,)) for i in range(5)]
    assert [i.seq for i in evidence_increments(incs, [2.0, 3.3], 0)] == [2, 3]
    assert evidence_increments(incs, [9.0], 0) == []
