"""Where CI users look on GitHub: error annotations at the test, and a Markdown stability report.

* When ``GITHUB_ACTIONS=true``, each unstable test (and each test that regressed
  against ``--stability-baseline``) gets one ``::error file=...,line=...,title=...::``
  workflow command, printed by the controller at the end of the run, so GitHub
  shows its headline finding on the test function in the pull request's diff.
* The Markdown report (one row per stability test: verdict, node id, steps,
  headline finding, baseline delta, plot) is appended to
  ``$GITHUB_STEP_SUMMARY`` under GitHub Actions, and written to
  ``--stability-markdown=PATH`` (ini ``stability_markdown``) anywhere.

Built from the controller's per-test records (:class:`~pytest_stability.record.StabilityRecord`, the
same under pytest-xdist) and the tests' locations from their reports.  Pure string
building: the pytest plugin that writes and prints them, ``GitHubPlugin``, is in
:mod:`pytest_stability.integrations.ci`.
"""

# No ``from __future__ import annotations``: it would bind the name ``annotations``, which the function of that
# name below takes (type checkers then see two definitions).  The annotations here are valid at run time.

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..record import StabilityRecord
from .render import expected_clause, run_notes

_VERDICT = {"stable": "✅ stable", "unstable": "❌ unstable", "error": "⚠️ error", "skipped": "⏭️ skipped"}


def in_github_actions(env: Mapping[str, str] | None = None) -> bool:
    """True when running in a GitHub Actions job (``GITHUB_ACTIONS=true``)."""
    env = os.environ if env is None else env
    return env.get("GITHUB_ACTIONS", "").lower() == "true"


# -- what a record says ---------------------------------------------------------


def regressed(record: StabilityRecord) -> bool:
    """Whether the test failed its --stability-baseline comparison."""
    return record.regressed


def headline(record: StabilityRecord) -> str:
    """The one line that says why a test is not stable (its first finding), or '' for a stable one."""
    calls = record.calls
    for k, call in enumerate(calls, 1):
        for run in call.runs:
            if run.findings:
                f = run.findings[0]
                which = f"call {k} of {len(calls)}: " if len(calls) > 1 else ""
                seed = f"seed {run.seed}: " if len(call.runs) > 1 else ""
                return f"{which}{seed}[{f.check}] step {f.step}: {f.message}"
    for call in record.calls:
        baseline = call.baseline
        if baseline is not None and baseline.failed and baseline.regressions:
            return "baseline regression: " + "; ".join(baseline.regressions)
    if record.verdict in ("error", "skipped"):
        return record.error or record.skip_reason or ""
    return ""


def _first_note(record: StabilityRecord) -> str:
    """``note: ...``, the first note that qualifies the verdict of a run of the test (a check not judged, a run
    that ended early), or ''."""
    for call in record.calls:
        for run in call.runs:
            notes = run_notes(run)
            if notes:
                return f"note: {notes[0]}"
    return ""


def _steps(record: StabilityRecord) -> str:
    parts = []
    for call in record.calls:
        if call.runs:
            run = call.primary
            parts.append(f"{run.steps_run}/{run.steps_planned}")
    return ", ".join(parts)


def _baseline(record: StabilityRecord) -> str:
    lines = [line for c in record.calls if c.baseline is not None for line in c.baseline.lines]
    return "<br>".join(lines)


def _label(record: StabilityRecord) -> str:
    verdict = record.verdict
    if verdict == "stable" and record.regressed:
        return "❌ regressed"
    if record.expected_unstable:
        return "☑️ unstable, as its test expects"
    return _VERDICT.get(verdict, verdict)


# -- GitHub workflow commands ------------------------------------------------------


def _escape_data(text: str) -> str:
    # https://docs.github.com/actions/reference/workflow-commands-for-github-actions (toolkit's escapeData)
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def error_command(file: str, line: int, title: str, message: str) -> str:
    """One ``::error`` workflow command (GitHub shows it as an annotation on ``file:line``)."""
    return (
        f"::error file={_escape_property(file)},line={int(line)},title={_escape_property(title)}"
        f"::{_escape_data(message)}"
    )


def def_line(path: Path, lineno0: int, domain: str) -> int:
    """The 1-based line of ``def <test>`` at or after pytest's 0-based ``lineno0``.

    pytest's location of a decorated function is its first decorator; the
    annotation reads better on the ``def`` line.  Falls back to ``lineno0 + 1``.
    """
    name = domain.split("[", 1)[0].rsplit(".", 1)[-1]
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return lineno0 + 1
    pattern = re.compile(rf"\s*(async\s+)?def\s+{re.escape(name)}\s*\(")
    for i in range(max(lineno0, 0), min(len(lines), lineno0 + 60)):
        if pattern.match(lines[i]):
            return i + 1
    return lineno0 + 1


