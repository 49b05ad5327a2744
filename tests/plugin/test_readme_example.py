"""The README's first test is the docs' one, passes as written, and fails as the README says when broken."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "stability_first.py"


def test_the_readme_shows_the_documented_first_test():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"## A first test\n.*?```python\n(.*?)```", readme, flags=re.S)
    assert code == EXAMPLE.read_text(encoding="utf-8")


def test_the_first_test_passes_as_pasted_and_fails_with_a_diagnosis_at_a_learning_rate_of_50(pytester):
    source = EXAMPLE.read_text(encoding="utf-8")
    pytester.makepyfile(test_stability=source)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*stability report: 1 test, 0 unstable*",
            "PASS  test_stability.py::test_classifier_trains_stably  steps=200/200 seed=0 *",
        ]
    )

    broken = source.replace("stability.fit(build_model(),", "stability.fit(build_model(learning_rate=50.0),")
    assert broken != source
    pytester.makepyfile(test_stability=broken)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_stability.py::test_classifier_trains_stably: stable_training: * checks failed*",
            "*[[]grad_norm[]] step *: gradient norm * exceeds *",
            "*  cause (*): *",
            "*  fix to try: *",
            "*replay: pytest test_stability.py::test_classifier_trains_stably --stability-replay=0",
        ]
    )
