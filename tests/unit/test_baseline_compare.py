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
        (_summary(p99_grad_norm=2.01), TOL,
         ["99th-percentile gradient norm: baseline 1, now 2.01 (tolerance: x2, limit 2)"]),
        (_summary(p99_grad_norm="nan"), TOL,
         ["99th-percentile gradient norm: baseline 1, now nan (tolerance: x2, limit 2)"]),
        (_summary(final_val_loss=0.55), TOL, []),
        (_summary(final_val_loss=0.56), TOL,
         ["final smoothed validation loss: baseline 0.5, now 0.56 (tolerance: +10%, limit 0.55)"]),
        (_summary(final_val_loss="inf"), TOL,
         ["final smoothed validation loss: baseline 0.5, now inf (tolerance: +10%, limit 0.55)"]),
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
        "new finding [grad_norm] growth at step 70 (not in the baseline): gradient norm grew 150x"]



def test_merge_baseline():
    def doc(tests, created):
        return {"kind": baseline_mod.BASELINE_KIND, "schema_version": 1, "created_at": created, "tests": tests}

    previous = doc({"t::a": {"calls": ["old a"]}, "t::b": {"calls": ["old b"]}}, "then")
    merged, counts = baseline_mod.merge_baseline(previous, doc({"t::b": {"calls": ["new b"]},
                                                                "t::c": {"calls": ["new c"]}}, "now"))
    assert merged == doc({"t::a": {"calls": ["old a"]}, "t::b": {"calls": ["new b"]}, "t::c": {"calls": ["new c"]}},
                         "now")
    assert counts == {"updated": 1, "added": 1, "kept": 1}
    assert previous["tests"]["t::b"] == {"calls": ["old b"]}  # not modified
    assert baseline_mod.merge_baseline(None, doc({}, "now")) == (doc({}, "now"), {"updated": 0, "added": 0, "kept": 0})



def test_example_project_baseline_is_valid_and_covers_its_tests():
    """The committed baseline loads, and has an entry for every stability test of the example project."""
    root = Path(__file__).resolve().parents[2] / "example_project"
    doc = load_baseline(root / "stability-baseline.json")
    names = re.findall(r"^def (test_\w+)\(stability\)", (root / "tests/test_stability.py").read_text(), re.M)
    assert len(names) == 5
    assert sorted(doc["tests"]) == sorted(f"tests/test_stability.py::{name}" for name in names)
    assert {n.split("::")[1]: t["verdict"] for n, t in doc["tests"].items()} == {
        name: "unstable" if "known_unstable" in name else "stable" for name in names}
    assert "stability_baseline = stability-baseline.json" in (root / "pytest.ini").read_text()

