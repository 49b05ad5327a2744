"""TensorBoard event files of every stability run, at full resolution (``--stability-tensorboard=DIR``).

One TensorBoard *run* per test and seed: ``DIR/<node id, sanitized>-seed<k>``
(``-call<n>`` is added for a test's second and later ``stability.train()``
calls).  Each run holds the per-step scalars ``loss``, ``grad_norm``, ``lr``,
``update_ratio`` (when recorded), every other scalar the ``train_step`` reports (a GAN's ``d_loss``,
``g_loss``), per optimizer ``grad_norm/<name>``, ``lr/<name>``, ``update_ratio/<name>`` when it applies
several, ``val_loss`` at the validation steps,
``bn_train_infer_gap`` (BatchNorm models), optionally one ``grad_norm/<variable>``
per trainable variable, and each finding as a text summary (tag ``findings``)
at its step.  ``tensorboard --logdir DIR`` shows them.

Written from the process that trains (an xdist worker, where the full trace
lives: only downsampled curves travel to the controller), by an implementation
of ``pytest_stability_run_finished`` (and of ``pytest_stability_run_stopped``:
a call an exception stopped, the steps it recorded before it), so ``-n 2``
writes the same runs as a serial run.

The writer is the ``tensorboard`` package's: its ``RecordWriter`` (TFRecord
framing with masked crc32c) and its ``Event``/``Summary`` protocol buffers.
Its ``EventFileWriter`` is deliberately not used: it creates files through
``tensorboard.compat.tf``, which imports TensorFlow whenever TensorFlow is
installed (seconds, and GPU memory, in a JAX or PyTorch run).  The record
writer and protos import no framework.  ``tensorboard`` is imported only by
:func:`write_report`, never at plugin load.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..checks.base import Finding
    from .runs import RunReport, StabilityReport

INSTALL_HINT = "pip install 'pytest-stability[tensorboard]'"
MISSING_MESSAGE = f"--stability-tensorboard needs the tensorboard package: {INSTALL_HINT}"

#: Scalar tags of the per-step series, and the text tag of the findings.
SCALAR_TAGS = ("loss", "grad_norm", "lr", "update_ratio", "val_loss", "bn_train_infer_gap")
FINDINGS_TAG = "findings"
#: Prefix of the per-variable gradient norm tags (``grad_norm/dense/kernel``).
VAR_GRAD_PREFIX = "grad_norm/"


def tensorboard_available() -> bool:
    """Whether the writer's package can be imported (checked at configure time, without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        return False


def run_dir_name(nodeid: str, seed: int, call_index: int = 0) -> str:
    """The TensorBoard run directory of one seed's run: readable, safe on every OS, unique per node id.

    ``tests/test_x.py::test_y[a/b]`` seed 0 -> ``tests_test_x.py__test_y[a_b]-seed0``.
    """
    stem = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", nodeid.replace("::", "__")).strip("._") or "test"
    if len(stem) > 120:  # file systems limit a name to 255 bytes; keep it unique with a digest
        stem = f"{stem[:110]}-{hashlib.sha1(nodeid.encode('utf-8')).hexdigest()[:8]}"
    suffix = f"-seed{int(seed)}"
    if call_index:
        suffix += f"-call{int(call_index)}"
    return stem + suffix


def _finite_or_nan(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


class _EventFile:
    """One ``events.out.tfevents.*`` file, written synchronously (a run's trace is written at once)."""

    def __init__(self, directory: Path) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        directory.mkdir(parents=True, exist_ok=True)
        # Same name scheme as TensorBoard's own writer, which its loader sorts by.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.pytest-stability"
        self.path = directory / name
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._writer = RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())

    def scalars(self, tag: str, steps: Iterable[int], values: Iterable[float], wall_time: float) -> int:
        """One scalar event per step (NaN/Inf are written as such: they are what the run did)."""
        n = 0
        for step, value in zip(steps, values, strict=True):
            summary = self._summary_pb2.Summary(
                value=[self._summary_pb2.Summary.Value(tag=tag, simple_value=_finite_or_nan(value))]
            )
            self._write(self._event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary))
            n += 1
        return n

    def text(self, tag: str, step: int, text: str, wall_time: float) -> None:
        """A text summary (TensorBoard's Text dashboard renders it as Markdown)."""
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

        metadata = self._summary_pb2.SummaryMetadata(
            plugin_data=self._summary_pb2.SummaryMetadata.PluginData(plugin_name="text")
        )
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        )
        summary = self._summary_pb2.Summary(
            value=[self._summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)]
        )
        self._write(self._event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary))

    def close(self) -> None:
        self._writer.flush()
        self._file.close()


