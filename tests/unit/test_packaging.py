"""Packaging: one version, declared once; the license and changelog ship with the project."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import pytest_stability

ROOT = Path(__file__).resolve().parents[2]

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_version_is_written_once_in_the_package_and_read_by_the_build():
    project = _pyproject()
    assert "version" not in project["project"], "pyproject.toml must not repeat the version"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pytest_stability.__version__"}
    # a plain literal, which setuptools reads without importing the package
    source = (ROOT / "pytest_stability" / "__init__.py").read_text(encoding="utf-8")
    (literal,) = re.findall(r'^__version__ = "([^"]+)"$', source, flags=re.M)
    assert literal == pytest_stability.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", literal)


def test_license_and_changelog_ship_with_the_project():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert f"## [{pytest_stability.__version__}]" in changelog


def test_every_extra_requires_the_keras_the_plugin_supports_and_an_older_one_is_refused():
    from pytest_stability.training.keras_internals import KERAS_MIN, unsupported

    least = ".".join(map(str, KERAS_MIN))
    extras = _pyproject()["project"]["optional-dependencies"]
    with_keras = {name: [r for r in reqs if re.match(r"keras\b", r)] for name, reqs in extras.items()}
    assert {name: reqs for name, reqs in with_keras.items() if reqs} == {
        name: [f"keras>={least}"] for name in ("tensorflow", "cpu", "jax", "torch", "test")
    }
    older = f"{KERAS_MIN[0]}.{KERAS_MIN[1] - 1}.9"
    assert unsupported(older, "jax") == (
        f"pytest-stability needs Keras {least} or newer; found keras {older}: pip install 'keras>={least}'"
    )
    # a development build's version, and Keras 2: read by their first two numbers
    assert unsupported(f"{KERAS_MIN[0]}.{KERAS_MIN[1] - 1}.0.dev2026120703", "jax").startswith(
        f"pytest-stability needs Keras {least} or newer"
    )
    assert unsupported("2.15.0", "tensorflow") == "pytest-stability needs Keras 3; found keras 2.15.0"
    assert unsupported("unknown", "tensorflow") == "pytest-stability needs Keras 3; found keras unknown"
