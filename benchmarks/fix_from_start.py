"""Which fix works when the user applies it: a pathology family trained with each candidate fix compiled in from
the first step, as a user changes their code, and judged over the whole run.

Usage::

    KERAS_BACKEND=jax python benchmarks/fix_from_start.py [--family slingshot] [--seeds 10]
                                              [--fixes "epsilon=1e-3;epsilon=1e-2;learning_rate_factor=0.1"]

The detection benchmark's what-if replay applies the suggested fix shortly before the failure and judges a
few hundred steps after it: cheap, and the run differs from the original only from that step.  A fix can pass
that horizon and still fail later in the run.  Here each fix is compiled into the family's own optimizer
(the fixes' names are the diagnosis' ``fix_configs``: ``learning_rate_factor=F`` multiplies its learning rate
by F; any other ``name=value`` is an optimizer argument, e.g. ``epsilon=1e-3``, ``amsgrad=True``, which the
what-if replay cannot apply mid-run) and the same seeds are trained for the family's full length; a run
passes when no check fails.  Printed and written to ``benchmarks/results/fix_from_start-<family>-<backend>.md``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._results import write_results  # noqa: E402


def parse_fix(text: str) -> dict[str, Any]:
    """``"epsilon=1e-3,amsgrad=True"`` -> ``{"epsilon": 0.001, "amsgrad": True}``; an empty text is no fix (the
    family as it is)."""
    fix: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"a fix is name=value[,name=value], received {part!r}")
        fix[name.strip()] = ast.literal_eval(value.strip())
    return fix


def with_fix(build: Any, fix: dict[str, Any]) -> Any:
    """A ``build`` whose model trains with its optimizer changed by ``fix`` (a new optimizer of the same class
    and config, before the first step; the model's other compile settings stay)."""

    def fixed() -> Any:
        model = build()
        opt = model.optimizer
        config = opt.get_config()
        config["learning_rate"] = float(config["learning_rate"]) * float(fix.get("learning_rate_factor", 1.0))
        config.update({k: v for k, v in fix.items() if k != "learning_rate_factor"})
        model.optimizer = type(opt).from_config(config)
        return model

    return fixed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="slingshot", help="a pathology family of benchmarks/scenarios.py")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument(
        "--fixes",
        default=";epsilon=1e-3;epsilon=1e-2;learning_rate_factor=0.1",
        help="semicolon-separated fixes (an empty one: the family unchanged)",
    )
    args = ap.parse_args(argv)
    from benchmarks import scenarios as S

    if args.family not in S.PATHOLOGIES:
        ap.error(f"--family: unknown family {args.family!r}; expected one of {sorted(S.PATHOLOGIES)}")
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, received {args.seeds}")
    import keras

    backend = keras.backend.backend()
    fixes = [parse_fix(t) for t in args.fixes.split(";")]
    rows = []
    for fix in fixes:
        passed, finals, seconds = 0, [], []
        for seed in range(args.seeds):
            sc = S.PATHOLOGIES[args.family](seed)
            sc = dataclasses.replace(sc, build=with_fix(sc.build, fix))
            started = time.perf_counter()
            out = S.run_scenario(sc, seed)
            seconds.append(time.perf_counter() - started)
            failed = sorted({f.check for f in out.findings})
            passed += not failed
            loss = out.trace.loss[np.isfinite(out.trace.loss)]
            finals.append(float(np.median(loss[-50:])) if loss.size else float("nan"))
            print(f"  [{backend}] {args.family} {fix or 'as is'} seed {seed}: {failed or 'pass'}", file=sys.stderr)
        name = ", ".join(f"{k}={v}" for k, v in fix.items()) or "as is"
        rows.append(f"| {name} | {passed}/{args.seeds} | {np.nanmedian(finals):.3g} | {np.median(seconds):.1f} |")
    md = (
        f"## {args.family} on {backend}: fixes compiled in from the first step\n\n"
        f"`benchmarks/fix_from_start.py --family {args.family} --seeds {args.seeds}`: every seed trained for the "
        "family's full length with the fix in the optimizer from the first step; a run passes when no check "
        "fails.\n\n| fix | runs passing | median final loss (last 50 steps) | s/run |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    print(md)
    write_results(f"fix_from_start-{args.family}-{backend}.md", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
