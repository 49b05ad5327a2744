"""The README's commands, and the generated parts of the documentation, say what the code and CI do."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    """The README's opening commands: the indented lines before its first rule."""
    head = (ROOT / "README.md").read_text(encoding="utf-8").split("\n---\n")[0]
    return [line.strip() for line in head.splitlines() if line.startswith("    ")]


def test_the_readmes_test_command_is_exactly_what_ci_runs():
    example, suite = _readme_commands()
    assert "cd example_project" in example and "-m pytest" in example
    steps = suite.split(" && ")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert steps[0] == "python3 -m venv .venv" and steps[0] in ci
    assert steps[1] == '.venv/bin/pip install --no-compile -e ".[test]"'
    assert any(line.endswith('--no-compile -e ".[test]"') and "pip install" in line for line in ci)
    assert steps[2:] == [line for line in ci if " -m pytest " in line]
    assert all("--durations=15" in step for step in steps[2:])


def _hook():
    spec = importlib.util.spec_from_file_location("settings_page", ROOT / "docs" / "_hooks" / "settings_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_settings_page_lists_every_setting_of_the_plugin():
    from pytest_stability.integrations import ci
    from pytest_stability.options import OPTIONS, PATH_SETTINGS

    hook = _hook()
    page = hook.render((ROOT / "docs" / "settings.md").read_text(encoding="utf-8"))
    assert hook.TEST_MARK not in page and hook.RUN_MARK not in page
    for option in OPTIONS:
        assert f"| `{option.name}`<br>`{option.cli}`<br>`{option.ini}` |" in page, option.name
    names = [name for name, _, _ in PATH_SETTINGS] + [name for name, *_ in ci.SETTINGS] + ["baseline_strict"]
    for name in names:
        assert re.search(rf"\| `--stability-{name.replace('_', '-')}(=\w+)?` \| `stability_{name}` \|", page), name
    assert "| `--stability-replay=SEED` | - |" in page
    assert "| `--stability-html=PATH` | `stability_html` |" in page


def test_the_reports_page_shows_the_json_layout_from_its_writer():
    hook = _hook()
    page = hook.render((ROOT / "docs" / "reports.md").read_text(encoding="utf-8"))
    assert hook.SCHEMA_MARK not in page
    block = page.split("```\n{", 1)[1].split("\n```", 1)[0]
    assert '"schema_version": 1,' in block and '"tests": [' in block


def test_every_page_of_the_docs_is_in_the_navigation_and_every_included_file_exists():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert pages == set(re.findall(r":\s+([\w-]+\.md)$", config, flags=re.M))
    for page in (ROOT / "docs").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for included in re.findall(r'--8<-- "([^"]+)"', text):
            assert (ROOT / included).is_file(), f"{page.name} includes {included}, which does not exist"
        # an include written otherwise is printed as it stands: getting-started.md showed its first test as
        # '--8 < --"docs/examples/stability_first.py"', after a formatter read it as Python in its code fence
        for line in text.splitlines():
            if line.replace(" ", "").startswith("--8"):
                assert re.fullmatch(r'--8<-- "[^"]+"', line.strip()), f"{page.name}: {line!r} is no snippet include"
