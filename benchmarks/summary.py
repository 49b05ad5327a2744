"""The README's detection table, from the committed result files of ``benchmarks/detection.py``.

Each result file holds, per backend, a table of its pathology families (caught, named with the expected cause,
the first suggested fix replayed), the count of its healthy runs that failed, and the (scenario, seed) pairs
that did not get the same verdict on every backend.  This script puts the files that hold the latest judgement
of each family into one table, per family and backend::

    python benchmarks/summary.py            # prints the table the README shows, then FIX_SUCCESS

A family in several files is taken from the last one in :data:`SOURCES` (trained or judged later); the healthy
runs of a file are counted for the backends :data:`SOURCES` names with it, each set of healthy runs once (a
backend's healthy families trained again replace its earlier ones).  ``tests/unit`` checks that the README shows
what this prints.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.detection import upper_bound  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("tensorflow", "jax", "torch")
LABELS = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}

#: (result file, the backends whose healthy runs in it count): later files win for the families they hold.  The
#: setup bugs' healthy twins are among detection-current's 26 healthy families, so that file's healthy runs are
#: not counted; PyTorch's 28 (the 26, the healthy ReLU stack and scaled pixels) were trained again for the
#: slow-climb peak rule (detection-healthy-torch.md).
SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("detection-setup.md", ()),
    ("detection-current.md", ("tensorflow", "jax")),
    ("detection-slingshot-bn.md", ()),
    ("detection-deep-stack.md", ("tensorflow", "jax")),
    ("detection-pixels.md", ("tensorflow", "jax")),
    ("detection-adam.md", ()),
    ("detection-healthy-torch.md", ("torch",)),
)

_SHARE = re.compile(r"\((\d+)/(\d+)\)")


@dataclass
class Family:
    cause: str
    source: str
    caught: dict[str, tuple[int, int]] = field(default_factory=dict)
    named: dict[str, tuple[int, int]] = field(default_factory=dict)
    first_fix: list[tuple[int, int]] = field(default_factory=list)
    pairs: int = 0
    disagree: int = 0


def _share(cell: str) -> tuple[int, int] | None:
    m = _SHARE.search(cell)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _section(text: str, title: str) -> str:
    """The text under ``### title`` up to the next heading (empty when absent)."""
    m = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^##|\Z)", text, re.S | re.M)
    return m.group(1) if m else ""


def _rows(section: str) -> list[list[str]]:
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def _disagreeing(text: str) -> list[str]:
    """The pathology pairs the file's agreement table lists as disagreeing (``family/seed``)."""
    for row in _rows(_section(text, "Agreement between backends")):
        if row[0] == "pathology":
            return re.findall(r"(\w+)/\d+ \(", row[4])
    return []


def collect(
    results: Path = RESULTS, sources: tuple[tuple[str, tuple[str, ...]], ...] = SOURCES
) -> tuple[dict[str, Family], dict[str, tuple[int, int]]]:
    """Per family (from the last of ``sources`` that holds it), and the healthy runs failing per backend
    ``(failed, runs)``."""
    families: dict[str, Family] = {}
    healthy = dict.fromkeys(BACKENDS, (0, 0))
    for name, healthy_of in sources:
        text = (results / name).read_text()
        mine: dict[str, Family] = {}
        for backend in BACKENDS:
            for row in _rows(_section(text, f"{backend}: pathologies")):
                fam = mine.setdefault(row[0], Family(cause=row[4].split(" (")[0], source=name))
                caught, named, first = _share(row[2]), _share(row[3]), _share(row[6])
                if caught and named:
                    fam.caught[backend], fam.named[backend] = caught, named
                if first:
                    fam.first_fix.append(first)
            head = re.search(
                r"runs failing any check: [^(]*\((\d+)/(\d+)\)", _section(text, f"{backend}: healthy runs")
            )
            if backend in healthy_of and head:
                k, n = healthy[backend]
                healthy[backend] = (k + int(head.group(1)), n + int(head.group(2)))
        disagreeing = _disagreeing(text)
        for fam_name, fam in mine.items():
            if len(fam.caught) == len(BACKENDS):  # a pair needs every backend: its seeds are the family's runs
                fam.pairs = min(n for _, n in fam.caught.values())
                fam.disagree = disagreeing.count(fam_name)
            families[fam_name] = fam
    return families, healthy


def fix_success(results: Path = RESULTS) -> dict[str, tuple[int, int]]:
    """Per expected cause, how many of its families' runs the first suggested fix resolved in the what-if replay
    (``(resolved, replayed)``, the families as :func:`collect` takes them; causes with no replayed run left out):
    what ``pytest_stability.diagnosis.FIX_SUCCESS`` quotes, kept equal by ``tests/unit``."""
    families, _ = collect(results)
    out: dict[str, tuple[int, int]] = {}
    for fam in families.values():
        k, n = out.get(fam.cause, (0, 0))
        out[fam.cause] = (k + sum(r for r, _ in fam.first_fix), n + sum(m for _, m in fam.first_fix))
    return {cause: share for cause, share in sorted(out.items()) if share[1]}


def _cell(share: tuple[int, int] | None) -> str:
    return f"{share[0]}/{share[1]}" if share else "-"


def table(results: Path = RESULTS) -> str:
    """The markdown table: a row per pathology family, then the healthy runs, then the totals."""
    families, healthy = collect(results)
    head = (
        "| family | expected cause | "
        + " | ".join(f"{LABELS[b]}: caught, right cause" for b in BACKENDS)
        + " | first fix resolves | backends agree |"
    )
    out = [head, "|" + "---|" * (len(BACKENDS) + 4)]
    pairs = agree = 0
    for name in sorted(families):
        fam = families[name]
        cells = [
            f"{_cell(fam.caught.get(b))}, {_cell(fam.named.get(b))}" if b in fam.caught else "not trained"
            for b in BACKENDS
        ]
        fixed = (sum(k for k, _ in fam.first_fix), sum(n for _, n in fam.first_fix))
        pairs += fam.pairs
        agree += fam.pairs - fam.disagree
        agreed = f"{fam.pairs - fam.disagree}/{fam.pairs}" if fam.pairs else "-"
        out.append(
            f"| `{name}` | `{fam.cause}` | "
            + " | ".join(cells)
            + f" | {_cell(fixed if fixed[1] else None)} | {agreed} |"
        )
    bounds = (f"{_cell(healthy[b])} (at most {100.0 * upper_bound(*healthy[b]):.1f} %)" for b in BACKENDS)
    out.append("| healthy runs failing (one-sided 95 % bound) | | " + " | ".join(bounds) + " | | |")
    out.append(f"| pathology pairs agreeing | | | | | | {agree}/{pairs} ({100.0 * agree / pairs:.1f} %) |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n\nFIX_SUCCESS = " + repr(fix_success()) + "\n")
