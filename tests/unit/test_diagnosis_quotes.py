"""Every number a diagnosis quotes is the trace's, and its fixes never point the wrong way.

Hypothesis generates traces of every shape the diagnosis rules handle (healthy starts, spikes, jumps that
stay up, gradient bursts, NaNs after a divergence or out of the blue, early blow-ups, Adam runs with and
without a history of small gradients, float16 Adam, stuck and collapsed runs, a loss flat at ln K, validation
rises), runs the checks, diagnoses and ranks the findings, and for every finding:

* re-renders its cause and fix from ``evidence["templates"]`` and ``evidence["quotes"]`` (the text is the
  quotes', and its templates hold no number of their own);
* recomputes every quote from the trace with the small evaluator below, written apart from the diagnosis
  (the loss at a step, a median / lowest / highest / 90th percentile over the steps it names, ratios,
  products, the settings in ``trace.info``);
* checks the direction rules: no fix raises the learning rate of a run that went up; a clipnorm comes from a
  healthy stretch of at least ``HEALTHY_MIN_STEPS`` steps before the event; Adam's second moment is named
  only with a history of at least ``HISTORY_MIN_STEPS`` steps of shrinking gradients before the burst, and
  never for an early blow-up.

No framework is imported: this is the fast tier.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_stability import diagnosis as D  # noqa: E402
from pytest_stability.checks import Thresholds, run_checks  # noqa: E402
from pytest_stability.checks.validation import smooth  # noqa: E402
from pytest_stability.pipeline import judge  # noqa: E402
from pytest_stability.trace import GRADS, LOSS, WEIGHTS, Trace  # noqa: E402

# derandomize: the same examples every run (a failure replays as it was); no example database written to disk
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)

# code-like words a template may spell with a digit (they are names, not numbers)
CODE_WORDS = (
    "log(0)",
    "0/0",
    "sqrt(0)",
    "g^2/v",
    "float16",
    "float32",
    "mixed_float16",
    "beta_2",
    "he_normal",
    "divide by 255",  # pixel values: a fact of 8-bit images, not a number of the trace
    "glorot_uniform",
    "1e-7",
)
#: a digit that is not part of an identifier (beta_2, float16)
BARE_DIGIT = re.compile(r"(?<![A-Za-z_])\d")


# -- the independent evaluator ----------------------------------------------------------


def _array(trace: Trace, of: str) -> np.ndarray | None:
    if of.startswith("opt."):
        return trace.opt_stats.get(of[4:])
    if of.startswith("var_grad."):  # one variable's gradient norm
        return trace.var_grad_norms[:, list(trace.var_names).index(of[len("var_grad.") :])]
    return {"loss": trace.loss, "grad_norm": trace.grad_norm, "update_ratio": trace.update_ratio, "lr": trace.lr}[of]


def _stat(values: np.ndarray, stat: str) -> float:
    v = values[np.isfinite(values)]
    if not v.size:
        return math.nan
    if stat in ("min_median5", "max_median5"):
        if v.size < 5:
            return math.nan
        meds = [float(np.median(v[i : i + 5])) for i in range(v.size - 4)]
        return min(meds) if stat == "min_median5" else max(meds)
    return {
        "median": lambda: float(np.median(v)),
        "min": lambda: float(v.min()),
        "max": lambda: float(v.max()),
        "p90": lambda: float(np.percentile(v, 90)),
    }[stat]()


def recompute(name: str, quotes: dict, trace: Trace) -> object:
    q = quotes[name]
    kind = q["kind"]
    if kind == "series":
        a, b = q["steps"]
        arr = _array(trace, q["of"])
        assert arr is not None or math.isnan(q["value"]), (name, q)
        if arr is None:
            return math.nan
        assert 0 <= a <= b < arr.shape[0] or math.isnan(q["value"]), (name, q, arr.shape)
        return float(arr[a]) if q["stat"] == "at" else _stat(arr[a : b + 1], q["stat"])
    if kind == "val":
        step = q["steps"][0]
        ok = np.isfinite(trace.val_loss)
        vals, steps = trace.val_loss[ok], trace.val_steps[ok]
        if q["smoothing"]:
            vals = smooth(vals, q["smoothing"])
        hit = np.flatnonzero(steps == step)
        return float(vals[hit[0]]) if hit.size else math.nan
    if kind in ("ratio", "product", "min"):
        x, y = (quotes[p]["value"] for p in q["parts"])
        if kind == "ratio":
            return x / y if math.isfinite(x) and math.isfinite(y) and y != 0 else math.nan
        if kind == "product":
            return x * y
        return min(x, y) if math.isfinite(x) and math.isfinite(y) else (y if math.isfinite(y) else x)
    if kind == "derived":
        x = quotes[q["parts"][0]]["value"]
        if not math.isfinite(x):
            return math.nan
        return {
            "pow10": lambda v: 10.0 ** round(math.log10(v)) if v > 0 else math.nan,
            "pow10_floor": lambda v: 10.0 ** math.floor(math.log10(v) + 1e-9) if v > 0 else math.nan,
            "round2": lambda v: float(f"{v:.2g}"),
            "exp": math.exp,
            "nearest_int": lambda v: float(round(v)),
            "log": lambda v: math.log(v) if v > 0 else math.nan,
        }[q["fn"]](x)
    if kind == "setting":
        value = (trace.info.get("optimizer_config") or {}).get(q["key"])
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if kind == "fact":
        value = trace.info
        for key in q["key"].split(
            "."
        ):  # "output_wiring.outside": a key of a dict in trace.info, "lr_callbacks.0.factor"
            if isinstance(value, list) and key.isdigit():  # an item of a list in it
                value = value[int(key)] if int(key) < len(value) else None
            else:
                value = value.get(key) if isinstance(value, dict) else None
        return value[0] if isinstance(value, list) else value
    return q["value"]  # step, count, const, text: checked by the rules' own tests


def _same(a: object, b: object) -> bool:
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300)


def _render(template: str, quotes: dict, finding) -> str:
    """The text, rendered apart from the diagnosis's own renderer: the number, and for a series where it is."""

    def show(m: re.Match) -> str:
        q = quotes[m.group(1)]
        v = q["value"]
        if q["kind"] == "text":
            return v
        if q["kind"] in ("step", "count"):
            return str(int(v))
        fmt = (
            "n/a"
            if isinstance(v, float) and not math.isfinite(v)
            else (
                f"{v:.0%}"
                if q.get("format") == "percent"
                else v
                if isinstance(v, str)
                else str(v)
                if isinstance(v, bool) or v is None
                else f"{float(v):.3g}"
            )
        )
        if q["kind"] == "series":
            a, b = q["steps"]
            where = f"step {a}" if q["stat"] == "at" or a == b else f"{D.STAT_WORDS[q['stat']]} steps {a}-{b}"
            return f"{fmt} ({where})"
        if q["kind"] == "val":
            what = "smoothed validation loss" if q["smoothing"] else "validation loss"
            return f"{fmt} ({what} after {q['steps'][0]} steps)"
        return fmt

    return re.sub(r"\{(\w+)\}", show, template)


