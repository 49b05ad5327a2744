"""Where the benchmarks write their measured tables."""

from __future__ import annotations

from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, text: str) -> Path:
    """Write ``text`` to ``results/NAME`` atomically: a half-written table never replaces a whole one."""
    path = RESULTS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
