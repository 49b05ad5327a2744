"""Every setting of pytest-stability, in one table.

Each :class:`Option` is at once a marker keyword (``steps=...``), a command-line
option (``--stability-steps``) and an ini key (``stability_steps``), sharing one
help string and one validator.  Values resolve with the precedence

    marker  >  command line  >  ini  >  built-in default

:func:`resolve_config_defaults` does the CLI/ini/default part once per run
(raising one :class:`OptionValueError` that lists every bad value, which the
plugin reports as one :class:`pytest.UsageError` with :func:`usage_message`) and
:func:`merge_marker` lays a test's marker keywords on top.  The report, baseline
and plot paths (:mod:`~pytest_stability.gating`) are run-wide only, but are
named (:func:`cli_name`, :func:`ini_name`) and reported the same way.

This module imports nothing heavy: it runs on every pytest invocation.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .report.baseline import TOLERANCE_DEFAULTS  # light: math only
from .thresholds import Thresholds

CHECK_NAMES = ("loss_spike", "nonfinite", "grad_norm", "val_loss")
#: Threshold defaults live on checks.base.Thresholds (the calibrated values).
_T = Thresholds()
DEVICES = ("auto", "cpu", "gpu")
#: The default ceiling on ``steps`` (``max_steps``).
DEFAULT_MAX_STEPS = 100_000


def steps_above_ceiling(values: Mapping[str, Any]) -> str | None:
    """The message for ``steps`` above ``max_steps``, or None; names both values and how to raise the ceiling."""
    steps, ceiling = values.get("steps"), values.get("max_steps")
    if steps is None or ceiling is None or steps <= ceiling:
        return None
    return (f"steps={steps} is above max_steps={ceiling} (a run that long is more likely a typo than a test); "
            "lower steps, or raise the ceiling with max_steps= on the marker, --stability-max-steps or ini "
            "stability_max_steps")


class OptionValueError(ValueError):
    """A value for a setting is invalid; the message says what is expected."""


def _typename(value: Any) -> str:
    return type(value).__name__


# -- validators: take a Python value (marker) and return the normalised value ---


def _int(min_value: int) -> Callable[[Any], int]:
    expects = f"an int >= {min_value}"

    def parse(value: Any) -> int:
        # numpy integers count; bools and floats such as 3.0 do not.
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise OptionValueError(f"{expects}, received {value!r} ({_typename(value)})")
        if value < min_value:
            raise OptionValueError(f"{expects}, received {value!r}")
        return int(value)

    parse.expects = expects  # type: ignore[attr-defined]
    return parse


def _float(min_value: float, *, strict: bool, max_value: float | None = None,
           max_strict: bool = True) -> Callable[[Any], float]:
    lo = f"> {min_value:g}" if strict else f">= {min_value:g}"
    hi = "" if max_value is None else (f" and < {max_value:g}" if max_strict else f" and <= {max_value:g}")
    expects = f"a finite number {lo}{hi}"

    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise OptionValueError(f"{expects}, received {value!r} ({_typename(value)})")
        v = float(value)
        bad = (
            not math.isfinite(v)
            or (v <= min_value if strict else v < min_value)
            or (max_value is not None and (v >= max_value if max_strict else v > max_value))
        )
        if bad:
            raise OptionValueError(f"{expects}, received {value!r}")
        return v

    parse.expects = expects  # type: ignore[attr-defined]
    return parse


def _optional(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if value is None:
            return None
        try:
            return inner(value)
        except OptionValueError as exc:
            raise OptionValueError(f"None or {exc}") from None

    parse.expects = f"None or {inner.expects}"  # type: ignore[attr-defined]
    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    expects = "one of " + ", ".join(repr(c) for c in choices)

    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise OptionValueError(f"{expects}, received {value!r} ({_typename(value)})")
        return value.lower()

    parse.expects = expects  # type: ignore[attr-defined]
    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise OptionValueError(f"True or False, received {value!r} ({_typename(value)})")


_bool.expects = "True or False"  # type: ignore[attr-defined]


def _checks(value: Any) -> tuple[str, ...]:
    expects = "a list of check names from " + ", ".join(CHECK_NAMES)
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        raise OptionValueError(f"{expects}, received {value!r} ({_typename(value)})")
    for item in items:
        if item not in CHECK_NAMES:
            raise OptionValueError(f"{expects}, received unknown check {item!r}")
    if not items:
        raise OptionValueError(f"{expects}, received an empty list")
    # Keep the canonical order so reports are stable.
    return tuple(name for name in CHECK_NAMES if name in items)


_checks.expects = "a list of check names from " + ", ".join(CHECK_NAMES)  # type: ignore[attr-defined]


# -- string parsing for command line / ini values -----------------------------


def _from_text(parse: Callable[[Any], Any], text: str) -> Any:
    """Convert a command-line or ini string, then validate it with ``parse``."""
    raw = text.strip()
    expects = getattr(parse, "expects", "")
    if raw.lower() in ("none", "") and expects.startswith("None"):
        return parse(None)
    if expects.startswith("True"):
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise OptionValueError(f"true or false, received {text!r}")
    if "check names" in expects or expects.startswith("one of"):
        return parse(raw)
    if "int" in expects:
        try:
            return parse(int(raw))
        except ValueError:
            raise OptionValueError(f"{expects}, received {text!r}") from None
    try:
        return parse(float(raw))
    except ValueError:
        raise OptionValueError(f"{expects}, received {text!r}") from None


def cli_name(name: str) -> str:
    """The command-line option of a setting: ``baseline_grad_factor`` -> ``--stability-baseline-grad-factor``."""
    return "--stability-" + name.replace("_", "-")


def ini_name(name: str) -> str:
    """The ini key of a setting: ``baseline_grad_factor`` -> ``stability_baseline_grad_factor``."""
    return "stability_" + name


#: The first line of the usage error that lists every bad setting of a run.
USAGE_ERROR_HEADING = "pytest-stability: invalid settings:"


def usage_message(problems: list[str]) -> str:
    """One message for every bad setting of a run (one per line, each naming where it came from)."""
    return USAGE_ERROR_HEADING + "\n  " + "\n  ".join(problems)


@dataclass(frozen=True)
class Option:
    """One setting: a marker keyword, a ``--stability-*`` option and an ini key."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    #: False for settings that only make sense per test (no CLI / ini twin).
    global_: bool = True

    @property
    def cli(self) -> str:
        return cli_name(self.name)

    @property
    def ini(self) -> str:
        return ini_name(self.name)

    @property
    def expects(self) -> str:
        return getattr(self.parse, "expects", "")