def check_finding(f, trace: Trace, run_blew_up: bool) -> None:
    ev = f.evidence
    quotes, templates = ev["quotes"], ev["templates"]
    # 1. the text is rendered from the quotes, and the templates hold no number of their own
    assert _render(templates["cause"], quotes, f) == f.cause
    assert [_render(t, quotes, f) for t in templates["fixes"]] == [x["text"] for x in ev["fixes"]]
    fixes = ", or ".join(x["text"] for x in ev["fixes"] if not x["note"])
    assert f.fix == "; ".join([fixes] * bool(fixes) + [x["text"] for x in ev["fixes"] if x["note"]])
    for t in [templates["cause"], *templates["fixes"]]:
        bare = re.sub(r"\{\w+\}", "", t)
        for word in CODE_WORDS:
            bare = bare.replace(word, "")
        assert not BARE_DIGIT.search(bare), (t, f.evidence["cause_key"])
    # 2. every quote is the trace's, at the steps it names
    for name, q in quotes.items():
        assert _same(recompute(name, quotes, trace), q["value"]), (name, q, f.evidence["cause_key"])
        if q["kind"] == "series" and math.isfinite(q["value"]):
            assert 0 <= q["steps"][0] <= q["steps"][1] < trace.steps, (name, q)
    # 2b. words of direction agree with their numbers: a loss that "jumped to A from B" or "rose to A from B" has
    # A > B, one that climbed "from B to A" too, and one that "ended Rx above" has R > 1
    cause_t = templates["cause"]
    ups = re.findall(r"(?:jumped|rose) to \{(\w+)\} from \{(\w+)\}", cause_t)
    ups += [
        (a, b)
        for b, a in re.findall(
            r"climbed back slowly: [^{]*\{\w+\} steps rose \{\w+\}x, from \{(\w+)\} to \{(\w+)\}", cause_t
        )
    ]
    for after, before in ups:
        assert quotes[after]["value"] > quotes[before]["value"], (f.cause, after, before)
    for ratio in re.findall(r"ended \{(\w+)\}x above", cause_t):
        assert quotes[ratio]["value"] > 1, f.cause
    for best in re.findall(r"rose from its best \{(\w+)\} by step", cause_t):  # a collapse, to its level
        assert f.check == "loss_spike" and f.evidence["collapse"] and f.value > quotes[best]["value"], f.cause
    # 3. the fixes point the right way
    configs = [x["config"] for x in ev["fixes"] if x["config"]]
    assert configs == ev["fix_configs"]
    if run_blew_up:
        assert not any(c.get("learning_rate_factor", 0) > 1 for c in configs), (f.evidence["cause_key"], configs)
    for c in configs:
        if "learning_rate_factor" in c:
            assert 0 < c["learning_rate_factor"] <= 10
        if "learning_rate_cap" in c:  # only after a jump, below the rate it blew up at
            k = quotes["lr_jump_step"]["value"]
            before = float(np.max(trace.lr[:k]))
            assert k >= D.HEALTHY_MIN_STEPS and trace.lr[k] >= D.LR_JUMP * before, (k, trace.lr[: k + 1])
            assert 0 < c["learning_rate_cap"] <= 1.05 * D.JUMP_CAP * before  # round2 may round up by < 5 %
            assert c["learning_rate_cap"] < quotes["lr_blew_up_at"]["value"]
        if "clipnorm" in c:
            h = quotes["healthy_steps"]["value"]
            assert h >= D.HEALTHY_MIN_STEPS
            _assert_healthy_stretch(trace, h, quotes["healthy_before"]["value"])
            p90 = _stat(trace.grad_norm[:h], "p90")
            assert c["clipnorm"] == float(f"{p90:.2g}")
    # a wiring bug of the output leads only with its fact, and its own fix first
    fact = (trace.info or {}).get("output_wiring")
    if ev["cause_key"] in ("probabilities_from_unbounded", "softmax_one_unit", "logits_from_probabilities"):
        assert fact and fact["key"] == ev["cause_key"] and quotes["output_layer"]["value"] == fact["layer"]
        assert ev["event_cause_key"] in D.CAUSES
        assert templates["fixes"][0].startswith(
            "give {output_layer} no activation"
            if ev["cause_key"] == "logits_from_probabilities"
            else "give {output_layer} activation="
        )
    if ev.get("event_cause_key", ev["cause_key"]) == "weight_decay_too_strong":
        wd = trace.info["optimizer_config"]["weight_decay"]
        assert quotes["weight_decay"]["value"] == wd and quotes["decay_per_step"]["value"] >= D.WD_SHRINK
    if ev["cause_key"] == "targets_out_of_range":  # only for a stuck run, with the output's range and the targets'
        assert f.check == "stuck" and ev["targets_out_of_range"] and fact["key"] == "targets_out_of_range"
        assert templates["fixes"][0].startswith("give {output_layer} no activation (a linear output)")
    elif ev.get("targets_out_of_range"):
        raise AssertionError(f"a stuck run whose targets the output cannot reach named {ev['cause_key']}")
    if ev["cause_key"] == "batchnorm_one_sample":
        assert quotes["bn_layer"]["value"] == trace.info["batchnorm_one_sample"]["layer"]
        assert templates["fixes"][0].startswith("train with a batch_size of {bn_batch_size} or more")
    elif "batchnorm_one_sample" in (trace.info or {}):  # it leads whenever it can explain the event
        assert ev["cause_key"] not in D._FROM_THE_OUTPUT, ev["cause_key"]
    if "healthy_steps" in quotes and not any("clipnorm" in c for c in configs):
        assert quotes["healthy_steps"]["value"] < D.HEALTHY_MIN_STEPS or trace.grad_norm is None
    # 4. Adam's second moment only with its history; never for an early blow-up
    start = int(ev.get("start", f.step))
    key = ev.get("event_cause_key", ev["cause_key"])  # under a loss fed unbounded outputs, the event's own
    if key == "adam_second_moment":
        assert start >= D.HISTORY_MIN_STEPS
        _assert_adam_history(trace, start, slow=bool(ev.get("slow_rise")))
    if start < min(D.early_end(trace), D.HISTORY_MIN_STEPS) and f.check in ("loss_spike", "grad_norm"):
        assert key in ("lr_too_high", "collapse_constant", "epsilon_underflow"), key


def _assert_healthy_stretch(trace: Trace, h: int, start: int) -> None:
    """Steps [0, h) are healthy (finite, within HEALTHY_GROWTH x the first steps) and h is where that ended."""
    k = min(5, start)
    loss_ref = float(np.median(trace.loss[:k][np.isfinite(trace.loss[:k])]))
    g_ref = float(np.median(trace.grad_norm[:k][np.isfinite(trace.grad_norm[:k])]))

    def healthy(i: int) -> bool:
        return bool(
            np.isfinite(trace.loss[i])
            and np.isfinite(trace.grad_norm[i])
            and abs(trace.loss[i]) <= D.HEALTHY_GROWTH * max(abs(loss_ref), 1e-12)
            and (g_ref <= 0 or trace.grad_norm[i] <= D.HEALTHY_GROWTH * g_ref)
        )

    assert all(healthy(i) for i in range(h))
    assert h == min(start, trace.steps) or not healthy(h)


def _stayed_up(trace: Trace, start: int) -> bool:
    """Whether one of the first two loss events from ``start`` on did not recover (recomputed from the checks)."""
    events = [
        f
        for r in run_checks(trace)
        for f in r.findings
        if f.check == "loss_spike" and int(f.evidence.get("start", f.step)) >= start
    ]
    events.sort(key=lambda f: int(f.evidence.get("start", f.step)))
    return any(f.kind == "spike_no_recovery" for f in events[:2])


