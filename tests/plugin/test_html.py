"""--stability-html: one self-contained HTML report, checked as written and as a browser shows it.

The browser is Debian's headless Chromium (``apt-get install chromium``; CI installs it): the page is
rendered offline, its DOM read back after its script ran, a screenshot taken, and the console checked for
script errors.  Set STABILITY_SCREENSHOT_DIR to keep the screenshots.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

RUN = ("-p", "no:cacheprovider")

TESTS = """

@pytest.mark.stable_training(steps=40, validate_every=20)
def test_healthy(stability):
    stability.train(build(), X, Y, validation_data=(XV, YV), batch_size=16)


@pytest.mark.stable_training(steps=40)
def test_diverges(stability):
    stability.train(build_diverging(), X, Y * 100, batch_size=16)
"""

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium() -> str:
    """The Chromium executable; a skip without one, except in CI (which installs it), where it is a failure."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("Chromium is not installed: .ci/run installs Debian's chromium package for this test")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


def browse(page: Path, tmp_path: Path, *, width: int = 1280, height: int = 2000) -> tuple[str, Path, str]:
    """Open ``page`` offline in headless Chromium: (the DOM after its scripts ran, a screenshot, console lines)."""
    exe = chromium()
    url = page.resolve().as_uri()
    console: list[str] = []

    def run(*args: str, profile: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        console.extend(line for line in result.stderr.splitlines() if ":CONSOLE" in line)
        return result

    dom = run("--virtual-time-budget=3000", "--dump-dom", profile="profile-dom").stdout
    shot = tmp_path / f"{page.stem}.png"
    run(f"--window-size={width},{height}", f"--screenshot={shot}", profile="profile-shot")
    keep = os.environ.get("STABILITY_SCREENSHOT_DIR")
    if keep and shot.is_file():
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    return dom, shot, "\n".join(console)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"no real screenshot at {path}"


def test_html_report_is_self_contained_shows_curves_findings_and_baseline_and_renders_in_a_browser(
    pytester, named_problem, gating, tmp_path
):
    pytester.makepyfile(test_html_report=named_problem + TESTS)
    saved = pytester.runpytest(*RUN, "--stability-save-baseline=base.json", "-k", "healthy")
    saved.assert_outcomes(passed=1, deselected=1)
    result = pytester.runpytest(
        *RUN, "--stability-html=out/report.html", "--stability-report=r.json", "--stability-baseline=base.json"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["stability HTML report: */out/report.html", "*- stability HTML report written to */out/report.html -*"]
    )
    page = pytester.path / "out" / "report.html"
    text = page.read_text(encoding="utf-8")

    # self-contained: nothing is fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", text), "the page loads something from outside"
    assert "<link" not in text and "@import" not in text and "url(" not in text

    doc = gating.load_strict(pytester.path / "r.json")
    tests = gating.tests_by_id(doc)
    healthy, diverges = tests["test_html_report.py::test_healthy"], tests["test_html_report.py::test_diverges"]
    (run,) = healthy["calls"][0]["runs"]
    assert set(run["curves"]) >= {"loss", "grad_norm", "lr", "val_loss"}  # the learning rate is recorded
    assert run["curves"]["lr"]["value"][0] == pytest.approx(1e-2)
    (bad,) = diverges["calls"][0]["runs"]
    first = bad["findings"][0]

    # the summary table: both tests, their verdicts, steps and device, the headline finding, the baseline
    assert text.count('<tr data-verdict="stable"') == 1 and text.count('<tr data-verdict="unstable"') == 1
    assert f"{bad['steps_run']}/40" in text and f"{run['steps_run']}/40" in text
    assert f"[{first['check']}] step {first['step']}:" in text
    # per test: a chart per recorded curve, the finding marked on its chart, cause, fix, baseline, replay
    assert text.count('<figure class="ps-chart">') == 4 + 3  # healthy: loss, |g|, lr, val; diverges: no val
    for caption in ("training loss", "gradient norm", "learning rate", "validation loss"):
        assert f"<figcaption>{caption}</figcaption>" in text
    assert f"{first['check']} @ {first['step']}</text>" in text
    assert html.escape(first["cause"]) in text and html.escape(first["fix"]) in text
    assert 'Baseline: <span class="ps-ok">ok</span>' in text  # test_healthy against its saved baseline
    assert "test not in the baseline (not compared)" in text  # test_diverges was not saved
    assert "--stability-replay=0" in text

    dom, shot, console = browse(page, tmp_path)
    assert 'data-ready="1"' in dom, f"the page's script did not finish:\n{console}"
    assert "Uncaught" not in console and ":ERROR:CONSOLE" not in console, console
    assert "test_html_report.py::test_diverges" in dom and "learning rate" in dom
    _assert_png(shot)


def test_html_report_ini_twin_and_bad_paths(pytester, named_problem):
    pytester.makepyfile(test_ini=named_problem + TESTS.split("@pytest.mark.stable_training(steps=40)\n")[0])
    pytester.makeini("[pytest]\nstability_html = reports/ini.html\n")
    result = pytester.runpytest(*RUN)
    result.assert_outcomes(passed=1)
    assert "test_ini.py::test_healthy" in (pytester.path / "reports" / "ini.html").read_text(encoding="utf-8")

    (pytester.path / "adir").mkdir()
    result = pytester.runpytest(*RUN, "--stability-html=adir")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--stability-html: */adir is a directory; give a file path"])


def test_pytest_html_report_gets_each_stability_tests_panel(pytester, named_problem, tmp_path):
    pytest.importorskip("pytest_html")
    pytester.makepyfile(test_ph=named_problem + TESTS)
    result = pytester.runpytest(*RUN, "--html=ph.html", "--self-contained-html")
    result.assert_outcomes(passed=1, failed=1)
    text = (pytester.path / "ph.html").read_text(encoding="utf-8")
    # pytest-html keeps its rows as escaped JSON in the page: our panel is in there, per test
    assert text.count("ps-report") >= 2 and "learning rate" in text

    dom, shot, console = browse(pytester.path / "ph.html", tmp_path)
    assert "Uncaught" not in console, console
    panels = re.findall(r'<details class="ps-test" id="t-test_ph-py-test_(\w+)"', dom)
    assert sorted(panels) == ["diverges", "healthy"]
    assert "<figcaption>learning rate</figcaption>" in dom
    _assert_png(shot)
