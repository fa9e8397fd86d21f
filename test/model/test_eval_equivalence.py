"""On an episode that fits the budget, csr_nofocus (cached state, appended increment by increment)
and full (the same tokens re-prefilled for every question) give the same scores per question.

Tolerance: log-likelihoods within 1e-2 (fp32; the same tolerance as test_equivalence.py's
closed-set test) and the same chosen answer.
"""

from __future__ import annotations

import pytest

from csr_ros.core.config import load_config, load_params_file
from csr_ros.cli.eval.episode import load_qa, read_bag
from csr_ros.cli.eval.inputs import Perception, parse_inputs, split_params
from csr_ros.cli.make_episode import make_episode
from csr_ros.cli.eval.run_eval import replay
from csr_ros.cli.eval.methods import Settings, build_methods

pytestmark = pytest.mark.model
SCORE_ATOL = 1e-2


def test_csr_nofocus_equals_full_reprefill(smol, tmp_path):
    make_episode(tmp_path / "ep", seed=21, n_messages=30, n_questions=5)
    _, inputs = split_params(load_params_file(tmp_path / "ep" / "params.yaml"))
    per = Perception(parse_inputs(inputs))
    cfg = load_config({"budget.budget_tokens": 2048})
    msgs, qa = read_bag(tmp_path / "ep" / "bag"), load_qa(tmp_path / "ep" / "qa.jsonl")
    streams, methods = build_methods(["csr_nofocus", "full"], smol, Settings(cfg), 8192, msgs[0].stamp_ns)
    pairs, qi = [], 0

    def ask_due(t_s):
        nonlocal qi
        while qi < len(qa) and qa[qi].t_s < t_s:
            pairs.append((methods["csr_nofocus"].answer(qa[qi]), methods["full"].answer(qa[qi])))
            qi += 1

    replay(msgs, per, streams, ask_due)
    csr = streams["csr"]
    assert csr.engine.counters.swaps == 0 and csr.engine.counters.sync_evictions == 0  # it all fits
    assert csr.engine.check_invariant()
    assert len(pairs) == len(qa)
    for cached, full in pairs:
        assert cached.prompt_tokens == full.prompt_tokens  # the same tokens
        assert cached.text == full.text
        assert max(abs(a - b) for a, b in zip(cached.scores, full.scores)) < SCORE_ATOL
