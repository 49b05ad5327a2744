"""A ceiling on ``Any`` in the package's annotations: where a value's type is known, the annotation names it.

Counted, per sub-package: each name ``Any`` inside a parameter, return or variable annotation.  Not counted:
``framework_types.py`` (its names of the untyped frameworks' objects are aliases of ``Any`` by design),
``*args: Any`` / ``**kwargs: Any`` (forwarded as they are), and ``dict[str, Any]`` / ``Mapping[str, Any]``
(builtins data: reports, settings, ``fit`` arguments).
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_stability"

#: the counts this package has now; lower one when an annotation gets its type, never raise it
CEILING = {".": 57, "checks": 2, "integrations": 5, "report": 18, "training": 53}

JSON_LIKE = {"dict", "Mapping", "MutableMapping"}


def _bare_any(annotation: ast.expr) -> int:
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body
    allowed = set()
    for node in ast.walk(annotation):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in JSON_LIKE
            and isinstance(node.slice, ast.Tuple)
            and [getattr(e, "id", None) for e in node.slice.elts] == ["str", "Any"]
        ):
            allowed.add(id(node.slice.elts[1]))
    return sum(isinstance(n, ast.Name) and n.id == "Any" and id(n) not in allowed for n in ast.walk(annotation))


def _annotations(tree: ast.AST) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            found += [a.annotation for a in args.posonlyargs + args.args + args.kwonlyargs if a.annotation]
            found += [node.returns] if node.returns else []
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return found


def count_any(package: Path = PACKAGE) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in sorted(package.rglob("*.py")):
        if path.name == "framework_types.py":
            continue
        parts = path.relative_to(package).parts
        tree = ast.parse(path.read_text(encoding="utf-8"))
        counts[parts[0] if len(parts) > 1 else "."] += sum(_bare_any(a) for a in _annotations(tree))
    return counts


def test_the_counter_counts_bare_any_only(tmp_path):
    (tmp_path / "m.py").write_text(
        "from typing import Any\n"
        "def f(a: Any, b: dict[str, Any], *args: Any, **kwargs: Any) -> list[Any]:\n"
        "    x: Mapping[str, Any] = {}\n"
        "    y: 'tuple[Any, int]' = (1, 2)\n"
        "    return []\n",
        encoding="utf-8",
    )
    (tmp_path / "framework_types.py").write_text("from typing import Any\nModel: Any = None\n", encoding="utf-8")
    assert count_any(tmp_path) == {".": 3}  # a, list[Any], the string annotation's Any


def test_any_in_annotations_stays_under_its_ceiling():
    counts = count_any()
    over = {where: (n, CEILING.get(where, 0)) for where, n in counts.items() if n > CEILING.get(where, 0)}
    assert not over, (
        f"more Any in the annotations than before (found, ceiling): {over}.  Name the type where it is known: the "
        "package's own (RunSpec, Trace, Recorder...), a standard one, or pytest_stability.framework_types' names "
        "for Keras' objects (Model, Optimizer, Tensor, Data...).  Keep Any only for values that can be anything "
        "(and when you remove some, lower CEILING to the new counts)"
    )