# Threshold defaults come from the calibration described in README.md
# ("How the thresholds were chosen"); benchmarks/detection.py reproduces it.
OPTIONS: tuple[Option, ...] = (
    Option("steps", _int(1), 200, "optimizer steps to train each stability test for"),
    Option("max_steps", _int(1), DEFAULT_MAX_STEPS, "ceiling on steps: a larger steps value is a usage error, not a "
           "silent hours-long run (raise it for a test that really trains that long)"),
    Option("batch_size", _int(1), 32, "batch size for array inputs (datasets bring their own)"),
    Option("seed", _int(0), 0, "random seed (weights, data order, dropout); replay a failure with it"),
    Option("seeds", _int(1), 1, "train each test under this many seeds (seed, seed+1, ...); fail if any is unstable"),
    Option("device", _choice(*DEVICES), "auto", "where to train: auto (GPU when TensorFlow sees one), cpu, or gpu (skip without one)"),
    Option("validate_every", _int(1), 25, "evaluate the validation loss every N optimizer steps"),
    Option("readback_every", _int(1), 50, "steps per compiled chunk: traces are read back (and a NaN stops training) every N steps"),
    Option("checks", _checks, CHECK_NAMES, "comma-separated checks to run: " + ",".join(CHECK_NAMES)),
    Option("diagnostics", _bool, False, "record optimizer-state statistics (Adam second moment) for diagnosis; costs a little speed"),
    Option("deterministic", _bool, True, "enable TensorFlow op determinism so the same seed gives the same trace"),
    Option("jit_compile", _bool, False, "compile the training step with XLA"),
    Option("shuffle", _bool, True, "shuffle array inputs each pass (seeded)"),
    Option("whatif", _bool, False, "on failure, replay the steps around it from a snapshot with the suggested optimizer fix and report whether the instability goes away (keeps up to 16 host copies of the model and optimizer state)"),
    # -- loss_spike
    Option("spike_window", _int(5), _T.spike_window, "loss_spike: trailing window (steps) the loss is compared against"),
    Option("spike_zscore", _float(0, strict=True), _T.spike_zscore, "loss_spike: robust z-score of log-loss above the trailing median that counts as a spike"),
    Option("spike_ratio", _float(1, strict=True), _T.spike_ratio, "loss_spike: minimum loss / trailing-median ratio for a spike"),
    Option("spike_min_rise", _float(0, strict=False), _T.spike_min_rise, "loss_spike: minimum absolute rise, as a fraction of the initial loss, for a spike"),
    Option("warmup_steps", _int(0), _T.warmup_steps, "loss_spike/grad_norm: steps at the start that are not judged (initial transients)"),
    # -- grad_norm
    Option("max_grad_norm", _optional(_float(0, strict=True)), _T.max_grad_norm, "grad_norm: absolute limit on the global gradient norm (default: relative to early training)"),
    Option("grad_growth", _float(1, strict=True), _T.grad_growth, "grad_norm: limit on gradient norm growth over its early-training reference"),
    # -- val_loss
    Option("val_smoothing", _float(0, strict=False, max_value=1), _T.val_smoothing, "val_loss: EMA weight of the previous smoothed value (0 = no smoothing)"),
    Option("val_tolerance", _float(0, strict=False), _T.val_tolerance, "val_loss: allowed rise of the smoothed validation loss above its best, relative"),
    Option("val_min_delta", _float(0, strict=False), _T.val_min_delta, "val_loss: allowed rise of the smoothed validation loss above its best, absolute"),
    # -- baseline comparison (--stability-baseline); defaults live with the comparison in report/baseline.py
    Option("baseline_grad_factor", _float(1, strict=False), TOLERANCE_DEFAULTS["baseline_grad_factor"],
           "baseline: fail when the 99th-percentile gradient norm exceeds this multiple of the baseline's"),
    Option("baseline_val_tolerance", _float(0, strict=False), TOLERANCE_DEFAULTS["baseline_val_tolerance"],
           "baseline: fail when the final smoothed validation loss exceeds the baseline's by more than this "
           "fraction of it"),
    Option("baseline_extra_spikes", _int(0), TOLERANCE_DEFAULTS["baseline_extra_spikes"],
           "baseline: loss spikes allowed beyond the baseline's count"),
)

OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

#: The names of the baseline tolerances (the options the comparison with --stability-baseline reads).
TOLERANCE_NAMES: tuple[str, ...] = tuple(TOLERANCE_DEFAULTS)

#: The marker signature shown by ``pytest --markers``.
MARKER_SIGNATURE = "stable_training(steps=200, *, " + ", ".join(
    f"{o.name}={o.default!r}" for o in OPTIONS if o.name != "steps"
) + ")"


@dataclass(frozen=True)
class RunSpec:
    """The fully resolved settings for one stability test (all options)."""

    values: Mapping[str, Any] = field(default_factory=dict)
    #: names whose value came from the test's marker (not CLI/ini/default)
    from_marker: frozenset[str] = frozenset()

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **changes: Any) -> "RunSpec":
        vals = dict(self.values)
        vals.update(changes)
        return RunSpec(vals, self.from_marker)


def parse_text(option: Option, text: str) -> Any:
    """Parse a command-line or ini string for ``option`` (raises OptionValueError)."""
    return _from_text(option.parse, text)


def resolve_config_defaults(get_cli: Callable[[str], Any], get_ini: Callable[[str], Any]) -> RunSpec:
    """Resolve CLI > ini > default for every option.

    Args:
        get_cli: returns the raw command-line string for an option's dest, or None.
        get_ini: returns the raw ini string for an ini key, or None / "" when unset.

    Raises:
        OptionValueError: listing every invalid value, one per line.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for opt in OPTIONS:
        value = opt.default
        raw_ini = get_ini(opt.ini)
        if raw_ini not in (None, "", []):
            try:
                value = parse_text(opt, str(raw_ini))
            except OptionValueError as exc:
                problems.append(f"ini {opt.ini}: expected {exc}")
        raw_cli = get_cli(opt.name)
        if raw_cli is not None:
            try:
                value = parse_text(opt, str(raw_cli))
            except OptionValueError as exc:
                problems.append(f"{opt.cli}: expected {exc}")
        values[opt.name] = value
    ceiling = steps_above_ceiling(values)
    if ceiling is not None:
        problems.append(f"--stability-steps / --stability-max-steps (or their ini keys): {ceiling}")
    if problems:
        raise OptionValueError("\n".join(problems))
    return RunSpec(values)


def merge_marker(base: RunSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> RunSpec:
    """Lay a ``stable_training`` marker's arguments over the resolved defaults.

    Raises:
        OptionValueError: for an unknown keyword, extra positionals, a duplicate
            or an invalid value; the message names the argument and the value.
    """
    kwargs = dict(kwargs)
    if len(args) > 1:
        raise OptionValueError(
            f"takes at most one positional argument (steps), received {len(args)}: {args!r}"
        )
    if args:
        if "steps" in kwargs:
            raise OptionValueError(
                f"steps given both positionally ({args[0]!r}) and as a keyword ({kwargs['steps']!r})"
            )
        kwargs["steps"] = args[0]
    values = dict(base.values)
    for key, value in kwargs.items():
        opt = OPTIONS_BY_NAME.get(key)
        if opt is None:
            known = ", ".join(o.name for o in OPTIONS)
            raise OptionValueError(f"unknown argument {key}={value!r}; known arguments: {known}")
        try:
            values[key] = opt.parse(value)
        except OptionValueError as exc:
            raise OptionValueError(f"{key} must be {exc}") from None
    ceiling = steps_above_ceiling(values)
    if ceiling is not None:
        raise OptionValueError(ceiling)
    return RunSpec(values, frozenset(kwargs))


__all__ = [
    "CHECK_NAMES",
    "DEFAULT_MAX_STEPS",
    "DEVICES",
    "MARKER_SIGNATURE",
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "Option",
    "OptionValueError",
    "RunSpec",
    "TOLERANCE_NAMES",
    "USAGE_ERROR_HEADING",
    "cli_name",
    "ini_name",
    "merge_marker",
    "parse_text",
    "resolve_config_defaults",
    "steps_above_ceiling",
    "usage_message",
]
