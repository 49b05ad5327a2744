"""Every setting of pytest-stability, declared once: the fields of :class:`RunSpec`.

Each field carries an :class:`Option` (in its metadata), which is at once a marker keyword
(``steps=...``), a command-line option (``--stability-steps``) and an ini key (``stability_steps``),
sharing one help string and one validator.  Values resolve with the precedence

    marker  >  command line  >  ini  >  built-in default

:func:`resolve_config_defaults` does the CLI/ini/default part once per run
(raising one :class:`OptionValueError` that lists every bad value, which the
plugin reports as one :class:`pytest.UsageError` with :func:`usage_message`) and
:func:`merge_marker` lays a test's marker keywords on top.  The report, baseline
and plot paths (:class:`RunFiles`, :func:`resolve_run_files`) are run-wide only,
but are named (:func:`cli_name`, :func:`ini_name`) and reported the same way.

This module imports nothing heavy: it runs on every pytest invocation.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .report.baseline import TOLERANCE_DEFAULTS  # light: math only
from .thresholds import CHECK_NAMES, Thresholds

#: Threshold defaults live on pytest_stability.thresholds.Thresholds (the calibrated values).
_T = Thresholds()
DEVICES = ("auto", "cpu", "gpu")
#: The default ceiling on ``steps`` (``max_steps``).
DEFAULT_MAX_STEPS = 100_000


def steps_above_ceiling(values: Mapping[str, Any]) -> str | None:
    """The message for ``steps`` above ``max_steps``, or None; names both values and how to raise the ceiling."""
    steps, ceiling = values.get("steps"), values.get("max_steps")
    if steps is None or ceiling is None or steps <= ceiling:
        return None
    return (
        f"steps={steps} is above max_steps={ceiling} (a run that long is more likely a typo than a test); "
        "lower steps, or raise the ceiling with max_steps= on the marker, --stability-max-steps or ini "
        "stability_max_steps"
    )


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


def _float(
    min_value: float, *, strict: bool, max_value: float | None = None, max_strict: bool = True
) -> Callable[[Any], float]:
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


# -- text parsers: a command-line or ini string -> the value its validator takes ------
# Each option names its text parser explicitly (Option.text); the validator then
# checks the converted value exactly as it checks a marker keyword.


def _number_text(parse: Callable[[Any], Any], convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert`` the stripped string (``int`` or ``float``), then validate it with ``parse``.

    Either failing says what is expected and quotes the string as given.
    """

    def from_text(text: str) -> Any:
        try:
            return parse(convert(text.strip()))
        except ValueError:  # OptionValueError too: quote the text, not the converted number
            raise OptionValueError(f"{parse.expects}, received {text!r}") from None  # type: ignore[attr-defined]

    return from_text