def _assert_adam_history(trace: Trace, start: int, slow: bool = False) -> None:
    """A long stretch of small gradients before the burst (smaller ones before a slow climb back, or before a
    burst that left the loss up, after a fall of the loss of orders of magnitude), or the slot statistics' g^2/v
    jump."""
    g = trace.grad_norm
    w = min(max(10, min(50, trace.steps // 10)), start // 4)
    g2v = trace.opt_stats.get("g2_over_v_max")
    evidence = []
    if g is not None:
        early = float(np.median(g[:w]))
        before = float(np.median(g[max(w, start - D.HISTORY_MIN_STEPS) : start]))
        fell = float(np.median(trace.loss[:w])) / float(np.min(trace.loss[:start]))
        evidence.append(
            early >= D.TINY_GRADIENTS * before
            or (early >= D.SMALL_GRADIENTS * before and fell >= D.NEAR_ZERO)
            or (slow and early >= D.SLOW_CLIMB_GRADIENTS * before and fell >= D.SLOW_CLIMB_FELL)
            or (early >= D.PLATEAU_GRADIENTS * before and fell >= D.SMALL_GRADIENTS_FELL and _stayed_up(trace, start))
        )
    else:
        evidence.append(True)  # without gradient norms the loss's fall is the evidence (quoted and recomputed)
    if g2v is not None:
        evidence.append(
            float(np.max(g2v[max(0, start - 5) : start + 1])) >= D.G2V_JUMP * float(np.median(g2v[w:start]))
        )
    assert any(evidence)


def _judge_and_check(trace: Trace) -> list:
    results = judge(trace, Thresholds())
    findings = [f for r in results for f in r.findings]
    went_up = any(f.check in ("loss_spike", "grad_norm", "nonfinite") for f in findings) or any(
        D.blew_up(trace, f.step, f.value)["any"]
        for f in findings
        if f.check == "stuck" and f.kind in ("collapsed", "stuck")
    )
    for f in findings:
        check_finding(f, trace, went_up)
    return findings


# -- generated traces ---------------------------------------------------------------------

OPTIMIZERS = st.sampled_from(
    [
        ("SGD", {"learning_rate": 0.1, "momentum": 0.9}),
        ("Adam", {"learning_rate": 1e-3, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False}),
        ("AdamW", {"learning_rate": 3e-2, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False}),
        ("AdamW", {"learning_rate": 3e-2, "epsilon": 1e-7, "weight_decay": 5.0}),
        ("RMSprop", {"learning_rate": 1e-3}),
    ]
)


#: ``trace.info["output_wiring"]`` as the engine records it (model_facts.output_wiring)
SOFTMAX_ONE_UNIT = {"key": "softmax_one_unit", "layer": "Dense 'out'"}
#: ``trace.info["batchnorm_one_sample"]`` (model_facts.batchnorm_over_one_sample)
BATCHNORM_ONE_SAMPLE = {"layer": "BatchNormalization 'bn'"}
TARGETS_OUT_OF_RANGE = {
    "key": "targets_out_of_range",
    "layer": "Dense 'out'",
    "activation": "sigmoid",
    "low": 0.0,
    "high": 1.0,
    "outside": 0.99,
    "target_min": -59.5,
    "target_max": 139.0,
    "loss": "mse",
}
PROBABILITIES_FROM = {
    "key": "probabilities_from_unbounded",
    "loss": "binary_crossentropy",
    "loss_class": "BinaryCrossentropy",
    "layer": "Dense 'out'",
    "activation": "linear",
    "expects": "sigmoid",
}

#: from_logits=True on a softmax over 3 classes (model_facts.logits_from_probabilities)
LOGITS_FROM = {
    "key": "logits_from_probabilities",
    "loss": "sparse_categorical_crossentropy",
    "loss_class": "SparseCategoricalCrossentropy",
    "layer": "Dense 'out'",
    "activation": "softmax",
    "classes": 3,
    "floor": float(np.log1p(2 / np.e)),
}


@st.composite
def event_traces(draw: st.DrawFn) -> Trace:
    """A noisy falling (or flat) loss, then an event at a drawn step: a spike that recovers, a jump that stays, a
    gradient burst, a NaN after a divergence or from a steady loss, a collapse to a flat loss."""
    n = draw(st.integers(60, 700))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    fall = draw(st.sampled_from([0.0, 1.0, 5.0, 20.0]))  # e-folds the loss falls over the run
    noise = draw(st.sampled_from([0.0, 0.02, 0.2]))
    loss = (
        np.exp(-np.linspace(0, fall, n)) * np.exp(noise * rng.normal(size=n)) * draw(st.sampled_from([0.1, 1.0, 50.0]))
    )
    g_fall = draw(st.sampled_from([0.0, 1.0, 4.0, 9.0]))
    g = np.exp(-np.linspace(0, g_fall, n)) * np.exp(0.1 * rng.normal(size=n))
    upd = np.full(n, draw(st.sampled_from([1e-4, 1e-3, 0.3, 20.0])))
    s = draw(st.integers(1, n - 2))
    kind = draw(
        st.sampled_from(
            ["spike", "jump_stay", "burst", "nan_diverge", "nan_sudden", "flat", "none", "slow_climb", "ended_up"]
        )
    )
    mask = np.zeros(n, np.int32)
    first = None
    if kind == "spike":
        loss[s : s + 6] *= np.geomspace(30, 3, len(loss[s : s + 6]))
        g[s] *= draw(st.sampled_from([2.0, 50.0, 1e4]))
    elif kind == "jump_stay":
        level = float(np.max(loss[: s + 1])) * draw(st.sampled_from([1.2, 3.0, 50.0]))
        loss[s:] = level * (1 + draw(st.sampled_from([0.0, 0.001])) * rng.normal(size=n - s))
        g[s] *= 100.0
        g[s + 1 :] = draw(st.sampled_from([0.0, 1e-9, 1.0]))
    elif kind == "burst":
        g[s] *= draw(st.sampled_from([200.0, 1e5]))
    elif kind in ("nan_diverge", "nan_sudden"):
        k = min(s, n - 1)
        if kind == "nan_diverge":
            m = min(8, k)
            loss[k - m : k] *= np.geomspace(1, 1e6, m)
            g[k - m : k] *= np.geomspace(1, 1e4, m)
        loss[k:] = np.nan
        g[k:] = np.nan
        mask[k:] = LOSS | GRADS | WEIGHTS
        loss, g, upd, mask = loss[: k + 1], g[: k + 1], upd[: k + 1], mask[: k + 1]
        first = {"step": k, "source": draw(st.sampled_from(["loss", "gradients", "weights"]))}
    elif kind == "slow_climb" and n >= 400:
        # a climb of 30x over 100 steps and back, in per-step noise: one noisy step of it can sit below the
        # level it climbed from (a slingshot)
        k = int(np.clip(s, 60, n - 300))
        shape = np.concatenate(
            [np.linspace(0, np.log(30), 100), np.full(50, np.log(30)), np.linspace(np.log(30), 0, 100)]
        )
        loss[k : k + 250] *= np.exp(shape + 0.5 * rng.normal(size=250))
    elif kind == "ended_up":
        # an update as large as the weights at step 0, then a noisy loss that never comes back below its start
        upd[0] = 5.0
        loss[1:] = float(loss[0]) * draw(st.sampled_from([1.5, 4.0])) * np.exp(0.3 * rng.normal(size=n - 1))
    elif kind == "flat":
        loss[s:] = draw(st.sampled_from([float(np.log(10.0)), 0.95, 2.0 * float(loss[0])]))
        g[s:] = draw(st.sampled_from([0.0, 0.3]))
    opt, cfg = draw(OPTIMIZERS)
    schedule = draw(st.sampled_from(["constant", "warmup", "jump"]))
    m = loss.shape[0]
    lr = np.full(m, cfg["learning_rate"]) if schedule == "constant" else np.linspace(1e-4, 30 * cfg["learning_rate"], m)
    if schedule == "jump":  # a step schedule that rises 3x to 1000x at or before the event
        j = int(np.clip(s - draw(st.sampled_from([0, 5, 30])), 1, m - 1))
        lr[j:] *= draw(st.sampled_from([3.0, 30.0, 1000.0]))
    info = {
        "optimizer": opt,
        "optimizer_config": dict(cfg),
        "dtype_policy": draw(st.sampled_from(["float32", "float16"])),
    }
    opt_stats = {}
    if opt.startswith("Adam") and draw(st.booleans()):
        g2v = np.exp(0.3 * rng.normal(size=m))
        if kind in ("spike", "burst") and draw(st.booleans()):
            g2v[max(0, s - 2) : s + 1] *= 1e4
        opt_stats = {"g2_over_v_max": g2v, "v_rms": np.geomspace(1e-2, 1e-5, m)}
    has_g = draw(st.booleans()) or kind == "burst"
    wiring = draw(
        st.sampled_from(
            [None, None, PROBABILITIES_FROM, SOFTMAX_ONE_UNIT, BATCHNORM_ONE_SAMPLE, TARGETS_OUT_OF_RANGE, LOGITS_FROM]
        )
    )
    if wiring is BATCHNORM_ONE_SAMPLE:  # BatchNorm over features in batches of one sample
        info["batchnorm_one_sample"] = dict(wiring)
    elif wiring is not None:  # a loss on probabilities fed a linear output layer; a softmax over one unit
        info["output_wiring"] = dict(wiring)
    return Trace(
        loss=loss,
        grad_norm=g if has_g else None,
        nonfinite=mask,
        lr=lr if draw(st.booleans()) else None,
        update_ratio=upd if draw(st.booleans()) else None,
        opt_stats=opt_stats,
        first_nonfinite=first,
        steps_planned=n,
        info=info,
    )


@st.composite
def val_traces(draw: st.DrawFn) -> Trace:
    n = draw(st.integers(100, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    loss = np.geomspace(1.0, draw(st.sampled_from([0.9, 0.1])), n) * np.exp(0.1 * rng.normal(size=n))
    if draw(st.booleans()):
        loss[n // 2 :] *= 3.0  # the training loss rose too
    every = draw(st.sampled_from([10, 25]))
    steps = np.arange(0, n + 1, every)
    k = steps.size
    val = np.concatenate(
        [np.geomspace(1.0, 0.4, k // 2), 0.4 * draw(st.sampled_from([1.3, 2.0])) ** np.linspace(0, 1, k - k // 2)]
    )
    val *= np.exp(draw(st.sampled_from([0.0, 0.1])) * rng.normal(size=k))
    bn = draw(st.sampled_from([0, 2]))
    info = {"batchnorm_layers": bn, "batchnorm_momentum": [draw(st.sampled_from([0.99, 0.9]))] * bn}
    if draw(st.booleans()):
        info["batch_size"] = draw(st.sampled_from([8, 32]))
    if bn and draw(st.booleans()):
        info["bn_train_infer_gap"] = draw(st.sampled_from([0.02, 0.5]))
    update = np.exp(0.1 * rng.normal(size=n)) * draw(st.sampled_from([1e-3, 1e-2])) if draw(st.booleans()) else None
    return Trace(
        loss=loss,
        grad_norm=np.exp(0.1 * rng.normal(size=n)),
        update_ratio=update,
        val_steps=steps,
        val_loss=val,
        info=info,
    )


@SETTINGS
@given(event_traces())
def test_every_quoted_number_is_the_traces_and_fixes_point_the_right_way(trace):
    _judge_and_check(trace)


@SETTINGS
@given(val_traces())
def test_validation_diagnoses_quote_the_trace(trace):
    for f in _judge_and_check(trace):
        if f.check == "val_loss":
            assert f.evidence["quotes"]["val_at"]["kind"] == "val"


@SETTINGS
@given(
    st.integers(30, 250),
    st.sampled_from([D.LR_JUMP, 30.0, 7000.0]),
    st.integers(0, 30),
    st.sampled_from(["SGD", "Adam"]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_a_rate_that_jumped_before_a_blow_up_is_capped_near_the_rates_the_run_trained_at(
    j, jump, delay, opt, died, seed
):
    # a step schedule: 1e-3 for j steps, then jump x that, the loss jumping 30x `delay` steps later and staying
    # up, the gradients bursting with it (and dying after it, a collapse, or not): the first fix caps the rate,
    # never above JUMP_CAP x 1e-3 nor the rate it blew up at
    rng = np.random.default_rng(seed)
    n = 400
    loss = np.exp(-np.linspace(0, 2, n)) * np.exp(0.02 * rng.normal(size=n))
    g = np.exp(0.1 * rng.normal(size=n))
    s = j + delay
    loss[s:] *= 30.0
    g[s : s + 3] *= 50.0
    if died:  # the network died in the blow-up: a flat loss, zero gradients (a collapse)
        loss[s + 3 :] = loss[s + 3]
        g[s + 3 :] = 0.0
    lr = np.where(np.arange(n) < j, 1e-3, 1e-3 * jump)
    trace = Trace(
        loss=loss,
        grad_norm=g,
        lr=lr,
        steps_planned=n,
        info={"optimizer": opt, "optimizer_config": {"learning_rate": 1e-3}},
    )
    findings = _judge_and_check(trace)
    primary = D.primary_finding(findings, trace)
    assert primary is not None and primary.check in ("loss_spike", "grad_norm", "stuck")
    assert primary.evidence["cause_key"] in ("lr_too_high", "collapse_constant"), primary.cause
    first = primary.evidence["fix_configs"][0]
    assert list(first) == ["learning_rate_cap"], (primary.evidence["cause_key"], primary.evidence["fix_configs"])
    assert 0 < first["learning_rate_cap"] <= 1.05 * D.JUMP_CAP * 1e-3
    assert first["learning_rate_cap"] < 1e-3 * jump


@SETTINGS
@given(st.integers(1, D.HISTORY_MIN_STEPS - 1), st.integers(0, 2**16), st.booleans())
def test_adam_second_moment_needs_a_history_before_the_burst(burst, seed, with_stats):
    # the loss and the gradient norm fall by orders of magnitude, then the gradient bursts: before
    # HISTORY_MIN_STEPS steps there is no history for v to have collapsed over
    rng = np.random.default_rng(seed)
    n = burst + 200
    loss = np.geomspace(1.0, 1e-9, n) * np.exp(0.05 * rng.normal(size=n))
    g = np.geomspace(1.0, 1e-5, n)
    loss[burst : burst + 8] = 5.0
    g[burst] = 1e3
    stats = {"g2_over_v_max": np.where(np.arange(n) == burst, 1e6, 1.0)} if with_stats else {}
    trace = Trace(
        loss=loss,
        grad_norm=g,
        opt_stats=stats,
        info={
            "optimizer": "Adam",
            "optimizer_config": {"learning_rate": 3.0, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False},
        },
    )
    for f in _judge_and_check(trace):
        assert f.evidence["cause_key"] != "adam_second_moment", f.cause


@SETTINGS
@given(st.integers(D.HISTORY_MIN_STEPS, 600), st.integers(0, 2**16))
def test_adam_second_moment_needs_small_gradients_before_the_burst(burst, seed):
    # a long history, but the gradient norm never shrank (and no slot statistics): not Adam's second moment
    rng = np.random.default_rng(seed)
    n = burst + 200
    loss = 0.3 * np.exp(0.05 * rng.normal(size=n))
    g = np.exp(0.1 * rng.normal(size=n))
    loss[burst : burst + 8] = 5.0
    g[burst] = 1e3
    trace = Trace(
        loss=loss,
        grad_norm=g,
        info={
            "optimizer": "Adam",
            "optimizer_config": {"learning_rate": 1e-2, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False},
        },
    )
    for f in _judge_and_check(trace):
        assert f.evidence["cause_key"] != "adam_second_moment", f.cause


# -- recorded runs, as traces -----------------------------------------------------------------


def test_early_adam_blow_up_quotes_the_loss_at_step_0_and_lowers_the_rate_first():
    # Adam(learning_rate=3.0) on an MLP: the loss is 1.16 at step 0, 1.66e3 at step 1 (the recorded run)
    rng = np.random.default_rng(0)
    n = 300
    loss = np.concatenate([[1.16, 1.66e3, 5e3, 1.5e3, 400.0], 0.7 * np.exp(0.05 * rng.normal(size=n - 5))])
    g = np.concatenate([[0.5, 1.2e3, 480.0, 270.0, 120.0], 0.2 * np.exp(0.3 * rng.normal(size=n - 5))])
    upd = np.concatenate([[16.0, 0.75, 0.43], np.full(n - 3, 1e-3)])
    trace = Trace(
        loss=loss,
        grad_norm=g,
        update_ratio=upd,
        lr=np.full(n, 3.0),
        steps_planned=n,
        info={
            "optimizer": "Adam",
            "optimizer_config": {"learning_rate": 3.0, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False},
        },
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] == "lr_too_high" and p.confidence == "likely"
    assert "second-moment" not in p.cause and "1.43e+03" not in p.cause
    first = p.evidence["fix_configs"][0]
    # |dw|/|w| was 16 at the first update: 1e-2 / 16 -> a factor below that, 1e-4: learning_rate 0.0003
    assert first == {"learning_rate_factor": 1e-4}
    assert p.fix.startswith("learning_rate=0.0003 (now 3 (step ")
    assert "clipnorm" not in p.evidence["fix_configs"].__repr__()  # no healthy stretch to clip at
    assert "no clipnorm" in p.fix
    check_finding(p, trace, True)


def test_huge_learning_rate_sgd_gets_a_rate_from_its_first_update_and_no_clipnorm():
    # SGD at learning rate 50: the first update is 220x the weights, NaN at step 2
    n = 3
    trace = Trace(
        loss=np.array([45.6, 8e9, np.nan]),
        grad_norm=np.array([17.0, 8.5e7, np.nan]),
        update_ratio=np.array([220.0, 5e6, np.nan]),
        lr=np.full(n, 50.0),
        nonfinite=np.array([0, 0, LOSS | GRADS | WEIGHTS], np.int32),
        steps_planned=300,
        first_nonfinite={"step": 2, "source": "gradients"},
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 50.0}},
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] == "lr_too_high" and p.confidence == "likely"
    assert p.evidence["fix_configs"] == [{"learning_rate_factor": 1e-5}]  # 1e-2 / 220 -> below: 1e-5, 0.0005
    assert "clipnorm=" not in p.fix and "200000" not in p.fix
    check_finding(p, trace, True)


def test_a_run_that_died_after_a_jump_is_a_collapse_and_never_gets_a_higher_rate():
    # a U-Net (soft Jaccard, SGD Nesterov, batch 4): the loss dips to 0.39, jumps to 0.96 at step 8 and stays
    # there with zero gradients; the weights hardly move afterwards (|dw|/|w| 1e-7)
    rng = np.random.default_rng(1)
    n = 300
    loss = np.concatenate(
        [[0.88, 0.86, 0.84, 0.83, 0.79, 0.70, 0.64, 0.39], 0.958 * (1 + 0.003 * rng.normal(size=n - 8))]
    )
    g = np.concatenate([[0.1, 0.08, 0.07, 0.09, 0.12, 0.18, 0.39, 0.78], np.zeros(n - 8)])
    upd = np.concatenate([[0.05, 0.06, 0.07, 0.08, 0.11, 0.16, 0.24, 0.36], np.full(n - 8, 1e-7)])
    trace = Trace(
        loss=loss,
        grad_norm=g,
        update_ratio=upd,
        lr=np.full(n, 1.0),
        steps_planned=n,
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 1.0, "momentum": 0.99}},
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] == "collapse_constant", p.cause
    assert all(c.get("learning_rate_factor", 0) < 1 for c in p.evidence["fix_configs"])
    assert "jumped to" in p.cause and "collapse" in p.cause
    check_finding(p, trace, True)


def test_random_labels_are_named_with_a_learnable_smoke_test():
    rng = np.random.default_rng(0)
    n = 600
    loss = np.concatenate([2.4 + 0.08 * rng.normal(size=30), np.log(10.0) * (1 + 0.002 * rng.normal(size=n - 30))])
    trace = Trace(
        loss=loss,
        grad_norm=np.exp(0.3 * rng.normal(size=n)) * 0.3,
        update_ratio=np.full(n, 1e-3),
        info={"optimizer": "Adam", "optimizer_config": {"learning_rate": 1e-3}},
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "labels_no_signal", p.cause
    assert "10 balanced classes" in p.cause and "smoke test" in p.fix
    # the trace cannot tell random labels from a model too slow to leave the prior: both are said, the labels
    # first, and a larger rate comes second (text only: nothing the what-if replay would change)
    assert p.cause.endswith("or it learns too slowly to leave the prior in 600 steps")
    texts = [x["text"] for x in p.evidence["fixes"]]
    assert "smoke test" in texts[0] and texts[1].endswith("learning_rate=0.01 (now 0.001)")
    assert p.evidence["fix_configs"] == []
    check_finding(p, trace, False)


def test_a_loss_at_the_prior_behind_vanished_gradients_quotes_the_trace_and_leaves_the_labels_alone():
    # twelve sigmoid layers: the first kernel's updates are rounding noise (6e-12 a step), its gradients 1e-7 of
    # the last layer's, the loss flat at ln 2: both findings name the vanished gradients, from the trace's numbers
    rng = np.random.default_rng(3)
    n = 300
    names = ("net/first/kernel", "net/first/bias", "net/last/kernel", "net/last/bias")
    trace = Trace(
        loss=np.log(2.0) * (1 + 0.004 * rng.normal(size=n)),
        grad_norm=np.full(n, 0.2),
        var_names=names,
        var_grad_norms=np.tile([2e-8, 3e-9, 0.2, 0.06], (n, 1)) * np.exp(0.1 * rng.normal(size=(n, 4))),
        var_update_ratio=np.tile([6e-12, 1e-2, 3e-2, 1e-2], (n, 1)),
        lr=np.full(n, 0.01),
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 0.01}},
    )
    findings = D.rank_findings(run_checks(trace), trace)
    assert sorted(f.kind for f in findings) == ["collapsed", "no_update"]
    for f in findings:
        assert f.evidence["cause_key"] == "vanished_gradients" and "labels" not in f.cause + f.fix, f.cause
        check_finding(f, trace, False)


def test_a_network_that_died_at_the_class_prior_after_a_blow_up_is_a_collapse_however_far_its_loss_fell():
    # a convnet on pixels of 0-255: its first update (1.02x the weights' norm) threw the loss from 38 to 1,331, its
    # first layers died, a second layer's bias keeps a few units on (so the kernel after them gets a gradient, for
    # features that no longer depend on the input), and the loss sits at ln 2: it had passed on TensorFlow
    rng = np.random.default_rng(0)
    n = 300
    loss = np.concatenate([[38.0, 1331.0, 0.72], np.log(2.0) * (1 + 0.01 * rng.normal(size=n - 3))])
    names = ("net/c1/kernel", "net/c1/bias", "net/c2/kernel", "net/c2/bias", "net/out/kernel", "net/out/bias")
    vg = np.tile([0.0, 0.0, 0.0, 7e-3, 1.6e-4, 0.1], (n, 1)) * np.exp(0.1 * rng.normal(size=(n, 6)))
    vg[:3] = [[400.0, 20.0, 900.0, 30.0, 50.0, 1.0]] * 3
    update = np.full(n, 0.05)
    update[0] = 1.02
    trace = Trace(
        loss=loss,
        grad_norm=np.sqrt((vg**2).sum(axis=1)),
        var_names=names,
        var_grad_norms=vg,
        update_ratio=update,
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 1e-2, "momentum": 0.9}, "input_rms": 147.0},
    )
    (f,) = [f for r in run_checks(trace) for f in r.findings if f.check == "stuck"]
    assert f.evidence["died_at_prior"] is True and f.evidence["prior_classes"] == 2
    assert f.evidence["dead_variables"] == ["net/c1/kernel", "net/c2/kernel"]
    assert "which the first steps inflated, but a network that died has not converged" in f.message
    p = D.primary_finding(run_checks(trace), trace)
    # the collapse is the mechanism, the inputs' scale its cause (it leads the cause and the fixes)
    assert p.check == "stuck" and p.evidence["cause_key"] == "inputs_out_of_scale", p.cause
    assert p.cause.startswith("the inputs' root mean square is 147, far from unit scale, and the training stopped")
    assert "net/c1/kernel, net/c2/kernel have had a zero gradient since" in p.cause and "a collapse after" in p.cause
    assert "labels" not in p.cause and p.fix.startswith("standardise the inputs")
    assert not any(c.get("learning_rate_factor", 0) > 1 for c in p.evidence["fix_configs"])
    check_finding(p, trace, True)
    # the same run on inputs near unit scale: the collapse is the cause
    trace.info["input_rms"] = 1.0
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] == "collapse_constant" and "root mean square" not in p.cause, p.cause


@pytest.mark.parametrize("input_rms", [147.0, 1.0])
def test_weights_that_hardly_move_while_the_loss_rose_get_no_larger_rate_and_far_inputs_lead(input_rms):
    # pixels of 0-255 saturate a softmax from step 0 (JAX, the loss clipped at 7 to 9): |dw|/|w| 2e-9 a step, the
    # loss 1.2x its start.  It read "(initially 7.05, never above it): the learning rate 0.01 is too low", with
    # learning_rate=0.1 as the fix, against a loss that rose and inputs 147 from unit scale
    rng = np.random.default_rng(2)
    n = 300
    loss = np.concatenate([7.05 * (1 + 0.05 * rng.normal(size=60)), 8.56 * (1 + 0.1 * rng.normal(size=n - 60))])
    trace = Trace(
        loss=loss,
        grad_norm=np.exp(0.2 * rng.normal(size=n)) * 1e-4,
        update_ratio=np.full(n, 2.2e-9),
        lr=np.full(n, 0.01),
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 0.01}, "input_rms": input_rms},
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck", p.message
    assert "never above it" not in p.cause and "too low" not in p.cause, p.cause
    assert not any(c.get("learning_rate_factor", 0) > 1 for c in p.evidence["fix_configs"])
    if input_rms > 100:
        assert p.evidence["cause_key"] == "inputs_out_of_scale"
        assert p.cause.startswith("the inputs' root mean square is 147, far from unit scale")
        assert "the weights hardly move" in p.cause  # the mechanism, after its cause
        assert p.evidence["fixes"][0]["text"].startswith("standardise the inputs")
    check_finding(p, trace, True)


def test_ftrl_replacing_the_weights_is_not_blamed_on_the_labels():
    # Ftrl's first update sets a deep network's weights near zero (|dw|/|w| 0.995): the loss then sits at ln 2,
    # as random labels' would, but random labels move the weights by 1e-3 a step (the test above)
    rng = np.random.default_rng(0)
    n = 200
    loss = np.concatenate([[0.7077], np.log(2.0) * (1 + 1e-4 * rng.normal(size=n - 1))])
    upd = np.concatenate([[0.995], np.full(n - 1, 2e-3)])
    trace = Trace(
        loss=loss,
        grad_norm=np.concatenate([[0.45], np.full(n - 1, 0.06)]),
        update_ratio=upd,
        info={"optimizer": "Ftrl", "optimizer_config": {"learning_rate": 1e-3}},
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "weights_replaced", p.cause
    assert "step 0" in p.cause and "0.995" in p.cause and "Ftrl" in p.cause and "labels" not in p.cause
    assert "Adam or SGD" in p.fix
    check_finding(p, trace, False)
    # under another optimizer a first update that large is a blow-up, for the rules that name its cause
    trace.info = {"optimizer": "SGD", "optimizer_config": {"learning_rate": 5.0}}
    assert D.primary_finding(run_checks(trace), trace).evidence["cause_key"] != "weights_replaced"


def test_float16_adam_blow_up_is_the_epsilon_not_the_data():
    # the first update of float16 Adam (epsilon 1e-7 < float16's smallest normal) moves the weights 2.4x
    n = 200
    loss = np.concatenate([[0.68, 9.0, 10.6, 10.4], np.full(n - 4, np.nan)])
    g = np.concatenate([[1.4, 34.0, 52.0, 54.0], np.full(n - 4, np.nan)])
    trace = Trace(
        loss=loss[:5],
        grad_norm=g[:5],
        update_ratio=np.array([2.4, 0.44, 0.3, 0.22, np.nan]),
        nonfinite=np.array([0, 0, 0, 0, LOSS | GRADS | WEIGHTS], np.int32),
        steps_planned=n,
        info={
            "optimizer": "Adam",
            "dtype_policy": "float16",
            "optimizer_config": {"learning_rate": 1e-3, "epsilon": 1e-7},
        },
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] == "epsilon_underflow" and p.evidence["fix_configs"][0] == {"epsilon": 1e-4}
    assert "not the data" in p.cause
    check_finding(p, trace, True)


def test_nan_weights_from_a_finite_first_step_blame_the_update():
    trace = Trace(
        loss=np.array([0.7, np.nan]),
        grad_norm=np.array([0.5, np.nan]),
        nonfinite=np.array([WEIGHTS, LOSS | GRADS | WEIGHTS], np.int32),
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 0.1}},
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] == "update_nonfinite" and "before any update" not in p.cause
    assert "the optimizer's arithmetic" in p.cause
    check_finding(p, trace, True)


