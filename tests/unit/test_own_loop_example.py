"""docs/writing-tests.md's example of the checks and the diagnosis on a trace from your own training loop: the
code as the page gives it, run on the data the page describes, prints the output the page shows."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

PAGE = Path(__file__).resolve().parents[2] / "docs" / "writing-tests.md"


def test_the_own_loop_example_prints_what_the_page_shows():
    text = PAGE.read_text()
    section = text.split("## The checks on your own training loop", 1)[1]
    blocks = re.findall(r"```(python)?\n(.*?)```", section, flags=re.S)
    code = [body for lang, body in blocks if lang == "python"]
    shown = next(body for lang, body in blocks if not lang)
    rng = np.random.default_rng(0)
    # the page's run: a loss that fell to 0.06 over 200 steps, then jumped to 2 and stayed, its gradient norm 80x
    my_losses = np.r_[np.geomspace(1.0, 0.05, 200), np.full(100, 2.0)] * np.exp(0.05 * rng.normal(size=300))
    my_grad_norms = np.r_[np.full(200, 0.5), np.full(100, 40.0)] * np.exp(0.1 * rng.normal(size=300))
    assert len(code) == 2 and "run_checks" in code[0] and "diagnose" in code[1]
    scope = {"my_losses": my_losses, "my_grad_norms": my_grad_norms}
    first, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(first):
        exec(code[0], scope)
    with contextlib.redirect_stdout(out):
        exec(code[1], scope)  # the diagnosis example, after the first (its imports)
    assert first.getvalue().startswith("loss_spike failed")
    assert out.getvalue().strip() == shown.strip()