def _word_text(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    """The stripped string itself goes to ``parse`` (choices, check lists)."""

    def from_text(text: str) -> Any:
        return parse(text.strip())

    return from_text


def _bool_text(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise OptionValueError(f"true or false, received {text!r}")


def _optional_text(inner: Callable[[str], Any]) -> Callable[[str], Any]:
    """``none`` or an empty string is None; anything else goes to ``inner``."""

    def from_text(text: str) -> Any:
        if text.strip().lower() in ("none", ""):
            return None
        try:
            return inner(text)
        except OptionValueError as exc:
            raise OptionValueError(f"None or {exc}") from None

    return from_text


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
    #: validates a Python value (a marker keyword, or what ``text`` converted)
    parse: Callable[[Any], Any]
    #: converts and validates a command-line / ini string
    text: Callable[[str], Any]
    default: Any
    help: str

    @property
    def cli(self) -> str:
        return cli_name(self.name)

    @property
    def ini(self) -> str:
        return ini_name(self.name)

    @property
    def expects(self) -> str:
        return getattr(self.parse, "expects", "")


# The builders make an Option without its name: a RunSpec field's name is its setting's (see _setting).


def _option(parse: Callable[[Any], Any], text: Callable[[str], Any], default: Any, help: str) -> Option:
    return Option("", parse, text, default, help)


def _int_option(min_value: int, default: int, help: str) -> Option:
    parse = _int(min_value)
    return Option("", parse, _number_text(parse, int), default, help)


def _float_option(
    default: float | None,
    help: str,
    min_value: float,
    *,
    strict: bool,
    max_value: float | None = None,
    optional: bool = False,
) -> Option:
    parse = _float(min_value, strict=strict, max_value=max_value)
    text = _number_text(parse, float)
    if optional:
        return Option("", _optional(parse), _optional_text(text), default, help)
    return Option("", parse, text, default, help)


def _bool_option(default: bool, help: str) -> Option:
    return Option("", _bool, _bool_text, default, help)


def _setting(option: Option) -> Any:
    """A :class:`RunSpec` field for ``option``: its default, and the option in the field's metadata."""
    return field(default=option.default, metadata={"option": option})


@dataclass(frozen=True)
class RunSpec:
    """Every setting of pytest-stability, and the resolved settings of one stability test.

    Each field is one setting: its name, type and default, and in its metadata the :class:`Option` that
    validates it and says what it does.  :data:`OPTIONS` (the marker keywords, ``--stability-*`` options,
    ini keys and the docs' settings page) is built from these fields: the settings are declared once.

    Frozen; :meth:`replace` makes a changed copy.  ``spec.values`` is the same
    settings as a ``{name: value}`` dict (for code that iterates over them, e.g.
    ``Thresholds.from_mapping(spec.values)``).

    Threshold defaults come from the calibration described in docs/detection.md ("How the defaults were
    chosen"); benchmarks/detection.py reproduces it.
    """

    steps: int = _setting(_int_option(1, 200, "optimizer steps to train each stability test for"))
    max_steps: int = _setting(
        _int_option(
            1,
            DEFAULT_MAX_STEPS,
            "ceiling on steps: a larger steps value is a usage error, not a "
            "silent hours-long run (raise it for a test that really trains that long)",
        )
    )
    batch_size: int = _setting(_int_option(1, 32, "batch size for array inputs (datasets bring their own)"))
    seed: int = _setting(_int_option(0, 0, "random seed (weights, data order, dropout); replay a failure with it"))
    seeds: int = _setting(
        _int_option(1, 1, "train each test under this many seeds (seed, seed+1, ...); fail if any is unstable")
    )
    device: str = _setting(
        _option(
            _choice(*DEVICES),
            _word_text(_choice(*DEVICES)),
            "auto",
            "where to train: auto (the accelerator the Keras backend sees, else the CPU), cpu, or gpu "
            "(skip without one)",
        )
    )
    validate_every: int = _setting(_int_option(1, 25, "evaluate the validation loss every N optimizer steps"))
    readback_every: int = _setting(
        _int_option(1, 50, "steps per compiled chunk: traces are read back (and a NaN stops training) every N steps")
    )
    checks: tuple[str, ...] = _setting(
        _option(_checks, _word_text(_checks), CHECK_NAMES, "comma-separated checks to run: " + ",".join(CHECK_NAMES))
    )
    diagnostics: bool = _setting(
        _bool_option(
            False, "record optimizer-state statistics (Adam second moment) for diagnosis; costs a little speed"
        )
    )
    deterministic: bool = _setting(
        _bool_option(True, "seed everything and enable TensorFlow op determinism so the same seed gives the same trace")
    )
    jit_compile: bool = _setting(
        _bool_option(
            False,
            "unused since training runs model.fit: the model's own "
            "compile(jit_compile=...) decides (kept so existing settings stay valid)",
        )
    )
    shuffle: bool = _setting(_bool_option(True, "shuffle array inputs each pass (seeded)"))
    margin: bool = _setting(
        _bool_option(
            False,
            "after a stable run, search its learning-rate stability margin: continue the "
            "same fit from its end state with the learning rate x 2, 4, 8... (then bisected) and report the "
            "largest factor that stays stable",
        )
    )
    margin_steps: int = _setting(_int_option(1, 50, "margin: steps each learning-rate probe trains"))
    margin_max_factor: float = _setting(
        _float_option(16.0, "margin: the largest learning-rate factor searched", 1, strict=True)
    )
    min_margin: float | None = _setting(
        _float_option(
            None,
            "margin: fail the test when its learning-rate margin is below this factor (needs margin=True)",
            0,
            strict=True,
            optional=True,
        )
    )
    curvature: bool = _setting(
        _bool_option(
            False,
            "measure the sharpness (the loss Hessian's top eigenvalue on a fixed batch; "
            "preconditioned for Adam/RMSprop) at curvature_points read-backs and its edge-of-stability ratio "
            "against the optimizer's limit (2/lr for SGD); reported, and gated by max_eos_ratio",
        )
    )
    curvature_points: int = _setting(
        _int_option(
            1,
            4,
            "curvature: measurements per run, at the first read-backs at or after "
            "evenly spaced steps (the last at the end)",
        )
    )
    curvature_iterations: int = _setting(
        _int_option(
            2,
            20,
            "curvature: Lanczos iterations (Hessian-vector products) at most per "
            "measurement; it stops earlier once the residual bound puts the estimate within 1e-3 (relative) "
            "of an eigenvalue",
        )
    )
    curvature_batch_size: int | None = _setting(
        _option(
            _optional(_int(1)),
            _optional_text(_number_text(_int(1), int)),
            None,
            "curvature: samples in the fixed batch the Hessian is taken on (default: the training batch size)",
        )
    )
    max_eos_ratio: float | None = _setting(
        _float_option(
            None,
            "curvature: fail the test when its edge-of-stability ratio (sharpness / "
            "the optimizer's limit) exceeds this at any measurement (needs curvature=True)",
            0,
            strict=True,
            optional=True,
        )
    )
    whatif: bool = _setting(
        _bool_option(
            False,
            "on failure, re-run the same fit from the start with the suggested optimizer fix "
            "applied before the failure and report whether the instability goes away (keeps one host copy of "
            "the initial model and optimizer state)",
        )
    )
    skip_step_window: int = _setting(
        _int_option(
            2,
            128,
            "what-if: the skip-step guard's window (the latest updates whose gradient norms it weighs a step against)",
        )
    )
    skip_step_sigmas: float = _setting(
        _float_option(
            6.0,
            "what-if: the skip-step guard skips an update whose gradient norm "
            "exceeds the window's mean by this many standard deviations",
            0,
            strict=True,
        )
    )
    # -- loss_spike
    spike_window: int = _setting(
        _int_option(5, _T.spike_window, "loss_spike: trailing window (steps) the loss is compared against")
    )
    spike_zscore: float = _setting(
        _float_option(
            _T.spike_zscore,
            "loss_spike: robust z-score of log-loss above the trailing median that counts as a spike",
            0,
            strict=True,
        )
    )
    spike_ratio: float = _setting(
        _float_option(_T.spike_ratio, "loss_spike: minimum loss / trailing-median ratio for a spike", 1, strict=True)
    )
    spike_min_rise: float = _setting(
        _float_option(
            _T.spike_min_rise,
            "loss_spike: minimum absolute rise, as a fraction of the initial loss, for a spike",
            0,
            strict=False,
        )
    )
    warmup_steps: int = _setting(
        _int_option(
            0, _T.warmup_steps, "loss_spike/grad_norm: steps at the start that are not judged (initial transients)"
        )
    )
    # -- grad_norm
    max_grad_norm: float | None = _setting(
        _float_option(
            _T.max_grad_norm,
            "grad_norm: absolute limit on the global gradient norm (default: relative to early training)",
            0,
            strict=True,
            optional=True,
        )
    )
    grad_growth: float = _setting(
        _float_option(
            _T.grad_growth, "grad_norm: limit on gradient norm growth over its early-training reference", 1, strict=True
        )
    )
    # -- val_loss
    val_smoothing: float = _setting(
        _float_option(
            _T.val_smoothing,
            "val_loss: EMA weight of the previous smoothed value (0 = no smoothing)",
            0,
            strict=False,
            max_value=1,
        )
    )
    val_tolerance: float = _setting(
        _float_option(
            _T.val_tolerance,
            "val_loss: allowed rise of the smoothed validation loss above its best, relative",
            0,
            strict=False,
        )
    )
    val_min_delta: float = _setting(
        _float_option(
            _T.val_min_delta,
            "val_loss: allowed rise of the smoothed validation loss above its best, absolute",
            0,
            strict=False,
        )
    )
    max_skipped_fraction: float = _setting(
        _float_option(
            _T.max_skipped_fraction,
            "nonfinite: largest share of the steps a loss-scale optimizer (mixed precision) may skip on overflow",
            0,
            strict=False,
            max_value=1.0,
        )
    )
    # -- baseline comparison (--stability-baseline); defaults live with the comparison in report/baseline.py
    baseline_grad_factor: float = _setting(
        _float_option(
            TOLERANCE_DEFAULTS["baseline_grad_factor"],
            "baseline: fail when the 99th-percentile gradient norm exceeds this multiple of the baseline's",
            1,
            strict=False,
        )
    )
    baseline_val_tolerance: float = _setting(
        _float_option(
            TOLERANCE_DEFAULTS["baseline_val_tolerance"],
            "baseline: fail when the final smoothed validation loss exceeds the baseline's by more than this "
            "fraction of it",
            0,
            strict=False,
        )
    )
    baseline_extra_spikes: int = _setting(
        _int_option(
            0,
            int(TOLERANCE_DEFAULTS["baseline_extra_spikes"]),
            "baseline: loss spikes allowed beyond the baseline's count",
        )
    )
    baseline_margin_factor: float = _setting(
        _float_option(
            TOLERANCE_DEFAULTS["baseline_margin_factor"],
            "baseline: fail when the learning-rate margin or the curvature margin shrank by more than this "
            "factor against the baseline's",
            1,
            strict=False,
        )
    )
    #: names whose value came from the test's marker (not CLI/ini/default); not a setting
    from_marker: frozenset[str] = field(default=frozenset(), compare=True)

    @property
    def values(self) -> dict[str, Any]:
        """Every setting as ``{name: value}``, in :data:`OPTIONS` order (a fresh dict)."""
        return {opt.name: getattr(self, opt.name) for opt in OPTIONS}

    @classmethod
    def from_values(cls, values: Mapping[str, Any], from_marker: frozenset[str] = frozenset()) -> RunSpec:
        """A spec from ``{name: value}`` (names must be option names; missing ones take their defaults)."""
        return cls(**dict(values), from_marker=frozenset(from_marker))

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with ``changes`` (option names only)."""
        unknown = set(changes) - set(OPTIONS_BY_NAME)
        if unknown:
            raise TypeError(f"RunSpec.replace: unknown setting(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


#: Every setting, in RunSpec's field order: each field's option (its metadata), named by the field.
OPTIONS: tuple[Option, ...] = tuple(
    dataclasses.replace(f.metadata["option"], name=f.name) for f in fields(RunSpec) if "option" in f.metadata
)
OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

#: The names of the baseline tolerances (the options the comparison with --stability-baseline reads).
TOLERANCE_NAMES: tuple[str, ...] = tuple(TOLERANCE_DEFAULTS)

#: The marker signature shown by ``pytest --markers``.
MARKER_SIGNATURE = (
    "stable_training(steps=200, *, " + ", ".join(f"{o.name}={o.default!r}" for o in OPTIONS if o.name != "steps") + ")"
)


def parse_text(option: Option, text: str) -> Any:
    """Parse a command-line or ini string for ``option`` (raises OptionValueError)."""
    return option.text(text)


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
    return RunSpec.from_values(values)


#: keywords of ``model.fit`` that a marker may be given by mistake: they go to ``stability.fit()``
_FIT_KEYWORDS = frozenset(
    {"epochs", "steps_per_epoch", "initial_epoch", "callbacks", "validation_data", "validation_split",
     "validation_steps", "validation_batch_size", "validation_freq", "class_weight", "sample_weight", "verbose"}
)  # fmt: skip
#: what the model's optimizer holds, not the run
_OPTIMIZER_KEYWORDS = frozenset({"lr", "learning_rate", "optimizer", "clipnorm", "clipvalue", "global_clipnorm"})


def optimizer_keyword_hint(name: str) -> str:
    """`` (lr belongs to the model's optimizer: ...)`` for a keyword the optimizer holds, given to the marker or
    to ``stability.fit()``; else ''."""
    if name not in _OPTIMIZER_KEYWORDS:
        return ""
    return f" ({name} belongs to the model's optimizer: set it where you compile the model)"


def _unknown_argument(key: str, value: object) -> str:
    """The message for a marker keyword that is no setting: the closest setting's name when one is close, or
    where the keyword belongs (``stability.fit()``, the model's optimizer), then every setting's name."""
    import difflib

    names = [o.name for o in OPTIONS]
    hint = optimizer_keyword_hint(key)
    if key in _FIT_KEYWORDS:
        hint = f" ({key} is an argument of model.fit: pass it to stability.fit(), which passes it on)"
    elif not hint:
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown argument {key}={value!r}{hint}; known arguments: {', '.join(names)}"


def merge_marker(base: RunSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> RunSpec:
    """Lay a ``stable_training`` marker's arguments over the resolved defaults.

    Raises:
        OptionValueError: for an unknown keyword, extra positionals, a duplicate
            or an invalid value; the message names the argument and the value.
    """
    kwargs = dict(kwargs)
    if len(args) > 1:
        raise OptionValueError(f"takes at most one positional argument (steps), received {len(args)}: {args!r}")
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
            raise OptionValueError(_unknown_argument(key, value))
        try:
            values[key] = opt.parse(value)
        except OptionValueError as exc:
            hint = ""
            if key == "seeds" and isinstance(value, (list, tuple, range, set)):
                hint = " (a count, from seed= on: seed=5, seeds=2 trains under seeds 5 and 6)"
            raise OptionValueError(f"{key} must be {exc}{hint}") from None
    ceiling = steps_above_ceiling(values)
    if ceiling is not None:
        raise OptionValueError(ceiling)
    return RunSpec.from_values(values, frozenset(kwargs))


# -- run-wide files: the JSON report, baselines, plots, the HTML report -----------------
# No marker keyword (they name files of the whole run), so they are not in OPTIONS;
# each is a --stability-NAME option with an ini twin all the same.

REPORT_HELP = "write the JSON stability report (strict JSON, schema-versioned, written atomically) to PATH"
SAVE_BASELINE_HELP = (
    "save each stability test's summary metrics (per seed) as a baseline file at PATH; an "
    "existing baseline there is updated: tests not run keep their entries"
)
BASELINE_HELP = (
    "compare each stability test with the baseline file at PATH and fail it when its stability "
    "regressed beyond the baseline_* tolerances"
)
BASELINE_STRICT_HELP = (
    "with --stability-baseline: fail a stability test (or seed) that is not in the baseline (default: report it)"
)
PLOTS_HELP = (
    "write one PNG per stability test (loss, gradient norm, validation loss, findings) into DIR; needs matplotlib"
)
BATCHES_HELP = (
    "save the batch of each loss spike or non-finite loss (array inputs) as an .npz file in DIR (default: "
    "stability-batches/ beside the JSON or HTML report, when one is written)"
)
REPLAY_HELP = "re-run stability tests with exactly this seed's run (printed in each failure)"
REPLAY_BATCH_HELP = (
    "with --stability-replay: train up to step STEP and measure the batch it trained on (array inputs) before "
    "and after its update, against the previous batch: a bad sample or a bad update (printed with each spike)"
)
HTML_HELP = (
    "write the HTML stability report to PATH: one self-contained file (no network) with a summary table "
    "and each test's curves, findings, cause, fix, what-if, margins and baseline comparison"
)

#: (name, metavar, help) of the path settings: --stability-NAME and ini stability_NAME.
PATH_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("report", "PATH", REPORT_HELP),
    ("save_baseline", "PATH", SAVE_BASELINE_HELP),
    ("baseline", "PATH", BASELINE_HELP),
    ("plots", "DIR", PLOTS_HELP),
    ("html", "PATH", HTML_HELP),
    ("batches", "DIR", BATCHES_HELP),
)


@dataclass(frozen=True)
class RunFiles:
    """The resolved run-wide file settings (paths absolute; None when not given)."""

    report: Path | None = None
    save_baseline: Path | None = None
    baseline: Path | None = None
    baseline_strict: bool = False
    plots: Path | None = None
    html: Path | None = None
    batches: Path | None = None

    @property
    def batches_dir(self) -> Path | None:
        """Where offending batches are saved: ``batches``, else ``stability-batches/`` beside the JSON or HTML
        report, else nowhere."""
        if self.batches is not None:
            return self.batches
        beside = self.report or self.html
        return beside.parent / "stability-batches" if beside is not None else None

    @property
    def any(self) -> bool:
        return any(p is not None for p in (self.report, self.save_baseline, self.baseline, self.plots, self.html))


def resolve_run_files(
    get_cli: Callable[[str], Any], get_ini: Callable[[str], Any], *, invocation_dir: Path, rootdir: Path
) -> tuple[RunFiles, list[str]]:
    """CLI > ini > default for the file settings; returns them and every problem found (none raised).

    Args:
        get_cli: the raw command-line value of a setting name (``report``...), or None.
        get_ini: the raw ini value of an ini key, or None / "".
        invocation_dir: a relative command-line path is relative to it.
        rootdir: a relative ini path is relative to it.
    """
    problems: list[str] = []
    paths: dict[str, Path | None] = {}
    for name, _, _ in PATH_SETTINGS:
        cli, ini = get_cli(name), get_ini(ini_name(name))
        paths[name] = None
        if cli is not None:
            if not str(cli).strip():
                problems.append(f"{cli_name(name)}: expected a path, received an empty string")
            else:
                paths[name] = Path(invocation_dir, os.path.expanduser(cli))
        elif ini not in (None, ""):
            paths[name] = Path(rootdir, os.path.expanduser(str(ini)))
    strict = get_cli("baseline_strict")
    if strict is None:
        strict = bool(get_ini(ini_name("baseline_strict")))
    files = RunFiles(
        report=paths["report"],
        save_baseline=paths["save_baseline"],
        baseline=paths["baseline"],
        baseline_strict=bool(strict),
        plots=paths["plots"],
        html=paths["html"],
        batches=paths["batches"],
    )
    for name in ("report", "save_baseline", "html"):
        path = getattr(files, name)
        if path is not None and path.is_dir():
            problems.append(f"{cli_name(name)}: {path} is a directory; give a file path")
    for name in ("report", "save_baseline", "html", "plots", "batches"):
        path = getattr(files, name)
        blocking = _file_in_the_way(path) if path is not None else None
        if blocking is not None:  # known now, not after the run has trained
            problems.append(f"{cli_name(name)}: cannot write {path}: {blocking} is a file, not a directory")
    for name in ("plots", "batches"):
        path = getattr(files, name)
        if path is not None and path.exists() and not path.is_dir():
            problems.append(f"{cli_name(name)}: {path} exists and is not a directory")
    if files.baseline_strict and files.baseline is None:
        problems.append(
            f"{cli_name('baseline_strict')} needs {cli_name('baseline')}=PATH (or ini {ini_name('baseline')})"
        )
    return files, problems


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing folder above ``path`` that is a file instead (the run could not create ``path``), or
    None."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def parse_replay(text: str, option: str = "--stability-replay", what: str = "a seed") -> int:
    """``--stability-replay``'s value: a seed, an int >= 0 (raises OptionValueError); ``option`` and ``what``
    name another such option (``--stability-replay-batch``: a step)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise OptionValueError(f"{option} expects {what} (an int >= 0), received {text!r}")
    return value


__all__ = [
    "CHECK_NAMES",
    "DEFAULT_MAX_STEPS",
    "DEVICES",
    "MARKER_SIGNATURE",
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "Option",
    "OptionValueError",
    "PATH_SETTINGS",
    "RunFiles",
    "RunSpec",
    "TOLERANCE_NAMES",
    "USAGE_ERROR_HEADING",
    "cli_name",
    "ini_name",
    "merge_marker",
    "optimizer_keyword_hint",
    "parse_replay",
    "parse_text",
    "resolve_run_files",
    "resolve_config_defaults",
    "steps_above_ceiling",
    "usage_message",
]
