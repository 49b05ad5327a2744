"""What loading the plugin costs a pytest run that has no stability tests.

pytest imports every installed ``pytest11`` entry point on every run, so the
plugin's import path must stay light and must not import TensorFlow or Keras
(importing TensorFlow alone takes seconds).

Two measurements:

1. ``pytest --collect-only -q`` on a small generated project (a few trivial
   tests, no stability tests), with the plugin loaded and with
   ``-p no:stability``, interleaved over many repetitions; the median of the
   paired differences is the plugin's cost.
2. ``python -X importtime -c "import pytest; import pytest_stability.plugin"``:
   the import time attributed to ``pytest_stability`` modules, and the check
   that no ``tensorflow`` / ``keras`` module was imported (the script exits 1
   if one was).

Usage::

    python benchmarks/import_time.py [--reps 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 20.0
HEAVY = ("tensorflow", "keras", "tf_keras", "jax", "torch")

TRIVIAL_TESTS = """
import pytest


def test_add():
    assert 1 + 1 == 2


@pytest.mark.parametrize("n", range(5))
def test_param(n):
    assert n >= 0


class TestThing:
    def test_a(self):
        assert "a".upper() == "A"

    def test_b(self):
        assert [1, 2][::-1] == [2, 1]
"""


def _make_project(root: Path) -> None:
    (root / "pytest.ini").write_text("[pytest]\n")
    for name in ("test_one.py", "test_two.py", "test_three.py"):
        (root / name).write_text(TRIVIAL_TESTS)


def _run(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pytest {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def collect_overhead(reps: int) -> tuple[float, float, float]:
    """Median collect-only wall time with and without the plugin, and the median paired difference (ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _make_project(root)
        base = ["--collect-only", "-q", "-p", "no:cacheprovider"]
        # The plugin must really be active in the "with" runs.
        markers = subprocess.run(
            [sys.executable, "-m", "pytest", "--markers"], cwd=root, capture_output=True, text=True
        ).stdout
        if "stable_training" not in markers:
            raise SystemExit("the stability plugin is not loaded (no stable_training marker): is it installed?")
        for _ in range(2):  # warm the page cache and .pyc files for both variants
            _run(base, root)
            _run(base + ["-p", "no:stability"], root)
        with_plugin, without = [], []
        for rep in range(reps):
            pair = [(with_plugin, base), (without, base + ["-p", "no:stability"])]
            for bucket, args in pair if rep % 2 == 0 else pair[::-1]:
                bucket.append(_run(args, root))
        diffs = [(a - b) * 1000 for a, b in zip(with_plugin, without, strict=True)]
        return statistics.median(with_plugin) * 1000, statistics.median(without) * 1000, statistics.median(diffs)


def import_profile() -> tuple[float, float, list[str]]:
    """(ms for pytest_stability imports, ms of that spent importing numpy, heavy modules imported)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pytest; import pytest_stability.plugin"],
        capture_output=True,
        text=True,
        check=True,
    )
    own_us = numpy_us = 0
    heavy = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        body = line[len("import time:") :]
        _self_us, cumulative_us, name = body.split("|", 2)
        name = name.rstrip()[1:]  # one separator space, then two per nesting level
        module = name.strip()
        if module.split(".")[0] in HEAVY:
            heavy.append(module)
        if name == module and module.startswith("pytest_stability"):
            # Top level entries only (no indentation): their cumulative time
            # already includes everything they imported first.
            own_us += int(cumulative_us)
        if module == "numpy":
            numpy_us = int(cumulative_us)  # numpy is not imported by pytest itself
    return own_us / 1000, numpy_us / 1000, heavy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="interleaved repetitions of each variant")
    args = parser.parse_args(argv)

    import_ms, numpy_ms, heavy = import_profile()
    print(
        f"python -X importtime: pytest_stability.* imports take {import_ms:.1f} ms after pytest, "
        f"of which {numpy_ms:.1f} ms importing numpy"
    )
    print("heavy modules imported by the plugin: " + (", ".join(sorted(set(heavy))[:10]) or "none"))

    with_ms, without_ms, diff_ms = collect_overhead(args.reps)
    print(f"pytest --collect-only -q, {args.reps} interleaved runs each (medians):")
    print(f"  with the plugin      {with_ms:8.1f} ms")
    print(f"  -p no:stability      {without_ms:8.1f} ms")
    print(f"  difference (paired)  {diff_ms:8.1f} ms  (target < {TARGET_MS:.0f} ms)")
    failed = bool(heavy)
    if diff_ms >= TARGET_MS:
        print("  over target")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
