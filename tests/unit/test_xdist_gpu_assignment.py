"""--stability-xdist-gpus, pure: the GPU list, a GPU per worker, the worker's environment, GPU detection, the lock.

Real pytest-xdist workers are in tests/plugin/test_xdist_gpus.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_stability.integrations import xdist_gpus as xg


def test_parse_gpus():
    assert xg.parse_gpus("auto") is None
    assert xg.parse_gpus(" AUTO ") is None
    assert xg.parse_gpus("0,1") == ["0", "1"]
    assert xg.parse_gpus("2, 3,2") == ["2", "3", "2"]
    for bad in ("", "0,,1", "gpu0", "-1", "0;1"):
        with pytest.raises(xg.GpuSpecError, match="'auto' or a comma list of GPU ids"):
            xg.parse_gpus(bad)


def test_worker_gets_gpu_n_modulo_count():
    gpus = ["0", "1", "2"]
    assert [xg.gpu_for_worker(f"gw{n}", gpus) for n in range(7)] == ["0", "1", "2", "0", "1", "2", "0"]
    assert xg.gpu_for_worker("gw1", ["5"]) == "5"
    assert xg.gpu_for_worker("gw0", []) is None
    assert xg.gpu_for_worker("master", gpus) is None


def test_worker_environment_keeps_memory_settings_the_user_made():
    env = xg.worker_environment("gw1", ["4", "6"], lock=False, env={"TF_FORCE_GPU_ALLOW_GROWTH": "false"})
    assert env == {"CUDA_VISIBLE_DEVICES": "6", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert xg.worker_environment("gw0", None, lock=True, env={}) == xg.MEMORY_ENV
    assert xg.worker_environment("gw0", None, lock=False, env={}) == {}


def _fake_nvidia_smi(tmp_path: Path, lines: list[str]) -> str:
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in lines))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


@pytest.mark.skipif(os.name != "posix", reason="a shell script stands in for nvidia-smi")
def test_detect_gpus(tmp_path):
    smi = _fake_nvidia_smi(tmp_path, ["GPU 0: NVIDIA H100 (UUID: GPU-a)", "GPU 1: NVIDIA H100 (UUID: GPU-b)"])
    assert xg.detect_gpus({}, nvidia_smi=smi) == ["0", "1"]
    # CUDA_VISIBLE_DEVICES, when set, is the list (a runner that pins GPUs keeps its pinning)
    assert xg.detect_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, nvidia_smi=smi) == ["2", "3"]
    assert xg.detect_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, nvidia_smi=smi) == []
    assert xg.detect_gpus({}, nvidia_smi=None) == []
    assert xg.detect_gpus({}, nvidia_smi=str(tmp_path / "missing")) == []


def test_gpu_lock_context_manager_is_reentrant_across_calls(tmp_path):
    path = tmp_path / "gpu.lock"
    with xg.gpu_lock(path) as held:
        assert held == path
    with xg.gpu_lock(path):
        pass
