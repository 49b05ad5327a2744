"""--stability-xdist-gpus gives each pytest-xdist worker its own GPU; --stability-gpu-lock serialises stability
tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Each process (controller and workers) records its environment when its conftest.py is imported:
# the earliest point a user's code (a conftest that imports TensorFlow) could read it.
RECORD_ENV = """
import json, os
_KEYS = ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE")
_who = os.environ.get("PYTEST_XDIST_WORKER", "controller")
with open(f"env-{_who}.json", "w") as fh:
    json.dump({k: os.environ.get(k) for k in _KEYS}, fh)
"""

TWO_TESTS = """
import os

def test_a():
    assert os.environ.get("PYTEST_XDIST_WORKER")

def test_b():
    assert os.environ.get("PYTEST_XDIST_WORKER")
"""


def _envs(path: Path) -> dict[str, dict]:
    return {p.stem[len("env-") :]: json.loads(p.read_text()) for p in path.glob("env-*.json")}


@pytest.fixture
def no_gpu_env(monkeypatch):
    for key in ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE"):
        monkeypatch.delenv(key, raising=False)


# -- pure assignment logic ---------------------------------------------------------


# -- real pytest-xdist workers ----------------------------------------------------------


def test_each_worker_sees_its_gpu_before_conftest_import(pytester, no_gpu_env):
    pytest.importorskip("xdist")
    pytester.makeconftest(RECORD_ENV)
    pytester.makepyfile(TWO_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--stability-xdist-gpus=3,7")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["stability GPUs per xdist worker: 3,7"])
    assert _envs(pytester.path) == {
        "controller": {
            "CUDA_VISIBLE_DEVICES": None,
            "TF_FORCE_GPU_ALLOW_GROWTH": None,
            "XLA_PYTHON_CLIENT_PREALLOCATE": None,
        },
        "gw0": {
            "CUDA_VISIBLE_DEVICES": "3",
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        },
        "gw1": {
            "CUDA_VISIBLE_DEVICES": "7",
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        },
    }


def test_auto_from_the_visible_devices_via_ini(pytester, no_gpu_env, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "false")  # the user's own setting wins
    pytester.makeini("[pytest]\nstability_xdist_gpus = auto\n")
    pytester.makeconftest(RECORD_ENV)
    pytester.makepyfile(TWO_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=2)
    envs = _envs(pytester.path)
    assert envs["controller"]["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert [envs[w]["CUDA_VISIBLE_DEVICES"] for w in ("gw0", "gw1")] == ["4", "5"]
    assert {envs[w]["TF_FORCE_GPU_ALLOW_GROWTH"] for w in ("gw0", "gw1")} == {"false"}


def test_bad_gpu_list_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-xdist-gpus=first")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--stability-xdist-gpus: expected 'auto' or a comma list of GPU ids such as 0,1, received 'first'"]
    )


def test_gpu_lock_runs_stability_tests_one_at_a_time(pytester, no_gpu_env, monkeypatch, tmp_path):
    pytest.importorskip("xdist")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a lock file of this test's own
    pytester.makepyfile("""
        import json, os, time

        import keras
        import numpy as np
        import pytest

        def _body(stability, name):
            start = time.time()
            model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            model.compile(optimizer="sgd", loss="mse")
            stability.fit(model, np.ones((8, 2), "float32"), np.ones((8, 1), "float32"), batch_size=4)
            time.sleep(1.5)
            with open(f"interval-{name}.json", "w") as fh:
                json.dump([start, time.time(), os.environ.get("PYTEST_XDIST_WORKER")], fh)

        @pytest.mark.stable_training(steps=2)
        def test_a(stability):
            _body(stability, "a")

        @pytest.mark.stable_training(steps=2)
        def test_b(stability):
            _body(stability, "b")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--stability-gpu-lock")
    result.assert_outcomes(passed=2)
    (a0, a1, wa), (b0, b1, wb) = (json.loads((pytester.path / f"interval-{n}.json").read_text()) for n in "ab")
    assert wa != wb, "both tests ran on one worker: nothing was tested"
    assert a1 <= b0 or b1 <= a0, ((a0, a1), (b0, b1))
    assert list(tmp_path.glob("pytest-stability-gpu-*.lock"))
