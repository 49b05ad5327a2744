"""What-if replay: re-run the steps around a failure from a snapshot, with the suggested fix applied.

When a check fails, the diagnosis names fixes and, where a fix is a change
to the optimizer, a machine-readable form of it (``evidence["fix_configs"]``,
see :mod:`pytest_stability.diagnosis`):

* ``{"epsilon": 1e-3}``, ``{"amsgrad": True}``, ``{"beta_2": 0.99}``,
  ``{"clipnorm": 0.33}``: the same keyword on the optimizer's config;
* ``{"learning_rate_factor": 0.1}``: the learning rate (or the schedule) x 0.1.

:func:`replay` restores the model and optimizer state of the latest snapshot
taken at least ``spike_window`` steps before the failure (the engine takes
them at read-back boundaries when ``whatif`` is on), builds a fresh optimizer
of the same class from the modified config, carries the optimizer state over
(``iteration``, moments; a new AMSGrad ``velocity_hat`` starts from ``v``),
and trains the same batches, in the same order, from that step on: the data
pipeline is rebuilt with the same seed and skips the steps already done.
The model ends in the state it had after the original run.  The checks then
run on the original trace up to the snapshot followed by the replayed steps.

A replay with an empty fix reproduces the original steps exactly (tested);
that is what makes "no spike after the fix" evidence rather than noise.
:func:`attach_whatif` tries the findings' fixes, one of each kind, in step
order and in the order the message gives them (at most :data:`MAX_ATTEMPTS`),
and stops at the first that resolves the run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..trace import GRADS, INPUT, LOSS, OPTIMIZER, WEIGHTS, Trace
from . import engine
from .data import make_train_data

#: steps replayed after the failure (in units of spike_window), so a spike that is only delayed still shows.
AFTER_WINDOWS = 4
#: distinct fixes replayed at most, per run.
MAX_ATTEMPTS = 2


class NotReplayable(Exception):
    """The replay cannot be done faithfully; the message says why (reported, never raised to the test)."""


@dataclass
class Replay:
    """What a replay did: the fix, the steps replayed and the spliced trace."""

    fix: dict[str, Any]
    fix_text: str
    start: int
    end: int
    trace: Trace


def describe_fix(optimizer_name: str, fix: dict[str, Any]) -> str:
    """``Adam(epsilon=0.001)``, ``SGD(clipnorm=0.33)``, ``SGD(learning_rate x 0.1)``."""
    parts = []
    for k, v in fix.items():
        if k == "learning_rate_factor":
            parts.append(f"learning_rate x {v:.3g}")
        else:
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return f"{optimizer_name}({', '.join(parts)})"


def replay_window(failure_step: int, steps_planned: int, window: int) -> int:
    """The step the replay runs to: :data:`AFTER_WINDOWS` spike windows past the failure."""
    return min(steps_planned, failure_step + AFTER_WINDOWS * max(int(window), 1) + 1)


def pick_snapshot(snapshots: list[engine.Snapshot], failure_step: int, window: int) -> engine.Snapshot:
    """The latest snapshot at least ``window`` steps before the failure (else the first one, step 0)."""
    if not snapshots:
        raise NotReplayable("no snapshot was taken")
    before = [s for s in snapshots if s.step <= max(0, failure_step - window)]
    return before[-1] if before else snapshots[0]


def fixed_optimizer(keras: Any, optimizer: Any, fix: dict[str, Any]) -> Any:
    """A fresh optimizer of ``optimizer``'s class with ``fix`` applied to its config."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise NotReplayable("the replay does not rebuild a LossScaleOptimizer (mixed precision)")
    config = optimizer.get_config()
    factor = None
    for key, value in fix.items():
        if key == "learning_rate_factor":
            factor = float(value)
        elif key not in config:
            raise NotReplayable(f"{type(optimizer).__name__} has no {key!r} setting")
        else:
            config[key] = value
            if key == "clipnorm":  # Keras allows one of clipnorm / global_clipnorm / clipvalue
                config["global_clipnorm"] = None
                config["clipvalue"] = None
    try:
        new = type(optimizer).from_config(config)
    except Exception as exc:
        raise NotReplayable(f"could not rebuild {type(optimizer).__name__} with {fix}: {exc}") from None
    if factor is not None:
        schedule = getattr(optimizer, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            new.learning_rate = _scaled_schedule(keras, schedule, factor)
        else:
            new.learning_rate = float(optimizer.learning_rate.numpy()) * factor
    return new


def _scaled_schedule(keras: Any, schedule: Any, factor: float) -> Any:
    class Scaled(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            return schedule(step) * factor

        def get_config(self) -> dict[str, Any]:  # pragma: no cover - never serialised
            return {"factor": factor}

    return Scaled()


def _carry_state(new: Any, snapshot: engine.Snapshot) -> None:
    """Assign the snapshot's optimizer state to ``new`` by variable name (not the learning rate: the fix may set it)."""
    saved = snapshot.optimizer
    for v in new.variables:
        name = v.name
        if name == "learning_rate":
            continue
        value = saved.get(name)
        if value is None and name.endswith("_velocity_hat"):
            value = saved.get(name[: -len("_hat")])  # AMSGrad switched on: max(v) starts at v
        if value is not None and tuple(value.shape) == tuple(v.shape):
            v.assign(value)


def replay(model: Any, result: engine.RunResult, trainer: engine.InstrumentedTrainer, *, fix: dict[str, Any],
           failure_step: int, window: int, x: Any, y: Any, sample_weight: Any, batch_size: int,
           batch_size_explicit: bool, seed: int, spec: Any) -> Replay:
    """Replay the steps around ``failure_step`` with ``fix`` (see the module docstring).

    Raises:
        NotReplayable: one-shot data, a loss-scaled optimizer, a fix the
            optimizer has no setting for.
    """
    tf, keras = engine._import_tf()
    trace = result.trace
    snap = pick_snapshot(result.snapshots, failure_step, window)
    until = replay_window(failure_step, trace.steps_planned or trace.steps, window)
    if until <= snap.step:
        raise NotReplayable(f"nothing to replay after step {snap.step}")
    final = engine.take_snapshot(model, trainer.optimizer, trace.steps)
    engine.seed_everything(seed, spec.deterministic)
    data = make_train_data(x, y, sample_weight, batch_size=batch_size, batch_size_explicit=batch_size_explicit,
                           seed=seed, shuffle=spec.shuffle)
    if data.one_shot:
        raise NotReplayable(f"a {data.kind} can be read only once, so its batches cannot be replayed")
    device, _ = engine.resolve_device(spec.device)
    new_opt = fixed_optimizer(keras, trainer.inner, fix)
    rec = engine.ChunkRecorder()
    try:
        with tf.device(device):
            engine.restore_model(model, snap)
            new_opt.build(trainer.tvars)
            _carry_state(new_opt, snap)
            fixed = engine.InstrumentedTrainer(model, diagnostics=False, jit_compile=spec.jit_compile,
                                               optimizer=new_opt)
            fixed.build(data.first_batch)
            chunk = fixed.chunk_fn(check_inputs=data.kind != "arrays")
            iterator = iter(data.dataset.repeat().skip(snap.step).prefetch(tf.data.AUTOTUNE))
            done = snap.step
            stop_bits = LOSS | GRADS | WEIGHTS | OPTIMIZER | INPUT
            while done < until:
                n = min(spec.readback_every, until - done)
                count, stop, _, stacked = chunk(iterator, tf.constant(n, tf.int32))
                count = int(count.numpy())
                flags = rec.add(stacked, count)
                done += count
                if count == 0 or bool(stop.numpy()) or (flags & stop_bits).any():
                    break
    finally:
        engine.restore_model(model, final)
    s = snap.step

    def cat(head: np.ndarray, k: int, dtype: Any = np.float64) -> np.ndarray:
        return np.concatenate([head[:s].astype(dtype), rec.column(k, dtype).reshape((-1,) + head.shape[1:])])

    info = dict(trace.info or {})
    # the checks judge the replayed steps with the optimizer they ran with (clipnorm: the clipped norm)
    config = dict(info.get("optimizer_config") or {})
    config.update({k: v for k, v in fix.items() if k != "learning_rate_factor"})
    if "clipnorm" in fix:
        config["global_clipnorm"] = None
    info["optimizer_config"] = config
    has_vars = trace.var_grad_norms is not None and trace.var_grad_norms.shape[0] >= s
    spliced = Trace(
        loss=cat(trace.loss, 0),
        grad_norm=cat(trace.grad_norm, 1) if trace.grad_norm is not None else None,
        var_grad_norms=cat(trace.var_grad_norms, 2) if has_vars else None,
        var_names=trace.var_names if has_vars else (),
        nonfinite=cat(trace.nonfinite, 4, np.int32) if trace.nonfinite is not None else None,
        lr=cat(trace.lr, 3) if trace.lr is not None else None,
        steps_planned=trace.steps_planned,
        info=info,
    )
    return Replay(dict(fix), describe_fix(type(trainer.inner).__name__, fix), s, s + len(rec.column(0)), spliced)


def verdict(rep: Replay, check_results: list[Any]) -> dict[str, Any]:
    """Builtins summary of a replay judged by ``check_results`` (run on ``rep.trace``)."""
    after = [f for r in check_results for f in r.findings if f.step >= rep.start]
    after.sort(key=lambda f: f.step)
    head = f"replayed steps {rep.start}-{rep.end - 1} with {rep.fix_text}"
    if after:
        first = after[0]
        text = f"{head}: still unstable: [{first.check}] step {first.step}: {first.message}"
    else:
        judged = ", ".join(r.name for r in check_results if r.status != "skipped")
        text = f"{head}: no finding ({judged} pass on the replayed steps)"
    loss = rep.trace.loss[rep.start:rep.end]
    loss = loss[np.isfinite(loss)]
    return {"fix": rep.fix, "fix_text": rep.fix_text, "start": rep.start, "end": rep.end - 1,
            "resolved": not after, "still_failing": sorted({f.check for f in after}),
            "final_loss": float(loss[-1]) if loss.size else math.nan, "text": text}


def attach_whatif(results: list[Any], model: Any, result: engine.RunResult, trainer: engine.InstrumentedTrainer,
                  thresholds: Any, spec: Any, **data: Any) -> list[Any]:
    """Replay the suggested optimizer fixes; attach the outcome to the first finding as ``evidence["whatif"]``.

    The findings' ``fix_configs`` are tried in step order, one per kind
    (``clipnorm``, ``learning_rate_factor``, ``epsilon``...), each from a
    snapshot before its own finding, at most :data:`MAX_ATTEMPTS` of them,
    stopping at the first that resolves the run.  ``results`` are
    diagnosed check results of ``result`` (the run of ``model``); ``data`` are
    :func:`replay`'s data keywords.  Returns the results with the first
    finding replaced.  A replay that cannot be done says why in the note
    (``resolved`` None) instead of raising.
    """
    from ..checks import run_checks

    findings = sorted((f for r in results for f in r.findings), key=lambda f: f.step)
    if not findings:
        return results
    tries: list[tuple[dict[str, Any], int]] = []
    kinds: set[tuple[str, ...]] = set()
    for f in findings:
        for fix in f.evidence.get("fix_configs") or ():
            kind = tuple(sorted(fix))
            if kind not in kinds:
                kinds.add(kind)
                tries.append((fix, int(f.evidence.get("start", f.step))))
    attempts: list[dict[str, Any]] = []
    for fix, start in tries[:MAX_ATTEMPTS]:
        try:
            rep = replay(model, result, trainer, fix=fix, failure_step=start, window=thresholds.spike_window,
                         spec=spec, **data)
        except NotReplayable as exc:
            attempts.append({"fix": fix, "resolved": None, "text": f"not replayed with {fix}: {exc}"})
            continue
        except Exception as exc:  # the replay is advice: a failure in it must not fail or hide the run's verdict
            attempts.append({"fix": fix, "resolved": None,
                             "text": f"the replay with {fix} failed: {type(exc).__name__}: {str(exc)[:300]}"})
            continue
        # val_loss needs validation during the replay, which it does not run
        names = tuple(c for c in spec.checks if c != "val_loss")
        attempts.append(verdict(rep, run_checks(rep.trace, thresholds, names)))
        if attempts[-1]["resolved"]:
            break
    if not attempts:
        note: dict[str, Any] = {"resolved": None, "attempts": [],
                                "text": "nothing to replay: the suggested fix is not an optimizer setting "
                                        "(data, loss or model)"}
    else:
        done = [a["resolved"] for a in attempts if a["resolved"] is not None]
        note = {"resolved": any(done) if done else None, "attempts": attempts,
                "text": "; then ".join(a["text"] for a in attempts)}
    target = findings[0]
    out = []
    for r in results:
        if target in r.findings:
            fs = tuple(dataclasses.replace(f, evidence={**f.evidence, "whatif": note}) if f is target else f
                       for f in r.findings)
            r = type(r)(r.name, r.status, fs, r.detail, r.stats)
        out.append(r)
    return out
