"""The JSON stability report: one schema-versioned, strict-JSON document per run, written atomically.

Document (``schema_version`` 1; keys sorted when written)::

    {
      "schema_version": 1,
      "plugin": {"name": "pytest-stability", "version": "0.1.0"},
      "environment": {"python", "implementation", "platform", "cpu", "pytest", "numpy",
                      "tensorflow", "tensorflow_distribution", "keras", "jax", "torch"},  # null: not installed
                                     # (cpu: unknown); cpu: the model and its widest vector instructions
      "devices": ["CPU"],            # every device a run trained on
      "started_at", "finished_at",   # ISO 8601 UTC; finished_at null while the run goes on
      "duration": 12.3,              # seconds
      "complete": true,              # false in the copies written while tests still run
      "interrupted": false,          # Ctrl-C (KeyboardInterrupt) or pytest.exit()
      "exitstatus": 0,               # null while the run goes on
      "counts": {"tests", "stable", "unstable", "error", "skipped"},
      "tests": [                     # sorted by nodeid
        {"nodeid", "outcome",        # passed / failed / error / skipped / interrupted
         "verdict",                  # stable / unstable / error / skipped
         "error", "skip_reason",     # null unless ...
         "seeds", "failed_seeds", "device", "wall_time",
         "steps_planned", "steps_run",  # of the primary run (first unstable, else first)
         "findings": [...],          # every finding of every run, with "call" and "seed"
         "baseline",                 # null, or the worst comparison: regressed / missing / ok
         "settings": {...},          # the resolved stable_training settings
         "calls": [                  # one per stability.train() call
           {"verdict", "seeds", "failed_seeds", "spread": {metric: {min, median, max}},
                                     # a run an exception stopped (its steps so far, no checks): verdict error
            "baseline": {...},       # with --stability-baseline
            "runs": [{"seed", "verdict", "device", "wall_time", "steps_planned", "steps_run",
                      "replay", "checks", "findings": [{"check", "kind", "step", "value", "limit",
                      "message", "evidence", "cause", "fix", "confidence"}],
                      "summary": {"final_loss", "largest_spike", "spikes", "max_grad_norm",
                                  "p99_grad_norm", "val_trend", "final_val_loss", ...},
                      "curves": {"loss" | "grad_norm" | "lr" | "val_loss" | ...: {"step": [...], "value": [...]}},
                      ...}]}]}
      ]
    }

Non-finite numbers are never written as ``NaN``/``Infinity`` tokens: they are
the strings ``"nan"``, ``"inf"`` and ``"-inf"``
(:func:`pytest_stability.trace.encode_float`), and the file is written with
``allow_nan=False``.  The same content comes out of a serial run and a
pytest-xdist run, apart from timings (``wall_time``, ``duration``, the times).

Pure builtins; importing this module imports neither pytest nor TensorFlow.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .._floats import encode_float
from ..record import StabilityRecord

SCHEMA_VERSION = 1

#: Distributions that provide ``import tensorflow``, most common first.
TENSORFLOW_DISTRIBUTIONS = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-macos",
    "tensorflow-intel",
    "tf-nightly",
    "tf-nightly-cpu",
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


#: the widest vector instructions a CPU's flags (Linux's ``/proc/cpuinfo``) name, widest first: the kernels of
#: TensorFlow, XLA and PyTorch pick their code by them, and with it the order in which they round
_VECTOR_FLAGS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "NEON"))


def cpu_description(cpuinfo: str | None = None) -> str | None:
    """The CPU, as another CPU would round differently: its model and its widest vector instructions, e.g.
    ``"AMD EPYC (x86_64, AVX2)"``, from ``cpuinfo`` (the text of Linux's ``/proc/cpuinfo``, read when None);
    where there is no such file, what ``platform`` knows (the model on Windows, the machine alone, ``"arm64"``, on
    macOS); None where nothing is known."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("cpu model") or ""
    if not cpuinfo.strip():  # no /proc/cpuinfo (Windows names the model here; macOS only "arm" or "i386")
        processor = platform.processor()
        model = processor if processor not in ("", platform.machine(), "arm", "i386") else ""
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    vector = next((name for flag, name in _VECTOR_FLAGS if flag in flags), None)
    details = ", ".join(x for x in (platform.machine(), vector) if x)
    if model:
        return f"{model} ({details})" if details else model
    return details or None


@functools.cache
def _this_cpu() -> str | None:
    """:func:`cpu_description` of this machine, read once (``/proc/cpuinfo`` runs to hundreds of kB on a large
    machine, and the report is written after every test)."""
    return cpu_description()


def environment() -> dict[str, Any]:
    """Python, pytest, numpy, TensorFlow, Keras, JAX and PyTorch versions, from package metadata, and the CPU
    (:func:`cpu_description`).

    Reads installed distributions instead of importing TensorFlow, so a run
    with no stability test does not pay for the import.
    """
    tf_dist, tf_version = None, None
    for dist in TENSORFLOW_DISTRIBUTIONS:
        tf_version = _version(dist)
        if tf_version is not None:
            tf_dist = dist
            break
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": _this_cpu(),
        "pytest": _version("pytest"),
        "numpy": _version("numpy"),
        "tensorflow": tf_version,
        "tensorflow_distribution": tf_dist,
        "keras": _version("keras"),
        "jax": _version("jax"),
        "torch": _version("torch"),
    }


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat(timespec="seconds")


