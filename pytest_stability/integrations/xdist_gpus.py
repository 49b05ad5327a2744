"""GPUs under pytest-xdist: one GPU per worker (``--stability-xdist-gpus``), or one test at a time
(``--stability-gpu-lock``).

Without this, every xdist worker sees every GPU, and TensorFlow (and JAX) in
each worker reserves nearly all the memory of the first one: the second worker
fails with an out-of-memory error.

* ``--stability-xdist-gpus=auto`` (or ``0,1``): worker ``gwN`` gets
  ``CUDA_VISIBLE_DEVICES=<gpus[N % len(gpus)]>``.  ``auto`` means the GPUs
  ``CUDA_VISIBLE_DEVICES`` already lists when it is set (a CI runner that pins
  GPUs keeps its pinning), else those ``nvidia-smi -L`` lists; no framework is
  imported to find them.
* ``--stability-gpu-lock``: a test that uses the ``stability`` fixture holds an
  exclusive file lock (one per visible GPU set) while its body runs, so tests on
  different workers (or in different pytest runs on the machine) take the GPU
  one at a time.
* Either option also sets ``TF_FORCE_GPU_ALLOW_GROWTH=true`` (TensorFlow
  allocates as it needs instead of reserving the whole GPU) and
  ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (the same for JAX) in each worker,
  unless they are already set: a value you set wins.

The environment must be set before any framework is imported: a conftest.py
that imports TensorFlow at its top runs before ``pytest_configure``.  So the
worker sets it from ``pytest_load_initial_conftests``, which pytest calls
before loading conftest files; xdist has put the worker id into the
environment (``PYTEST_XDIST_WORKER``) before that, and the worker parses the
same command line and ini file as the controller.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: The environment a worker is given besides CUDA_VISIBLE_DEVICES (set only where unset).
MEMORY_ENV = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}

XDIST_GPUS_HELP = (
    "give each pytest-xdist worker its own GPU: 'auto' (the GPUs CUDA_VISIBLE_DEVICES lists, else "
    "those nvidia-smi lists) or a comma list of GPU ids, e.g. 0,1; worker gwN gets "
    "CUDA_VISIBLE_DEVICES=<id N modulo the count>"
)
GPU_LOCK_HELP = (
    "let stability tests take the GPU one at a time (a file lock around each test that uses the "
    "`stability` fixture; for several xdist workers on one GPU)"
)


class GpuSpecError(ValueError):
    """A bad --stability-xdist-gpus value; the message says what is expected."""


def parse_gpus(text: str) -> list[str] | None:
    """``"auto"`` -> None (detect); ``"0,1"`` -> ``["0", "1"]``.

    Raises:
        GpuSpecError: for anything else (empty, non-integer ids, duplicates are allowed: ``0,0,1``
            gives GPU 0 two workers).
    """
    raw = str(text).strip()
    if raw.lower() == "auto":
        return None
    items = [part.strip() for part in raw.split(",")]
    if not raw or any(not part.isdigit() for part in items):
        raise GpuSpecError(f"'auto' or a comma list of GPU ids such as 0,1, received {text!r}")
    return items


def detect_gpus(env: Mapping[str, str] | None = None, nvidia_smi: str | None = "auto") -> list[str]:
    """The GPUs this machine offers, without importing a framework.

    Args:
        env: the environment (default ``os.environ``); a non-empty ``CUDA_VISIBLE_DEVICES``
            (other than ``-1``) is taken as the list.
        nvidia_smi: path of ``nvidia-smi``; ``"auto"`` looks it up on PATH, None skips it.

    Returns:
        GPU ids as strings (``["0", "1"]``), empty when none was found.
    """
    import shutil
    import subprocess

    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return [] if ids in (["-1"], []) else ids
    exe = shutil.which("nvidia-smi") if nvidia_smi == "auto" else nvidia_smi
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def worker_index(worker_id: str) -> int | None:
    """``"gw3"`` -> 3; None for anything that is not an xdist worker id."""
    if worker_id.startswith("gw") and worker_id[2:].isdigit():
        return int(worker_id[2:])
    return None


def gpu_for_worker(worker_id: str, gpus: Sequence[str]) -> str | None:
    """The CUDA_VISIBLE_DEVICES value of worker ``gwN``: ``gpus[N % len(gpus)]`` (None without GPUs)."""
    index = worker_index(worker_id)
    if index is None or not gpus:
        return None
    return gpus[index % len(gpus)]


def worker_environment(
    worker_id: str, gpus: Sequence[str] | None, *, lock: bool, env: Mapping[str, str]
) -> dict[str, str]:
    """The variables to set in a worker (pure: the caller applies them).

    ``gpus`` None means the option is off; ``lock`` is ``--stability-gpu-lock``.
    """
    changes: dict[str, str] = {}
    if gpus is not None:
        gpu = gpu_for_worker(worker_id, gpus)
        if gpu is not None:
            changes["CUDA_VISIBLE_DEVICES"] = gpu
    if gpus is not None or lock:
        changes.update({k: v for k, v in MEMORY_ENV.items() if k not in env})
    return changes


def _ini_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _cli(config: pytest.Config, dest: str) -> Any:
    value = config.getoption(dest, None)
    if value is None:
        # Before pytest_configure (pytest_load_initial_conftests) only the early parse has the options.
        value = getattr(getattr(config, "known_args_namespace", None), dest, None)
    return value


def read_settings(config: pytest.Config) -> tuple[str | None, bool]:
    """The raw ``--stability-xdist-gpus`` text (CLI > ini) and whether the GPU lock is on."""
    gpus = _cli(config, "stability_xdist_gpus")
    if gpus is None:
        ini = config.getini("stability_xdist_gpus")
        gpus = ini if ini not in (None, "") else None
    lock = _cli(config, "stability_gpu_lock")
    if lock is None:
        lock = _ini_bool(config.getini("stability_gpu_lock"))
    return gpus, bool(lock)


def validate(config: pytest.Config) -> list[str]:
    """Problems with the GPU settings (for the run's one usage error)."""
    gpus, _ = read_settings(config)
    if gpus is None:
        return []
    try:
        parse_gpus(gpus)
    except GpuSpecError as exc:
        return [f"--stability-xdist-gpus: expected {exc}"]
    return []


def configure_worker_environment(early_config: pytest.Config) -> dict[str, str]:
    """In an xdist worker, before conftest files load: set its GPU and memory environment.

    Returns the variables set (empty outside a worker or with the options off).
    Invalid settings are left to the controller, which reports them.
    """
    worker_id = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker_id:
        return {}
    try:
        text, lock = read_settings(early_config)
        gpus = None if text is None else (parse_gpus(text) or None)
        if text is not None and gpus is None:
            gpus = detect_gpus()
    except (GpuSpecError, ValueError):
        return {}
    changes = worker_environment(worker_id, gpus, lock=lock, env=os.environ)
    os.environ.update(changes)
    return changes


def lock_path(env: Mapping[str, str] | None = None) -> Path:
    """The lock file of the GPU set this process sees (one lock per CUDA_VISIBLE_DEVICES value)."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "_") or "all"
    user = os.environ.get("USER") or str(getattr(os, "getuid", lambda: "")())
    return Path(tempfile.gettempdir(), f"pytest-stability-gpu-{user}-{visible}.lock")


@contextmanager
def gpu_lock(path: Path | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (blocking) for the duration of the block.

    ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows: the operating system
    releases it when the process dies, so a crashed worker never leaves the GPU locked.
    """
    path = lock_path() if path is None else path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows
            # (msvcrt's locking names exist only in the stubs for Windows: hence the type: ignores below)
            import msvcrt

            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined,unused-ignore]
                    break
                except OSError:  # LK_LOCK gives up after ~10 s: try again
                    continue
            try:
                yield path
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined,unused-ignore]
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class GpuLockPlugin:
    """Registered with ``--stability-gpu-lock``: runs the body of each ``stability`` test under :func:`gpu_lock`."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        if "stability" not in getattr(item, "fixturenames", ()):
            return (yield)
        with gpu_lock():
            return (yield)


__all__ = [
    "GPU_LOCK_HELP",
    "GpuLockPlugin",
    "GpuSpecError",
    "MEMORY_ENV",
    "XDIST_GPUS_HELP",
    "configure_worker_environment",
    "detect_gpus",
    "gpu_for_worker",
    "gpu_lock",
    "lock_path",
    "parse_gpus",
    "read_settings",
    "validate",
    "worker_environment",
    "worker_index",
]