def test_a_loss_on_probabilities_fed_a_linear_output_is_named_first_and_its_event_follows():
    # a linear Dense under binary_crossentropy (from_logits=False): Keras clips the outputs in the loss; here
    # the gradient norm bursts at step 101, and the learning-rate fix of that burst comes second
    rng = np.random.default_rng(0)
    n = 300
    g = np.exp(0.1 * rng.normal(size=n))
    g[101:103] *= 300.0
    info = {"optimizer": "Adam", "optimizer_config": {"learning_rate": 1e-3, "epsilon": 1e-7}}
    trace = Trace(loss=0.7 * np.exp(0.05 * rng.normal(size=n)), grad_norm=g, info=dict(info))
    without = D.primary_finding(run_checks(trace), trace)
    assert without.check == "grad_norm" and without.evidence["cause_key"] != "probabilities_from_unbounded"
    trace.info["output_wiring"] = dict(PROBABILITIES_FROM)
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "grad_norm" and p.evidence["cause_key"] == "probabilities_from_unbounded"
    assert p.cause.startswith("the loss binary_crossentropy takes probabilities (from_logits=False)")
    assert p.cause.endswith(without.cause)  # what the checks saw, as the event's own rule says it
    texts = [x["text"] for x in p.evidence["fixes"]]
    assert texts[0] == (
        "give Dense 'out' activation='sigmoid', or compile with keras.losses.BinaryCrossentropy(from_logits=True): "
        "the loss then sees what it expects"
    )
    assert texts[1:] == [x["text"] for x in without.evidence["fixes"]]
    check_finding(p, trace, True)


