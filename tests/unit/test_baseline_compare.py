"""The baseline comparison and merge (pure), and the example project's committed baseline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_stability.report import baseline as baseline_mod
from pytest_stability.report.baseline import load_baseline

TOL = dict(baseline_mod.TOLERANCE_DEFAULTS)


def _summary(**kw):
    out = {"spikes": 0, "p99_grad_norm": 1.0, "final_val_loss": 0.5}
    out.update(kw)
    return out


@pytest.mark.parametrize(
    "now, tolerances, expected",
    [
        (_summary(), TOL, []),
        (_summary(spikes=1), TOL, ["loss spikes: baseline 0, now 1 (tolerance: +0)"]),
        (_summary(spikes=1), dict(TOL, baseline_extra_spikes=1), []),
        (_summary(p99_grad_norm=2.0), TOL, []),  # exactly at the limit
        (
            _summary(p99_grad_norm=2.01),
            TOL,
            ["99th-percentile gradient norm: baseline 1, now 2.01 (tolerance: x2, limit 2)"],
        ),
        (
            _summary(p99_grad_norm="nan"),
            TOL,
            ["99th-percentile gradient norm: baseline 1, now nan (tolerance: x2, limit 2)"],
        ),
        (_summary(final_val_loss=0.55), TOL, []),
        (
            _summary(final_val_loss=0.56),
            TOL,
            ["final smoothed validation loss: baseline 0.5, now 0.56 (tolerance: +10%, limit 0.55)"],
        ),
        (
            _summary(final_val_loss="inf"),
            TOL,
            ["final smoothed validation loss: baseline 0.5, now inf (tolerance: +10%, limit 0.55)"],
        ),
        (_summary(final_val_loss=None, p99_grad_norm=None), TOL, []),  # not measured now: nothing to compare
    ],
)
def test_compare_run(now, tolerances, expected):
    result = baseline_mod.compare_run({"summary": _summary(), "findings": []}, now, [], tolerances)
    assert result["regressions"] == expected
    assert result["status"] == ("regressed" if expected else "ok")
    json.dumps(result, allow_nan=False)  # builtins, NaN encoded


def test_compare_run_new_findings_only():
    base = {"summary": _summary(spikes=1), "findings": [{"check": "loss_spike", "kind": "spike", "step": 40}]}
    seen = {"check": "loss_spike", "kind": "spike", "step": 55, "message": "loss spike"}
    new = {"check": "grad_norm", "kind": "growth", "step": 70, "message": "gradient norm grew 150x"}
    assert baseline_mod.compare_run(base, _summary(spikes=1), [seen], TOL)["regressions"] == []
    assert baseline_mod.compare_run(base, _summary(spikes=1), [seen, new], TOL)["regressions"] == [
        "new finding [grad_norm] growth at step 70 (not in the baseline): gradient norm grew 150x"
    ]


def test_merge_baseline():
    def doc(created, **sections):
        return {
            "kind": baseline_mod.BASELINE_KIND,
            "schema_version": 2,
            "backends": {b: {"created_at": created, "tests": tests} for b, tests in sections.items()},
        }

    previous = doc(
        "then",
        tensorflow={"t::a": {"calls": ["old a"]}, "t::b": {"calls": ["old b"]}},
        jax={"t::a": {"calls": ["jax a"]}},
    )
    merged, counts = baseline_mod.merge_baseline(
        previous, doc("now", tensorflow={"t::b": {"calls": ["new b"]}, "t::c": {"calls": ["new c"]}})
    )
    assert merged == {
        "kind": baseline_mod.BASELINE_KIND,
        "schema_version": 2,
        "backends": {
            "jax": {"created_at": "then", "tests": {"t::a": {"calls": ["jax a"]}}},  # another backend: kept as it was
            "tensorflow": {
                "created_at": "now",
                "tests": {"t::a": {"calls": ["old a"]}, "t::b": {"calls": ["new b"]}, "t::c": {"calls": ["new c"]}},
            },
        },
    }
    assert counts == {"updated": 1, "added": 1, "kept": 1}
    assert previous["backends"]["tensorflow"]["tests"]["t::b"] == {"calls": ["old b"]}  # not modified
    assert baseline_mod.merge_baseline(None, doc("now")) == (doc("now"), {"updated": 0, "added": 0, "kept": 0})


def test_a_version_1_baseline_is_read_as_one_section_per_recorded_backend():
    run = {"verdict": "stable", "summary": {"spikes": 0}, "findings": []}
    v1 = {
        "kind": baseline_mod.BASELINE_KIND,
        "schema_version": 1,
        "created_at": "then",
        "tests": {
            "t::a": {"verdict": "stable", "calls": [{"runs": {"0": dict(run, backend="tensorflow")}}]},
            "t::b": {"verdict": "stable", "calls": [{"runs": {"0": dict(run, backend="jax")}}]},
        },
    }
    doc = baseline_mod.validate_baseline(v1, "old.json")
    assert doc["schema_version"] == 2
    assert {b: sorted(s["tests"]) for b, s in doc["backends"].items()} == {"tensorflow": ["t::a"], "jax": ["t::b"]}
    assert doc["backends"]["jax"]["tests"]["t::b"]["calls"][0]["runs"]["0"] == run
    assert doc["backends"]["jax"]["created_at"] == "then"
    with pytest.raises(
        baseline_mod.BaselineFileError,
        match="schema_version 3, and this pytest-stability reads versions 1 and 2; save the baseline again",
    ):
        baseline_mod.validate_baseline(dict(v1, schema_version=3), "new.json")


def test_example_project_baseline_is_valid_and_covers_its_tests():
    """The committed baseline loads, and has an entry for every stability test of the example project."""
    root = Path(__file__).resolve().parents[2] / "example_project"
    doc = load_baseline(root / "stability-baseline.json")
    names = re.findall(r"^def (test_\w+)\(stability\)", (root / "tests/test_stability.py").read_text(), re.M)
    assert len(names) == 6
    assert sorted(doc["backends"]) == ["jax", "tensorflow", "torch"]  # one section per Keras backend
    for section in doc["backends"].values():
        assert sorted(section["tests"]) == sorted(f"tests/test_stability.py::{name}" for name in names)
        assert {n.split("::")[1]: t["verdict"] for n, t in section["tests"].items()} == {
            name: "unstable" if "known_unstable" in name else "stable" for name in names
        }
    assert "stability_baseline = stability-baseline.json" in (root / "pytest.ini").read_text()
