"""CI lints and type-checks the package before it runs the tests, with the settings in pyproject.toml."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_ruff_and_mypy_target_the_oldest_supported_python():
    doc = _pyproject()
    assert doc["project"]["requires-python"] == ">=3.10"
    assert doc["tool"]["ruff"]["target-version"] == "py310"
    assert doc["tool"]["ruff"]["line-length"] == 120
    assert set(doc["tool"]["ruff"]["lint"]["select"]) == {"E", "F", "W", "I", "B", "UP", "SIM"}
    assert doc["tool"]["mypy"]["python_version"] == "3.10"
    assert doc["tool"]["mypy"]["strict"] is True  # the whole package, the training modules too


def test_the_dev_extra_brings_ruff_and_mypy():
    names = {
        req.split(">")[0].split("=")[0].split("<")[0].strip()
        for req in _pyproject()["project"]["optional-dependencies"]["dev"]
    }
    assert {"ruff", "mypy"} <= names


def test_ci_runs_ruff_and_mypy_before_the_tests():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    ruff = lines.index(".venv/bin/python -m ruff check pytest_stability tests benchmarks example_project docs")
    fmt = lines.index(".venv/bin/python -m ruff format --check pytest_stability tests benchmarks example_project docs")
    mypy = lines.index(".venv/bin/python -m mypy pytest_stability")
    first_pytest = next(i for i, line in enumerate(lines) if " -m pytest " in line)
    dev_install = next(i for i, line in enumerate(lines) if "pip install" in line and '".[dev]"' in line)
    assert dev_install < ruff < first_pytest
    assert dev_install < fmt < first_pytest
    assert dev_install < mypy < first_pytest