def test_a_softmax_over_one_unit_is_named_first_when_nothing_learns():
    # softmax(1) is 1 whatever its input: the gradients are exactly 0 from step 0, the loss stays where it began
    rng = np.random.default_rng(0)
    n = 100
    trace = Trace(
        loss=8.5 * np.exp(0.05 * rng.normal(size=n)),
        grad_norm=np.zeros(n),
        update_ratio=np.zeros(n),
        info={"optimizer": "Adam", "optimizer_config": {"learning_rate": 1e-3}, "output_wiring": SOFTMAX_ONE_UNIT},
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "softmax_one_unit", p.cause
    assert p.cause.startswith("the model's output comes from Dense 'out', a softmax over a single unit")
    assert p.evidence["fixes"][0]["text"].startswith("give Dense 'out' activation='sigmoid' (one unit)")
    check_finding(p, trace, False)


def test_from_logits_on_a_softmax_is_named_first_with_the_floor_its_loss_cannot_pass_but_not_on_tensorflow():
    # JAX and PyTorch read the softmax's probabilities as logits: over 3 classes the loss flattens at
    # ln(1 + 2/e) = 0.551 and stuck fails (not fallen by half); TensorFlow's Keras takes the logits under the softmax
    rng = np.random.default_rng(0)
    n = 1500
    loss = np.maximum(0.5518, 1.08 * np.exp(-np.arange(n) / 60)) * (1 + 1e-4 * rng.normal(size=n))
    info = {"optimizer": "Adam", "optimizer_config": {"learning_rate": 1e-2}, "output_wiring": dict(LOGITS_FROM)}
    trace = Trace(loss=loss, grad_norm=np.full(n, 0.05), update_ratio=np.full(n, 1e-3), info={**info, "backend": "jax"})
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "logits_from_probabilities", p.cause
    assert p.cause.startswith(
        "the loss SparseCategoricalCrossentropy(from_logits=True) takes logits, but the model's output comes from "
        "Dense 'out' with activation softmax: the loss reads its probabilities, between zero and one, as logits, so "
        "it cannot fall below 0.551 however well the model predicts"
    )
    assert p.evidence["fixes"][0]["text"].startswith("give Dense 'out' no activation (a linear output)")
    check_finding(p, trace, False)
    trace.info["backend"] = "tensorflow"
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] != "logits_from_probabilities", p.cause


