"""GitHub Actions: ::error annotations at unstable tests, the Markdown report in $GITHUB_STEP_SUMMARY
and --stability-markdown; printed and written by the controller only, also under pytest-xdist."""

from __future__ import annotations

from pathlib import Path

import pytest


def _def_line(path: Path, name: str) -> int:
    lines = path.read_text().splitlines()
    return next(i + 1 for i, line in enumerate(lines) if line.startswith(f"def {name}("))


def _annotations(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if line.startswith("::")]


def _message(command: str) -> str:
    """The message of a ``::error <properties>::<message>`` workflow command, unescaped (%0D, %0A, %25)."""
    _, message = command[len("::") :].split("::", 1)  # the properties escape their own colons
    return message.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and "`" in line:
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[1].strip("`")] = cells
    return rows


def test_annotations_and_step_summary_serial_then_xdist(pytester, scenario, monkeypatch, recorded):
    path = scenario("healthy", "diverges", "plain", module="test_gh")
    summary = pytester.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_WORKSPACE", str(pytester.path.parent))  # the repository holds the project in a folder
    line = _def_line(path, "test_diverges")
    expected = (
        f"::error file={pytester.path.name}/test_gh.py,line={line},"
        f"title=unstable training%3A test_diverges::[grad_norm] step 1: "
    )

    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--stability-save-baseline=base.json", "--stability-markdown=out/report.md"
    )
    result.assert_outcomes(passed=2, failed=1)
    found = _annotations(result)
    assert len(found) == 1 and found[0].startswith(expected), found
    text = summary.read_text()
    assert text.startswith("## Training stability\n\n2 tests, 1 unstable\n")
    rows = _table_rows(text)
    # the annotation is one line that holds the whole headline finding (the summary's cell, where a newline
    # is <br>): a newline of the message is escaped, not printed
    headline = rows["test_gh.py::test_diverges"][3]
    assert _message(found[0]).replace("\r", "").replace("\n", "<br>") == headline, (found[0], headline)
    assert rows["test_gh.py::test_healthy"][:4] == ["✅ stable", "`test_gh.py::test_healthy`", "40/40", ""]
    assert rows["test_gh.py::test_diverges"][:3] == ["❌ unstable", "`test_gh.py::test_diverges`", "3/40"]
    assert rows["test_gh.py::test_diverges"][3].startswith("[grad_norm] step 1: ")
    # the same Markdown, then a blank line
    assert (pytester.path / "out" / "report.md").read_text() + "\n" == text
    result.stdout.fnmatch_lines(["*stability Markdown written to *report.md*"])

    # -n 2, compared with the baseline, with plots: one annotation per test, from the controller only.  The
    # workers replay the recorded training of these tests (recorded/scenarios.json): the serial run above trained.
    summary.unlink()
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        *recorded.args("scenarios"),
        "-n",
        "2",
        "--stability-baseline=base.json",
        "--stability-plots=plots",
        "--stability-markdown=out/report.md",
    )
    result.assert_outcomes(passed=2, failed=1)
    found = _annotations(result)
    assert len(found) == 1 and found[0].startswith(expected), found
    text = summary.read_text()
    assert "2 tests, 1 unstable, 0 regressed against the baseline" in text
    assert "| verdict | test | steps | headline finding | baseline -> now | plot |" in text
    rows = _table_rows(text)
    headline = rows["test_gh.py::test_diverges"][3]
    assert _message(found[0]).replace("\r", "").replace("\n", "<br>") == headline, (found[0], headline)
    assert rows["test_gh.py::test_healthy"][4].startswith("baseline -> now: ")
    # the job summary names the plot's path (in the uploaded artifact); the Markdown file links it
    assert rows["test_gh.py::test_healthy"][5] == f"`{pytester.path.name}/plots/test_gh.py__test_healthy.png`"
    md_rows = _table_rows((pytester.path / "out" / "report.md").read_text())
    link = md_rows["test_gh.py::test_healthy"][5]
    assert link.startswith("[png](../plots/")  # relative to the Markdown file
    assert (pytester.path / "out" / link[len("[png](") : -1]).is_file()


def test_nothing_outside_github_actions(pytester, scenario, monkeypatch, recorded):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path / "summary.md"))
    scenario("diverges", module="test_gh")
    result = pytester.runpytest("-p", "no:cacheprovider", *recorded.args("scenarios"))
    result.assert_outcomes(failed=1)
    assert _annotations(result) == []
    assert not (pytester.path / "summary.md").exists()


def test_markdown_without_stability_tests(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester.makeini("[pytest]\nstability_markdown = report.md\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "report.md").read_text() == "## Training stability\n\nNo stability tests ran.\n"
