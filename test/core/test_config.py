"""The one parameter table -> frozen, validated config."""

from __future__ import annotations

import dataclasses

import pytest

from csr_ros.core.config import ConfigError, load_config, load_params_file, param_table

pytestmark = pytest.mark.core


def test_defaults_come_from_the_table_and_are_frozen():
    cfg = load_config()
    for spec in param_table():
        assert getattr(getattr(cfg, spec.group), spec.name) == spec.default
        assert spec.description.strip(), f"{spec.key} has no description"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.budget.budget_tokens = 5


def test_overrides_nested_or_dotted():
    a = load_config({"budget.budget_tokens": 1024})
    b = load_config({"budget": {"budget_tokens": 1024}})
    assert a.budget.budget_tokens == b.budget.budget_tokens == 1024
    assert a.replace(budget__evict_frac=0.25).budget.evict_frac == 0.25


@pytest.mark.parametrize(
    "override, words",
    [
        ({"budget.budget_tokens": 5}, ["budget.budget_tokens", "outside"]),
        ({"budget.budget_tokens": "big"}, ["budget.budget_tokens", "expected int"]),
        ({"model.dtype": "int8"}, ["model.dtype", "not one of"]),
        ({"model.model": ""}, ["model.model", "empty"]),
        ({"budget.nope": 1}, ["unknown", "budget.nope"]),
        ({"model.trust_remote_code": 1}, ["model.trust_remote_code", "expected bool"]),
    ],
)
def test_bad_values_name_the_parameter(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(override)
    for w in words:
        assert w in str(err.value)


def test_ros_params_file_is_read(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("csr:\n  ros__parameters:\n    budget:\n      budget_tokens: 4096\n")
    cfg = load_config(load_params_file(p, "csr"))
    assert cfg.budget.budget_tokens == 4096
