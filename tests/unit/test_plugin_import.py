"""Loading the plugin imports no TensorFlow, Keras, JAX or torch (every pytest run pays for the plugin's import)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("tensorflow", "keras", "jax", "torch")


def _imported_modules(code: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    names = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.append(line.rsplit("|", 1)[1].strip())
    assert names, proc.stderr[:500]
    return names


def test_importing_the_package_and_plugin_imports_no_framework():
    names = _imported_modules("import pytest_stability, pytest_stability.plugin")
    assert "pytest_stability.plugin" in names
    heavy = [n for n in names if n.split(".")[0] in HEAVY]
    assert heavy == []


def test_the_framework_type_names_import_no_framework():
    # the names of the framework objects (Model, Tensor, ...) are imported by modules of every layer
    names = _imported_modules("import pytest_stability.framework_types")
    assert "pytest_stability.framework_types" in names
    assert [n for n in names if n.split(".")[0] in HEAVY] == []
