"""--stability-tensorboard=DIR: each stability run's full per-step trace as TensorBoard event files, read back."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from pytest_stability.report.tensorboard import run_dir_name  # noqa: E402

HEALTHY = "test_tb.py::test_healthy"
DIVERGES = "test_tb.py::test_diverges"


def read_run(directory: Path) -> EventAccumulator:
    files = list(directory.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalar_steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def findings(acc: EventAccumulator) -> list[tuple[int, str]]:
    if "findings" not in acc.Tags()["tensors"]:
        return []
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors("findings")]


def check_runs(logdir: Path) -> None:
    assert sorted(p.name for p in logdir.iterdir()) == sorted([run_dir_name(DIVERGES, 0), run_dir_name(HEALTHY, 0)])

    healthy = read_run(logdir / run_dir_name(HEALTHY, 0))
    scalars = set(healthy.Tags()["scalars"])
    assert {"loss", "grad_norm", "lr", "val_loss"} <= scalars
    assert not any(tag.startswith("grad_norm/") for tag in scalars)  # per-variable norms are off by default
    assert scalar_steps(healthy, "loss") == list(range(40))  # full resolution: every step
    assert scalar_steps(healthy, "grad_norm") == list(range(40))
    assert scalar_steps(healthy, "lr") == list(range(40))
    assert scalar_steps(healthy, "update_ratio") == list(range(40))
    # validation at the first read-back at or after each 20 steps; 16-step epochs end chunks too
    assert scalar_steps(healthy, "val_loss") == [0, 32, 40]
    assert findings(healthy) == []

    diverges = read_run(logdir / run_dir_name(DIVERGES, 0))
    assert scalar_steps(diverges, "loss") == [0, 1, 2]  # training stopped at the non-finite step
    text = findings(diverges)
    assert [step for step, _ in text] == [1, 2]
    assert text[0][1].startswith("**[grad_norm] step 1**")
    assert text[1][1].startswith("**[nonfinite] step 2**")


def test_event_files_per_test_and_seed(pytester, scenario):
    scenario("healthy", "diverges", "plain", module="test_tb")
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-tensorboard=tb")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    check_runs(pytester.path / "tb")

    # a second run into the same directory replaces each run's events (no overlapping steps)
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-tensorboard=tb", "-k", "healthy")
    result.assert_outcomes(passed=1)
    check_runs(pytester.path / "tb")


def test_xdist_writes_the_same_runs(pytester, scenario):
    pytest.importorskip("xdist")
    scenario("healthy", "diverges", module="test_tb")
    pytester.makeini("[pytest]\nstability_tensorboard = logs/tb\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=1, failed=1)
    check_runs(pytester.path / "logs" / "tb")


def test_per_variable_gradient_norms_and_seeds(pytester, scenario, recorded):
    scenario("two", module="test_tb")
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        *recorded.args("scenarios"),
        "--stability-tensorboard=tb",
        "--stability-tensorboard-per-variable",
    )
    result.assert_outcomes(passed=1)
    runs = sorted(p.name for p in (pytester.path / "tb").iterdir())
    assert runs == [run_dir_name("test_tb.py::test_two", 0), run_dir_name("test_tb.py::test_two", 1)]
    acc = read_run(pytester.path / "tb" / runs[1])
    per_var = sorted(t for t in acc.Tags()["scalars"] if t.startswith("grad_norm/"))
    assert per_var == [
        "grad_norm/mlp/hidden/bias",
        "grad_norm/mlp/hidden/kernel",
        "grad_norm/mlp/out/bias",
        "grad_norm/mlp/out/kernel",
    ]
    assert all(scalar_steps(acc, t) == list(range(12)) for t in per_var)


def test_writing_needs_no_tensorflow(tmp_path):
    """The writer works on the JAX and PyTorch backends: nothing it imports pulls in TensorFlow."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None  # any "import tensorflow" now raises ImportError
        import numpy as np
        from pytest_stability.trace import Trace
        from pytest_stability.checks import run_checks
        from pytest_stability.report import RunReport, StabilityReport
        from pytest_stability.report.tensorboard import write_report
        loss = np.linspace(1, 0.5, 30)
        loss[20] = float("nan")
        trace = Trace(loss=loss, grad_norm=np.ones(30), lr=np.full(30, 1e-3), update_ratio=np.full(30, 1e-3),
                      val_steps=[0, 15, 30], val_loss=[1.0, 0.8, 0.7], info={{"bn_train_infer_gap": 0.4}})
        run = RunReport(seed=0, trace=trace, results=run_checks(trace), device="CPU", wall_time=0.1)
        paths = write_report({str(tmp_path)!r}, "t.py::test_a", StabilityReport("t.py::test_a", [run]))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "jax", "torch")
                       and sys.modules[m] is not None)
        print(len(paths), [f.check for f in run.findings], heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1 ['nonfinite'] []"
    acc = read_run(tmp_path / "t.py__test_a-seed0")
    assert set(acc.Tags()["scalars"]) == {"loss", "grad_norm", "lr", "update_ratio", "val_loss", "bn_train_infer_gap"}
    assert [e.step for e in acc.Scalars("bn_train_infer_gap")] == [29]
    assert [step for step, _ in findings(acc)] == [20]


def test_without_the_tensorboard_package_is_a_usage_error(pytester, monkeypatch):
    import pytest_stability.report.tensorboard as tb

    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-tensorboard=tb")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "  --stability-tensorboard needs the tensorboard package: pip install 'pytest-stability[tensorboard]'"
        in result.stderr.lines
    )


def test_under_gradient_accumulation_the_update_ratio_is_written_at_the_updates(tmp_path):
    """``gradient_accumulation_steps=4``: the steps between updates have no update ratio (NaN in the trace), and
    TensorBoard gets the updates alone, not a NaN marker three steps in four; every other scalar every step."""
    import numpy as np

    from pytest_stability.checks import run_checks
    from pytest_stability.report import RunReport, StabilityReport
    from pytest_stability.report.tensorboard import write_report
    from pytest_stability.trace import Trace

    update = np.full(40, np.nan)
    update[3::4] = 1e-3
    trace = Trace(
        loss=np.linspace(1, 0.5, 40),
        grad_norm=np.ones(40),
        lr=np.full(40, 1e-3),
        update_ratio=update,
        info={"gradient_accumulation_steps": 4},
    )
    run = RunReport(seed=0, trace=trace, results=run_checks(trace), device="CPU", wall_time=0.1)
    write_report(tmp_path, "t.py::test_a", StabilityReport("t.py::test_a", [run]))
    acc = read_run(tmp_path / "t.py__test_a-seed0")
    assert scalar_steps(acc, "update_ratio") == list(range(3, 40, 4))
    assert scalar_steps(acc, "loss") == scalar_steps(acc, "grad_norm") == list(range(40))
