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


_INTEL = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480C\nflags\t\t: fpu sse2 avx avx2 avx512f\n"
_AMD = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2\nprocessor\t: 1\nmodel name\t: other\n"
_ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    "cpuinfo, model, vector",
    [(_INTEL, "Intel(R) Xeon(R) Platinum 8480C", "AVX-512"), (_AMD, "AMD EPYC", "AVX2"), (_ARM, None, "NEON")],
)
def test_the_cpu_is_described_by_its_model_and_widest_vector_instructions(cpuinfo, model, vector, monkeypatch):
    import platform

    from pytest_stability.report.json_report import cpu_description

    monkeypatch.setattr(platform, "machine", lambda: "x86_64" if model else "aarch64")
    monkeypatch.setattr(platform, "processor", lambda: "")
    machine = platform.machine()
    assert cpu_description(cpuinfo) == (f"{model} ({machine}, {vector})" if model else f"{machine}, {vector}")
    assert cpu_description("") == machine  # no /proc/cpuinfo (macOS): the machine alone
    monkeypatch.setattr(platform, "processor", lambda: "Intel64 Family 6 Model 85 Stepping 7, GenuineIntel")
    assert cpu_description("") == f"Intel64 Family 6 Model 85 Stepping 7, GenuineIntel ({machine})"  # Windows


def test_a_regression_says_when_the_baseline_was_saved_in_another_environment():
    saved = {"cpu": "Intel Xeon (x86_64, AVX-512)", "tensorflow": "2.20.0", "keras": "3.15.1", "platform": "Linux-a"}
    now = {"cpu": "AMD EPYC (x86_64, AVX2)", "tensorflow": "2.21.0", "keras": "3.15.1", "platform": "Linux-b"}
    changed = baseline_mod.environment_changes(saved, now)
    # the platform string (a kernel version) moves no number; an older baseline without a cpu compares none
    assert changed == [
        "cpu: 'Intel Xeon (x86_64, AVX-512)' -> 'AMD EPYC (x86_64, AVX2)'",
        "tensorflow 2.20.0 -> 2.21.0",
    ]
    assert baseline_mod.environment_changes({"tensorflow": "2.21.0"}, now) == []
    assert baseline_mod.environment_changes(None, now) == []
    doc = {"backends": {"tensorflow": {"environment": saved, "tests": {}}}}
    assert baseline_mod.section_environment(doc, "tensorflow") == saved
    assert baseline_mod.section_environment(doc, "jax") is None

    base = {"summary": _summary(), "findings": []}
    entry = {"calls": [{"runs": {"0": base}}]}
    comparison = baseline_mod.compare_call(
        entry, 0, [{"seed": 0, "summary": _summary(spikes=2), "findings": []}], TOL, strict=False, path="b.json"
    )
    message = baseline_mod.explain_regression("t.py::t", "b.json", comparison, changed)
    assert message.splitlines()[-1] == (
        "  the baseline was saved in another environment (cpu: 'Intel Xeon (x86_64, AVX-512)' -> 'AMD EPYC (x86_64, "
        "AVX2)'; tensorflow 2.20.0 -> 2.21.0): another CPU or other library versions round differently and move "
        "every number, a chaotic run's most; if nothing else changed, save the baseline where this runs "
        "(--stability-save-baseline=PATH)"
    )
    assert "another environment" not in baseline_mod.explain_regression("t.py::t", "b.json", comparison)