def annotation_file(rootpath: Path, relpath: str, env: Mapping[str, str] | None = None) -> str:
    """The test file, relative to the repository (``$GITHUB_WORKSPACE``) when it is inside it, else to the rootdir."""
    env = os.environ if env is None else env
    absolute = Path(rootpath, relpath).resolve()
    workspace = env.get("GITHUB_WORKSPACE")
    if workspace:
        try:
            return absolute.relative_to(Path(workspace).resolve()).as_posix()
        except ValueError:
            pass
    return Path(relpath).as_posix()


def annotations(
    records: Iterable[StabilityRecord],
    locations: Mapping[str, tuple[str, int, str]],
    rootpath: Path,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """One ``::error`` command per unstable or regressed test, in node id order (not for an unstable run its
    test expected and passed on: :attr:`~pytest_stability.record.StabilityRecord.expected_unstable`).

    Args:
        records: the session's per-test records.
        locations: nodeid -> pytest's ``report.location`` (file relative to the rootdir, 0-based line, domain).
        rootpath: the rootdir.
        env: the environment (``GITHUB_WORKSPACE``).
    """
    out = []
    for record in sorted(records, key=lambda r: r.nodeid):
        if (record.verdict != "unstable" and not record.regressed) or record.expected_unstable:
            continue
        nodeid = record.nodeid
        where = locations.get(nodeid)
        if where is None:
            relpath, line = nodeid.split("::", 1)[0], 1
        else:
            relpath, line = where[0], def_line(Path(rootpath, where[0]), where[1], where[2])
        kind = "unstable training" if record.verdict == "unstable" else "training stability regressed"
        title = f"{kind}: {nodeid.split('::', 1)[-1]}"
        message = headline(record) or kind
        out.append(error_command(annotation_file(rootpath, relpath, env), line, title, message))
    return out


# -- Markdown ------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def markdown(
    records: Iterable[StabilityRecord],
    *,
    plots: Mapping[str, str] | None = None,
    tensorboard: str | None = None,
    link_plots: bool = True,
) -> str:
    """The Markdown stability report: a heading, a count line, one table row per test.

    Args:
        records: the session's per-test records.
        plots: nodeid -> the plot's path or URL (only with ``--stability-plots``).
        tensorboard: the TensorBoard log directory, named under the table.
        link_plots: show plots as Markdown links; False shows their paths (a job summary cannot link to
            a file of the job's workspace: the plots are in the uploaded artifact).
    """
    records = sorted(records, key=lambda r: r.nodeid)
    unstable = sum(r.verdict == "unstable" for r in records)
    expected = sum(r.expected_unstable for r in records)
    errors = sum(r.verdict == "error" for r in records)
    regressions = sum(r.regressed for r in records)
    with_baseline = any(c.baseline is not None for r in records for c in r.calls)
    summary = f"{len(records)} test{'s' if len(records) != 1 else ''}, {unstable} unstable"
    summary += expected_clause(expected)
    if errors:
        summary += f", {errors} error{'s' if errors != 1 else ''}"
    if with_baseline:
        summary += f", {regressions} regressed against the baseline"
    lines = ["## Training stability", "", summary, ""]
    if not records:
        return "\n".join(lines[:2] + ["No stability tests ran.", ""])
    header = ["verdict", "test", "steps", "headline finding"]
    if with_baseline:
        header.append("baseline -> now")
    if plots is not None:
        header.append("plot")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for record in records:
        # a stable test's cell: the first note, where one qualifies its verdict (a check not judged)
        row = [_label(record), f"`{record.nodeid}`", _steps(record), headline(record) or _first_note(record)]
        if with_baseline:
            row.append(_baseline(record))
        if plots is not None:
            target = plots.get(record.nodeid)
            if not target:
                row.append("")
            else:
                row.append(f"[png]({target.replace(' ', '%20')})" if link_plots else f"`{target}`")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if tensorboard:
        lines += ["", f"Per-step traces for TensorBoard: `{tensorboard}` (`tensorboard --logdir {tensorboard}`)."]
    lines.append("")
    return "\n".join(lines)


def plot_links(records: Iterable[StabilityRecord], plots_dir: Path, relative_to: Path | None) -> dict[str, str]:
    """nodeid -> the path of its plot, named the way :func:`~pytest_stability.report.plots.write_plots` names it.

    Relative to ``relative_to`` (the Markdown file's folder) when given, so the link works
    where the file is viewed; else the absolute path.
    """
    from .plots import plot_filename

    taken: set[str] = set()
    out = {}
    for record in sorted(records, key=lambda r: r.nodeid):
        if not record.calls:
            continue
        path = plots_dir / plot_filename(record.nodeid, taken)
        if relative_to is not None:
            out[record.nodeid] = Path(os.path.relpath(path, relative_to)).as_posix()
        else:
            out[record.nodeid] = str(path)
    return out


__all__ = [
    "annotation_file",
    "annotations",
    "def_line",
    "error_command",
    "headline",
    "in_github_actions",
    "markdown",
    "plot_links",
    "regressed",
]