def test_targets_the_output_cannot_reach_fail_a_run_that_barely_moved_and_are_its_cause():
    """A sigmoid output on targets around 50: the loss stays within a few percent of its start, noisy with the
    batches, the gradients alive.  Without the model's facts nothing fails; with them stuck fails from step 0 and
    names the output and the targets.  A run whose loss fell far is not judged so (it reaches enough of them)."""
    rng = np.random.default_rng(0)
    n = 300
    info = {"optimizer": "Adam", "optimizer_config": {"learning_rate": 1e-2}}
    loss = 3300 * np.exp(0.02 * rng.normal(size=n))
    g = np.geomspace(30.0, 1.3, n) * np.exp(0.1 * rng.normal(size=n))
    trace = Trace(loss=loss, grad_norm=g, update_ratio=np.geomspace(3e-2, 1e-3, n), info=dict(info))
    assert not any(r.findings for r in run_checks(trace))
    trace.info["output_wiring"] = dict(TARGETS_OUT_OF_RANGE)
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.step == 0 and p.evidence["cause_key"] == "targets_out_of_range", p.cause
    assert "99% of the targets lie outside (0, 1), the range of the model's sigmoid output" in p.message
    assert p.cause.startswith(
        "the model's output comes from Dense 'out' with activation sigmoid, whose values stay within (0, 1), but 99% "
        "of the targets (from -59.5 to 139) lie outside it"
    )
    check_finding(p, trace, False)
    fell = Trace(loss=np.geomspace(3300, 30, n), grad_norm=g, info={**info, "output_wiring": TARGETS_OUT_OF_RANGE})
    assert not any(f.evidence.get("targets_out_of_range") for r in run_checks(fell) for f in r.findings)
    # a tanh on standardised targets leaves a third of them outside, by a little: a note, not a failure
    trace.info["output_wiring"] = {**TARGETS_OUT_OF_RANGE, "activation": "tanh", "low": -1.0, "outside": 0.32}
    assert not any(r.findings for r in run_checks(trace))


