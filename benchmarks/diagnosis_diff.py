"""The same saved runs judged by the diagnosis at two commits: which findings, causes and first fixes differ.

Usage (the runs saved by ``benchmarks/detection.py --save-traces FILE``)::

    python benchmarks/diagnosis_diff.py FILE --before a26d42c --after aa8ca28 --out detection-early-reference-diff.md

Each commit's ``pytest_stability`` is extracted with ``git archive`` and judges every run in a subprocess of its
own (``run_checks`` then ``rank_findings``); the table lists each finding that differs, by rank (0: the primary).
Written to ``benchmarks/results/OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: run in the subprocess, with the commit's package first on the path: each run's findings, ranked
JUDGE = """
import json, pickle, sys
from pytest_stability.checks import run_checks
from pytest_stability.diagnosis import rank_findings
out = []
for r in pickle.load(open(sys.argv[1], "rb")):
    fs = rank_findings(run_checks(r["trace"]), r["trace"])
    out.append([r["name"], r["seed"], [(f.check, f.step, f.evidence.get("cause_key"), f.cause, f.fix) for f in fs]])
json.dump(out, open(sys.argv[2], "w"))
"""


def judge(traces: str, rev: str, work: Path) -> list:
    """Every saved run's ranked findings under the diagnosis at ``rev``."""
    src = work / rev
    src.mkdir()
    archive = subprocess.run(["git", "archive", rev, "pytest_stability"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    out = work / f"{rev}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}
    # run from the work directory: ``-c`` puts the current directory first on the path, a checkout's own package
    subprocess.run([sys.executable, "-c", JUDGE, os.path.abspath(traces), str(out)], env=env, cwd=work, check=True)
    return json.loads(out.read_text())


def first_fix(text: str) -> str:
    """A learning-rate fix with the update it came from, else the fix's first 80 characters."""
    m = re.match(
        r"(learning_rate=[^ ]+ \(now [^;]*; x [^)]*\)) \(brings the update size \|dw\|/\|w\|, (.*?\)), below", text
    )
    return f"{m.group(1)}, from the update {m.group(2)}" if m else text[:80] + "..."


def table(before: list, after: list, traces_note: str, revs: tuple[str, str]) -> str:
    same = sum(b[2] == a[2] for b, a in zip(before, after, strict=True))
    lines = [
        f"## The first steps' healthy reference: the same {len(after)} runs judged before and after",
        "",
        f"{traces_note}, each run's findings judged by the diagnosis at `{revs[0]}` (before) and at `{revs[1]}` "
        f"(after). {same} of {len(after)} runs give the same findings, causes and fixes; in the other "
        f"{len(after) - same} a secondary finding (`rank` 1; 0 is the primary, unchanged in every run) differs:",
        "",
        "| pathology | seed | rank | finding | before: cause, first fix | after: cause, first fix |",
        "|---|---|---|---|---|---|",
    ]
    for (name, seed, fb), (_, _, fa) in zip(before, after, strict=True):
        for rank, (x, y) in enumerate(zip(fb, fa, strict=False)):
            if x != y:
                lines.append(
                    f"| {name} | {seed} | {rank} | {x[0]} at step {x[1]} | {x[2]}: {first_fix(x[4])} "
                    f"| {y[2]}: {first_fix(y[4])} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", help="the runs pickled by benchmarks/detection.py --save-traces")
    parser.add_argument("--before", required=True, help="the commit whose diagnosis judges first")
    parser.add_argument("--after", required=True, help="the commit whose diagnosis judges second")
    parser.add_argument("--out", required=True, help="the file in benchmarks/results")
    parser.add_argument(
        "--runs",
        default="The 23 pathology families at 3 seeds on TensorFlow (`detection-early-reference.md`, the traces "
        "saved with `--save-traces`)",
        help="what the saved runs are, for the table's text",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before, after = judge(args.traces, args.before, work), judge(args.traces, args.after, work)
    text = table(before, after, args.runs, (args.before, args.after))
    (ROOT / "benchmarks" / "results" / args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
