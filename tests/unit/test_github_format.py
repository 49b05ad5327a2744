"""GitHub Actions output, pure: the ::error command's escaping, the test's line, the annotated file, Markdown cells."""

from __future__ import annotations

from pytest_stability.record import StabilityRecord
from pytest_stability.report import github


def test_error_command_escapes_newlines_and_property_separators():
    cmd = github.error_command("a,b.py", 7, "unstable: x", "50% worse\nsecond line")
    assert cmd == "::error file=a%2Cb.py,line=7,title=unstable%3A x::50%25 worse%0Asecond line"


def test_def_line_skips_decorators(tmp_path):
    path = tmp_path / "t.py"
    path.write_text(
        "import pytest\n\n@pytest.mark.stable_training(steps=5)\n@pytest.mark.slow\n"
        "def test_a(stability):\n    pass\n\nclass TestB:\n    @pytest.mark.x\n"
        "    async def test_b(self):\n        pass\n"
    )
    assert github.def_line(path, 2, "test_a") == 5
    assert github.def_line(path, 8, "TestB.test_b[param-1]") == 10
    assert github.def_line(path, 2, "test_missing") == 3
    assert github.def_line(tmp_path / "gone.py", 4, "test_a") == 5


def test_annotation_file_relative_to_workspace_or_rootdir(tmp_path):
    root = tmp_path / "repo" / "project"
    in_repo = {"GITHUB_WORKSPACE": str(tmp_path / "repo")}
    elsewhere = {"GITHUB_WORKSPACE": str(tmp_path / "elsewhere")}
    assert github.annotation_file(root, "tests/t.py", in_repo) == "project/tests/t.py"
    assert github.annotation_file(root, "tests/t.py", elsewhere) == "tests/t.py"
    assert github.annotation_file(root, "tests/t.py", {}) == "tests/t.py"


def test_markdown_cells_escape_pipes_and_newlines():
    record = {
        "nodeid": "t.py::test_a[x|y]",
        "verdict": "unstable",
        "calls": [
            {
                "verdict": "unstable",
                "runs": [
                    {
                        "seed": 0,
                        "verdict": "unstable",
                        "steps_run": 3,
                        "steps_planned": 9,
                        "findings": [{"check": "loss_spike", "step": 2, "message": "a | b\nc"}],
                    }
                ],
            }
        ],
    }
    text = github.markdown([StabilityRecord.from_dict(record)])
    assert "| ❌ unstable | `t.py::test_a[x\\|y]` | 3/9 | [loss_spike] step 2: a \\| b<br>c |" in text


def test_a_stable_tests_cell_shows_its_first_note_and_a_stable_test_without_one_stays_empty():
    def record(nodeid, notes):
        run = {"seed": 0, "verdict": "stable", "steps_run": 80, "steps_planned": 200, "model": {"notes": notes}}
        return {"nodeid": nodeid, "verdict": "stable", "calls": [{"verdict": "stable", "runs": [run]}]}

    note = "the run ended after 80 of 200 steps: epochs=5 ended it"
    records = [
        StabilityRecord.from_dict(record("t.py::test_a", [note])),
        StabilityRecord.from_dict(record("t.py::test_b", [])),
    ]
    text = github.markdown(records)
    assert f"| ✅ stable | `t.py::test_a` | 80/200 | note: {note} |" in text
    assert "| ✅ stable | `t.py::test_b` | 80/200 |  |" in text