def _finding_text(finding: Finding) -> str:
    lines = [f"**[{finding.check}] step {finding.step}**: {finding.message}"]
    if getattr(finding, "cause", ""):
        conf = f" ({finding.confidence})" if getattr(finding, "confidence", "") else ""
        lines.append(f"cause{conf}: {finding.cause}")
    if getattr(finding, "fix", ""):
        lines.append(f"fix to try: {finding.fix}")
    return "\n\n".join(lines)


def write_run(directory: Path, run: RunReport, *, per_variable: bool = False) -> Path:
    """Write one seed's run (a :class:`~pytest_stability.report.RunReport`) into ``directory``.

    Event files a previous run of the same test left there are removed first,
    so TensorBoard shows the latest run, not two overlapping ones.

    Returns:
        The path of the event file written.
    """
    import numpy as np

    directory = Path(directory)
    if directory.is_dir():
        for old in directory.glob("events.out.tfevents.*"):
            old.unlink()
    trace = run.trace
    wall = time.time()
    steps = np.arange(trace.steps)
    out = _EventFile(directory)
    try:
        if trace.loss_recorded:  # a loss never recorded is no scalar of NaN
            out.scalars("loss", steps, trace.loss.tolist(), wall)
        # under gradient accumulation the steps between updates have no update ratio (NaN): the updates alone
        accumulating = int((trace.info or {}).get("gradient_accumulation_steps") or 1) > 1

        def optimizer_scalars(tag: str, name: str, series: np.ndarray) -> None:
            values = np.asarray(series)
            at = np.isfinite(values) if accumulating and tag == "update_ratio" else np.ones(len(steps), bool)
            out.scalars(name, steps[at], values[at].tolist(), wall)

        for tag in ("grad_norm", "lr", "update_ratio"):
            series = getattr(trace, tag, None)
            if series is not None:
                optimizer_scalars(tag, tag, series)
        if "loss_scale" in trace.opt_stats:  # mixed precision: the loss scale each step's gradients carried
            out.scalars("loss_scale", steps, np.asarray(trace.opt_stats["loss_scale"]).tolist(), wall)
        for name, values in trace.curves.items():  # a GAN's d_loss and g_loss, metrics
            out.scalars(name, steps, np.asarray(values).tolist(), wall)
        for name, stats in trace.optimizers.items():  # per optimizer, when the train_step applies several
            for tag in ("grad_norm", "lr", "update_ratio"):
                optimizer_scalars(tag, f"{tag}/{name}", stats[tag])
        if trace.val_steps is not None and trace.val_loss is not None:
            out.scalars("val_loss", trace.val_steps.tolist(), trace.val_loss.tolist(), wall)
        gap = (trace.info or {}).get("bn_train_infer_gap")
        if isinstance(gap, (list, tuple)) and trace.val_steps is not None and len(gap) == len(trace.val_steps):
            out.scalars("bn_train_infer_gap", trace.val_steps.tolist(), gap, wall)
        elif isinstance(gap, (int, float)) and not isinstance(gap, bool):
            # the largest gap over the run's validation points: one point, at the last step
            out.scalars("bn_train_infer_gap", [max(trace.steps - 1, 0)], [gap], wall)
        if per_variable and trace.var_grad_norms is not None:
            for j, name in enumerate(trace.var_names):
                out.scalars(VAR_GRAD_PREFIX + name, steps, trace.var_grad_norms[:, j].tolist(), wall)
        for finding in run.findings:
            out.text(FINDINGS_TAG, finding.step, _finding_text(finding), wall)
    finally:
        out.close()
    return out.path


def write_report(
    logdir: Path, nodeid: str, report: StabilityReport, *, call_index: int = 0, per_variable: bool = False
) -> list[Path]:
    """Write every seed's run of one ``train()`` call; returns the event files."""
    return [
        write_run(Path(logdir, run_dir_name(nodeid, run.seed, call_index)), run, per_variable=per_variable)
        for run in report.runs
    ]


__all__ = [
    "FINDINGS_TAG",
    "INSTALL_HINT",
    "MISSING_MESSAGE",
    "SCALAR_TAGS",
    "VAR_GRAD_PREFIX",
    "run_dir_name",
    "tensorboard_available",
    "write_report",
    "write_run",
]
