"""--stability-plots=DIR: one non-empty PNG per stability test, findings marked; a clear error without matplotlib."""

from __future__ import annotations

import sys

import pytest

from pytest_stability.integrations.session import PLOTS_MISSING_MESSAGE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _red_pixels(path) -> int:
    """Pure-red pixels: the colour findings are marked in (titles and curves use other colours)."""
    image = pytest.importorskip("matplotlib.image").imread(path)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((r > 0.9) & (g < 0.15) & (b < 0.15)).sum())


def test_one_png_per_test_with_findings_marked(pytester, scenario):
    pytest.importorskip("matplotlib")
    scenario("healthy", "diverges", "skipped", "plain", "param", module="test_plotted")
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-plots=plots/run1")
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*- stability plots: 3 PNG files written to */plots/run1 -*"])
    files = sorted(p.name for p in (pytester.path / "plots/run1").iterdir())
    assert files == [
        "test_plotted.py__test_diverges.png",
        "test_plotted.py__test_healthy.png",
        "test_plotted.py__test_param[0.01].png",
    ]
    for name in files:
        data = (pytester.path / "plots/run1" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name
    # the finding of the diverging run is drawn (red); the healthy run has none
    assert _red_pixels(pytester.path / "plots/run1/test_plotted.py__test_diverges.png") > 50
    assert _red_pixels(pytester.path / "plots/run1/test_plotted.py__test_healthy.png") == 0


def test_plots_ini_twin(pytester, scenario, recorded):
    pytest.importorskip("matplotlib")
    pytester.makeini("[pytest]\nstability_plots = figures\n")
    scenario("one")
    result = pytester.runpytest("-p", "no:cacheprovider", *recorded.args("scenarios"))
    result.assert_outcomes(passed=1)
    assert [p.name for p in (pytester.path / "figures").iterdir()] == ["test_plots_ini_twin.py__test_one.png"]


def test_without_matplotlib_the_option_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--stability-plots=plots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert PLOTS_MISSING_MESSAGE == "--stability-plots needs matplotlib: pip install 'pytest-stability[plots]'"
    result.stderr.fnmatch_lines([f"ERROR: {PLOTS_MISSING_MESSAGE}"])
    assert not (pytester.path / "plots").exists()
    # without the option, matplotlib is not needed
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
