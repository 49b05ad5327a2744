"""``pytest tests/unit`` runs without TensorFlow, Keras, JAX or torch imported (the fast tier)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_unit_tier_imports_no_framework():
    # A fresh process runs the unit tier (this test deselected): tests/unit/conftest.py fails that run
    # if a framework was imported, and each test here sees sys.modules as it is.  test_import_graph is
    # deselected too: it imports each module in a child process of its own (the parent run has it), so it
    # adds nothing here but its ~8 s.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/unit",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--deselect",
            "tests/unit/test_fast_tier.py::test_unit_tier_imports_no_framework",
            "--ignore",
            "tests/unit/test_import_graph.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the fast tier must not" not in proc.stderr
    assert " passed" in proc.stdout