def test_batchnorm_over_one_sample_is_named_first_when_nothing_before_it_learns():
    # BatchNorm over features in batches of one sample: every feature becomes beta, the loss sits at ln 2
    rng = np.random.default_rng(0)
    n = 200
    trace = Trace(
        loss=np.log(2.0) * (1 + 2e-3 * rng.normal(size=n)),
        grad_norm=np.abs(0.05 * rng.normal(size=n)),
        update_ratio=np.full(n, 1e-3),
        info={
            "optimizer": "Adam",
            "optimizer_config": {"learning_rate": 1e-3},
            "batchnorm_one_sample": BATCHNORM_ONE_SAMPLE,
        },
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "batchnorm_one_sample", p.cause
    assert p.evidence["event_cause_key"] == "labels_no_signal"
    assert p.cause.startswith("the model trains on batches of one sample through BatchNormalization 'bn'")
    assert p.evidence["fixes"][0]["text"] == (
        "train with a batch_size of 16 or more (BatchNormalization needs a batch to normalise over), or replace "
        "BatchNormalization 'bn' with keras.layers.LayerNormalization()"
    )
    check_finding(p, trace, False)


def test_weight_decay_that_shrinks_the_weights_faster_than_they_learn_is_named_not_the_labels():
    # AdamW's weight_decay=50 at learning rate 0.01: every weight loses half of itself a step, the output is
    # constant and the loss sits at ln 2; a larger learning rate (the labels rule's second fix) would shrink faster
    rng = np.random.default_rng(0)
    n = 300
    loss = np.concatenate([[0.69, 0.68], np.log(2.0) * (1 + 2e-3 * rng.normal(size=n - 2))])
    config = {"learning_rate": 0.01, "weight_decay": 50.0}
    trace = Trace(
        loss=loss,
        grad_norm=np.abs(0.02 * rng.normal(size=n)),
        update_ratio=np.full(n, 0.5),
        lr=np.full(n, 0.01),
        info={"optimizer": "AdamW", "optimizer_config": config},
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "weight_decay_too_strong", p.cause
    assert p.cause.startswith("AdamW's weight_decay=50 at learning rate 0.01 (step 299) shrinks every weight by 0.5")
    assert p.evidence["fixes"][0]["text"].startswith("weight_decay=0.01 (now 50)")
    check_finding(p, trace, False)
    # Keras' default decay (0.004) at that rate shrinks a weight by 4e-5 a step: not this rule's
    trace.info["optimizer_config"] = {"learning_rate": 0.01, "weight_decay": 0.004}
    assert D.primary_finding(run_checks(trace), trace).evidence["cause_key"] != "weight_decay_too_strong"


def _slow_trace(lr: np.ndarray, config: dict, var_names: tuple = ()) -> Trace:
    """A run whose weights hardly move (|dw|/|w| 4e-9 a step), its loss flat near its start."""
    rng = np.random.default_rng(0)
    n = lr.shape[0]
    return Trace(
        loss=0.9 * (1 + 1e-3 * rng.normal(size=n)),
        grad_norm=0.5 * np.exp(0.1 * rng.normal(size=n)),
        update_ratio=np.full(n, 4e-9),
        lr=lr,
        var_names=var_names,
        info={"optimizer": "SGD", "optimizer_config": config},
    )


def test_updates_held_back_by_a_tiny_clip_name_the_clip_not_the_learning_rate():
    config = {"learning_rate": 0.01, "clipnorm": 1e-6}
    trace = _slow_trace(np.full(300, 0.01), config, ("d/kernel", "d/bias", "o/kernel", "o/bias"))
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "clip_too_small", p.cause
    assert p.cause.startswith("clipnorm=1e-06 clips each of the 4 variables' gradients to a norm of 1e-06")
    assert p.evidence["fix_configs"] == [{"clipnorm": p.evidence["quotes"]["clipnorm_suggested"]["value"]}]
    assert not any("learning_rate" in c for c in p.evidence["fix_configs"])
    check_finding(p, trace, False)
    # without the clip, the same run's rate is what is too low
    trace.info["optimizer_config"] = {"learning_rate": 0.01}
    assert D.primary_finding(run_checks(trace), trace).evidence["cause_key"] == "updates_too_small"
    # a classifier held at ln 2 by the clip: the clip, before the labels' rule (which would raise the rate)
    trace.info["optimizer_config"] = config
    trace.loss = np.log(2.0) * (1 + 1e-3 * np.random.default_rng(1).normal(size=300))
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] == "clip_too_small", p.cause
    check_finding(p, trace, False)


#: how the engine records a schedule as the optimizer's learning rate (``get_config``'s dict, as its repr cut short)
SCHEDULE_CONFIG = "{'module': 'keras.optimizers.schedules', 'class_name': 'ExponentialDecay', 'conf"


def test_updates_stopped_by_a_schedule_that_decayed_name_the_schedule():
    lr = 1e-3 * 0.01 ** (np.arange(300) / 5.0)  # ExponentialDecay(1e-3, decay_steps=5, decay_rate=0.01)
    trace = _slow_trace(lr, {"learning_rate": SCHEDULE_CONFIG})
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "schedule_decayed", p.cause
    assert p.cause.startswith("the learning-rate schedule fell from 0.001 (highest in steps 0-299) to")
    assert p.evidence["fixes"][0]["text"].startswith("a schedule that decays over the run's 300 steps")
    check_finding(p, trace, False)
    # a learning rate the optimizer's config does not give (a callable, which get_config cannot serialise): the same
    trace.info["optimizer_config"] = {}
    assert D.primary_finding(run_checks(trace), trace).cause == p.cause


def _lowered_by_callbacks(callbacks: list[dict]) -> Trace:
    """A constant-rate optimizer's run whose rate a callback took from 1e-3 to 1e-7 (ten times lower at each of
    four plateaus), after which the weights hardly move."""
    lr = 1e-3 * 0.1 ** np.minimum(np.arange(300) // 16, 4)
    trace = _slow_trace(lr, {"learning_rate": 1e-7})  # get_config, after the run, reads the rate as it ended
    if callbacks:
        trace.info["lr_callbacks"] = callbacks
    return trace


def test_a_rate_lowered_by_reduce_lr_on_plateau_names_the_callback_and_offers_a_floor_not_a_decay_schedule():
    plateau = {"callback": "ReduceLROnPlateau", "kind": "ReduceLROnPlateau", "monitor": "val_loss", "factor": 0.1}
    trace = _lowered_by_callbacks([{**plateau, "patience": 1, "cooldown": 0, "min_lr": 0.0}])
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "schedule_decayed", p.cause
    assert p.cause.startswith(
        "ReduceLROnPlateau lowered the learning rate from 0.001 (highest in steps 0-299) to 1e-07 (median of steps "
    ), p.cause
    assert "(factor=0.1, patience=1, min_lr=0): the weights hardly move" in p.cause, p.cause
    fix = p.evidence["fixes"][0]["text"]
    assert fix.startswith("a floor under ReduceLROnPlateau's reductions, min_lr=0.0001 (0.1x the highest rate), a")
    assert fix.endswith(
        "rate), a patience larger than 1, or no reduction: the constant learning rate 0.001 (highest in steps 0-299) "
        "to compare"
    ), fix
    assert "decay_steps" not in p.fix, p.fix
    assert p.evidence["fix_configs"] == []  # nothing the what-if replay could set in the optimizer
    check_finding(p, trace, False)
    # a subclass of it is named as the user wrote it
    trace = _lowered_by_callbacks([{**plateau, "callback": "MyPlateau", "patience": 1}])
    p = D.primary_finding(run_checks(trace), trace)
    assert p.cause.startswith("MyPlateau lowered the learning rate from 0.001"), p.cause
    check_finding(p, trace, False)


def test_a_rate_lowered_by_a_learning_rate_scheduler_names_the_callback_and_its_function():
    trace = _lowered_by_callbacks([{"callback": "LearningRateScheduler", "kind": "LearningRateScheduler"}])
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] == "schedule_decayed", p.cause
    assert p.cause.startswith("the LearningRateScheduler callback lowered the learning rate from 0.001"), p.cause
    assert p.fix.startswith("a schedule function for LearningRateScheduler that decays over the run's 300 steps")
    check_finding(p, trace, False)


def test_a_rate_lowered_by_something_else_is_not_called_the_optimizers_schedule():
    # the optimizer's rate is a constant and no callback known to set it was given: a callback of another class,
    # or the train_step, assigned it
    trace = _lowered_by_callbacks([])
    p = D.primary_finding(run_checks(trace), trace)
    assert p.evidence["cause_key"] == "schedule_decayed", p.cause
    assert p.cause.startswith("the learning rate was lowered during the run, by a callback or the train_step"), p.cause
    assert "schedule fell" not in p.cause and "decay_steps" not in p.fix, p.fix
    check_finding(p, trace, False)
    # two callbacks that set the rate: both named
    both = [
        {"callback": "ReduceLROnPlateau", "kind": "ReduceLROnPlateau", "patience": 1},
        {"callback": "LearningRateScheduler", "kind": "LearningRateScheduler"},
    ]
    p = D.primary_finding(run_checks(_lowered_by_callbacks(both)), _lowered_by_callbacks(both))
    assert p.cause.startswith(
        "the callbacks LearningRateScheduler and ReduceLROnPlateau lowered the learning rate from 0.001"
    ), p.cause


def test_a_rate_too_low_whose_loss_ends_within_the_batches_noise_above_its_start_is_told_to_raise_the_rate():
    # SGD at 1e-6 on batches of 16: the weights move 1.6e-7 of themselves a step and the loss stays where it
    # started, its tail's median 0.7 % above the first steps' (0.742 against 0.737), well within the batches'
    # noise.  That read as a loss that went up, and the run was called dead ReLUs with no larger rate offered
    rng = np.random.default_rng(3)
    n = 200
    loss = 0.74 * (1 + 0.08 * rng.normal(size=n))
    loss[n - 50 :] += 0.74 * 0.08 * 0.25  # a tail a quarter of a batch's spread above the start
    trace = Trace(
        loss=loss,
        grad_norm=0.5 * np.exp(0.1 * rng.normal(size=n)),
        update_ratio=np.full(n, 1.6e-7),
        lr=np.full(n, 1e-6),
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 1e-6}},
    )
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck", p.message
    assert p.evidence["quotes"]["level"]["value"] > p.evidence["quotes"]["initial_loss"]["value"]  # the premise
    assert p.evidence["cause_key"] == "updates_too_small", p.cause
    assert "no higher beyond the batches' noise): the learning rate 1e-06 (step 1) is too low" in p.cause, p.cause
    assert p.evidence["fix_configs"] == [{"learning_rate_factor": 10.0}]
    check_finding(p, trace, False)
    # the same run whose loss rose far beyond that noise gets no larger rate (the direction rule)
    trace.loss[n - 50 :] += 0.74 * 0.5
    p = D.primary_finding(run_checks(trace), trace)
    assert p.check == "stuck" and not any(c.get("learning_rate_factor", 0) > 1 for c in p.evidence["fix_configs"])
    check_finding(p, trace, True)