def entry_for(record: StabilityRecord) -> dict[str, Any]:
    """One test's entry: the session record plus flattened per-test facts (see the module docstring)."""
    entry = record.to_dict()
    del entry["worker"]  # which xdist worker ran it is not a result
    runs = record.runs
    entry["seeds"] = sorted({int(r.seed) for r in runs})
    entry["failed_seeds"] = sorted({int(r.seed) for r in runs if r.verdict != "stable"})
    primary = record.primary
    entry["device"] = primary.device if primary else None
    entry["steps_planned"] = primary.steps_planned if primary else None
    entry["steps_run"] = primary.steps_run if primary else None
    entry["wall_time"] = float(sum(float(r.wall_time or 0.0) for r in runs))
    entry["baseline"] = record.worst_baseline
    entry["findings"] = [
        dict(f.to_dict(), call=i, seed=run.seed)
        for i, call in enumerate(record.calls)
        for run in call.runs
        for f in run.findings
    ]
    return entry


def build_document(
    records: Iterable[StabilityRecord],
    *,
    plugin_version: str,
    started: float | None,
    finished: float | None,
    now: float,
    exitstatus: int | None,
    interrupted: bool,
    complete: bool,
) -> dict[str, Any]:
    """The report document (builtins) for ``records``; see the module docstring."""
    records = list(records)
    tests = sorted((entry_for(r) for r in records), key=lambda e: e["nodeid"])
    counts = {"tests": len(tests)}
    for verdict in ("stable", "unstable", "error", "skipped"):
        counts[verdict] = sum(t["verdict"] == verdict for t in tests)
    devices = sorted({run.device for r in records for run in r.runs if run.device})
    return {
        "schema_version": SCHEMA_VERSION,
        "plugin": {"name": "pytest-stability", "version": plugin_version},
        "environment": environment(),
        "devices": devices,
        "started_at": iso_time(started),
        "finished_at": iso_time(finished),
        "duration": float(now - started) if started is not None else None,
        "complete": complete,
        "interrupted": interrupted,
        "exitstatus": exitstatus,
        "counts": counts,
        "tests": tests,
    }


def strict(obj: Any) -> Any:
    """``obj`` as strict-JSON builtins: NaN/Inf as strings, tuples as lists, numpy scalars as numbers.

    A hook implementation may add values that are not builtins; anything else
    raises ``TypeError`` naming the type and where it was found.
    """
    return _strict(obj, "document")


def _strict(obj: Any, where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return encode_float(obj) if not math.isfinite(obj) else obj
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-string key {k!r} ({type(k).__name__})")
            out[k] = _strict(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_strict(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item) and getattr(obj, "shape", None) == ():
        return _strict(item(), where)
    raise TypeError(f"{where} is a {type(obj).__name__}, which JSON cannot hold: {obj!r:.80}")


def dumps(document: Any, *, indent: int | None = None) -> str:
    """Strict JSON text (``allow_nan=False``, sorted keys) with a final newline.

    Compact by default; ``indent`` for files that are committed and reviewed as diffs (baselines).
    """
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(strict(document), allow_nan=False, sort_keys=True, separators=separators, indent=indent) + "\n"


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part.

    The temporary file is created in the target directory, so ``os.replace``
    never crosses a file system (Hypothesis needed an EXDEV fallback when its
    temp file lived elsewhere).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = [
    "SCHEMA_VERSION",
    "build_document",
    "cpu_description",
    "dumps",
    "environment",
    "entry_for",
    "strict",
    "write_atomic",
]
