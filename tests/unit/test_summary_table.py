"""The README's detection table is what ``benchmarks/summary.py`` makes of the committed result files."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.summary import collect, fix_success, table  # noqa: E402
from pytest_stability.diagnosis import FIX_SUCCESS  # noqa: E402


def test_the_readme_shows_the_table_the_result_files_give():
    assert table() in (ROOT / "README.md").read_text(), "run: python benchmarks/summary.py, and paste it in the README"


def test_the_fix_success_a_report_quotes_is_the_result_files():
    # the report ranks fixes by, and quotes, the what-if replay's success of a first fix per cause
    assert fix_success() == FIX_SUCCESS, "run: python benchmarks/summary.py, and copy FIX_SUCCESS to diagnosis.py"


def test_each_family_comes_from_the_latest_file_that_holds_it(tmp_path):
    def result(title: str, rows: str, healthy: int, disagree: str = "-") -> str:
        head = "| pathology | check | detected | right cause | expected cause (got) | x | first | y | s |\n"
        out = [f"## {title}\n"]
        for b in ("tensorflow", "jax", "torch"):
            out.append(f"### {b}: pathologies\n\n{head}|---|\n{rows}\n")
            out.append(
                f"### {b}: healthy runs\n\n{healthy} runs (1 scenarios); runs failing any check: 0 % (0/{healthy})\n"
            )
        out.append(
            "### Agreement between backends\n\n| group | pairs | a | b | d |\n|---|\n"
            f"| pathology | 3 | | | {disagree} |\n"
        )
        return "\n".join(out)

    row = "| fam | stuck | {c} | {r} | vanished_gradients (vanished_gradients: 3) |  | - | - | 1 |"
    (tmp_path / "old.md").write_text(result("old", row.format(c="100 % (3/3)", r="33 % (1/3)"), 5, "fam/1 (x)"))
    (tmp_path / "new.md").write_text(result("new", row.format(c="100 % (3/3)", r="100 % (3/3)"), 7))
    families, healthy = collect(tmp_path, (("old.md", ("torch",)), ("new.md", ("tensorflow", "jax"))))
    fam = families["fam"]
    assert (fam.source, fam.named["jax"], fam.pairs, fam.disagree) == ("new.md", (3, 3), 3, 0)
    # each file's healthy runs count for the backends named with it
    assert healthy == {"tensorflow": (0, 7), "jax": (0, 7), "torch": (0, 5)}
