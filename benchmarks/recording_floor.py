"""What the per-step statistics cost on their own, whoever computes them: the floor under the recording's overhead.

The plugin records, per optimizer step and on the device: the global and per-variable gradient norms, the
relative update ``|Δw| / |w|`` per variable, and finiteness of the loss, gradients, weights and optimizer
state.  This script times one training step of the overhead benchmark's models (``overhead.py``: the
32-64-64-1 MLP and the small convnet, Adam, batch 32) as Keras' own ``train_step`` runs it, with no plugin,
and then with those statistics added to the same step *by hand*, one group at a time, in the cheapest form
measured (``--levels`` below; ``--form``: how JAX sums per variable, see ``_jax_stats``), each written into
a row of a ``(64, width)`` buffer threaded through the step like the recorder's.  The last level is the
plugin's own recorder (``Recorder``) around the same step.

* ``plain``: Keras' ``train_step``, nothing added.
* ``store``: a ``(64, width)`` row buffer threaded through the step (JAX: one more array in and out of the
  call; PyTorch: a list), a row of zeros written per step: the storage alone.
* ``gnorm``: + the global gradient norm (JAX: one reduction over all gradients; PyTorch: one
  ``_foreach_norm``).
* ``var_gnorm``: + the per-variable gradient norms.
* ``update``: + ``|w|`` and ``|w_after - w_before|`` per variable (the weights before the update kept).
* ``state``: + finiteness of the optimizer state after the update.
* ``recorder``: the plugin's ``Recorder`` installed on the model, i.e. the above, the learning rate, the
  flags, the loss buffer and the stop logic (PyTorch: and its per-step host check).

TensorFlow: each level's step runs 64 times in a graph loop of one ``tf.function`` (what
``fit(steps_per_execution=64)`` runs on a CPU: op by op, no XLA) on one batch, ``--calls`` steps in all,
rounded to whole loops; JAX: each level's step is ``jax.jit``-compiled with its state donated and called
``--calls`` times on one device batch (what ``fit`` does per step with ``steps_per_execution > 1``: a Python
loop over the jitted step); PyTorch: the eager step called in a loop.  Medians of ``--reps`` interleaved
repetitions.  The ratio to ``plain`` is a lower bound on what any in-step recording of that content costs on
this model and backend; ``benchmarks/results/recording_floor.md`` holds a run and docs/speed.md includes it.

Usage::

    python benchmarks/recording_floor.py                    # each backend, one subprocess each
    python benchmarks/recording_floor.py --backend jax --cpus 0
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import main_per_backend  # noqa: E402

LEVELS = ("plain", "store", "gnorm", "var_gnorm", "update", "state", "recorder")
CHUNK = 64


def _model(kind: str):
    """The overhead benchmark's model of ``kind``, trained two steps (its optimizer and metrics built), one batch
    of its data, and the width of a floor level's row: 4 scalars, 2 per variable, 2 more (the recorder's layout
    with its diagnostic columns)."""
    from benchmarks.overhead import BATCH, _build, _data

    x, y = _data(kind)
    model = _build(kind, 1)
    model.fit(x[: BATCH * 2], y[: BATCH * 2], batch_size=BATCH, epochs=1, verbose=0)  # builds optimizer, metrics
    return model, x[:BATCH], y[:BATCH], 4 + 2 * len(model.trainable_variables) + 2


# -- JAX ----------------------------------------------------------------------------------------------------


def _slot_owners(before, state_after) -> list[list[int]]:
    """Each optimizer slot (Adam's m and v) checked once, by one variable of its shape (as the recorder does)."""
    import numpy as np

    by_shape: dict[tuple, list[int]] = {}
    for k, b in enumerate(before):
        by_shape.setdefault(tuple(b.shape), []).append(k)
    owners: list[list[int]] = [[] for _ in before]
    turn: dict[tuple, int] = {}
    for j, t in enumerate(state_after):
        ks = by_shape.get(tuple(t.shape))
        if ks and np.issubdtype(t.dtype, np.floating):
            i = turn.get(tuple(t.shape), 0)
            owners[ks[i % len(ks)]].append(j)
            turn[tuple(t.shape)] = i + 1
    return owners


def _jax_stats(level: str, form: str, grads, before, after, state_after, width: int):
    """The level's statistics as one row (zeros past what the level computes).  ``form``: ``var``, one
    reduction per variable over its stacked rows (the recorder's); ``blocks``, every variable's rows padded
    to 64-element blocks and concatenated, one reduction over the blocks and a matrix product that sums the
    blocks of each variable."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    f32 = jnp.float32
    vals = []
    if level == "gnorm":
        vals.append(jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate([g.astype(f32).ravel() for g in grads])))))
    elif level in ("var_gnorm", "update", "state"):
        owners = _slot_owners(before, state_after) if level == "state" else None
        per_var = []
        for k, (g, b, a) in enumerate(zip(grads, before, after, strict=True)):
            rows = [jnp.square(g.astype(f32)).ravel()]
            if level in ("update", "state"):
                bf = b.astype(f32).ravel()
                rows += [jnp.square(bf), jnp.square(a.astype(f32).ravel() - bf)]
            if level == "state":  # the slots it owns, times 0: finite iff they are, never overflowing
                slots = [state_after[j].astype(f32).ravel() for j in owners[k]]
                rows.append(sum(slots) * 0 if slots else jnp.zeros_like(rows[0]))
            per_var.append(jnp.stack(rows))
        if form == "var":
            s = jnp.stack([jnp.sum(m, axis=1) for m in per_var])  # (n_vars, rows)
        else:
            size, ids, parts = 64, [], []
            for k, m in enumerate(per_var):
                pad = (-m.shape[1]) % size
                parts.append(jnp.pad(m, ((0, 0), (0, pad))) if pad else m)
                ids += [k] * ((m.shape[1] + pad) // size)
            blocks = jnp.concatenate(parts, axis=1)
            b_sums = jnp.sum(blocks.reshape(blocks.shape[0], len(ids), size), axis=2)  # (rows, blocks)
            ind = np.zeros((len(ids), len(per_var)), np.float32)
            ind[np.arange(len(ids)), ids] = 1
            s = jnp.dot(b_sums, jnp.asarray(ind), precision=jax.lax.Precision.HIGHEST).T  # (n_vars, rows)
        vals += [jnp.sqrt(jnp.sum(s[:, 0])), *jnp.sqrt(s[:, 0])]
        if level in ("update", "state"):
            vals += list(jnp.sqrt(s[:, 2]) / jnp.sqrt(s[:, 1] + 1e-30))
        if level == "state":
            rest = [t for j, t in enumerate(state_after) if not any(j in o for o in owners)]
            vals.append(jnp.isfinite(jnp.sum(s) + sum(jnp.sum(t.astype(f32)) * 0 for t in rest)).astype(f32))
    row = jnp.stack(vals) if vals else jnp.zeros((0,), f32)
    return jnp.concatenate([row, jnp.zeros((width - row.shape[0],), f32)])


def _jax_run(kind: str, args) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    from jax import lax

    from pytest_stability.training.recorders import make_recorder

    model, xb, yb, width = _model(kind)
    opt = model.optimizer
    data = (jnp.asarray(xb), jnp.asarray(yb))
    original = opt.stateless_apply

    def state_of():
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in opt.variables],
            [v.value for v in model.metrics_variables],
        )

    def warm(fn, state, buf):
        """Traces and compiles (jit traces at the first call), then a few calls; own copies of the state,
        since every level donates its own."""
        state = jax.tree_util.tree_map(jnp.array, state)
        for _ in range(3):
            _, state, buf = fn(state, buf)
        jax.block_until_ready(state)
        return fn, state, buf

    def make(level: str):
        if level == "recorder":  # traced while installed; the trace is kept by jit after uninstall
            rec = make_recorder("jax", model, chunk=CHUNK, limit=10**6, diagnostics=False)
            rec.install()
            try:
                fn = jax.jit(model.train_step, donate_argnums=0)
                return warm(lambda st, buf: fn(st, data) + (buf,), state_of(), None)  # + its two buffers
            finally:
                rec.uninstall()
        if level == "plain":
            fn = jax.jit(model.train_step, donate_argnums=0)
            return warm(lambda st, buf: fn(st, data) + (buf,), state_of(), None)
        holder = {}

        def patched(ov, grads, tv):
            new_t, new_o = original(ov, grads, tv)
            holder["row"] = _jax_stats(level, args.form, list(grads), list(tv), list(new_t), list(new_o), width)
            return new_t, new_o

        def step(state, buf, batch):
            object.__setattr__(opt, "stateless_apply", patched)  # while tracing only
            try:
                logs, new_state = model.train_step(state, batch)
            finally:
                object.__delattr__(opt, "stateless_apply")
            it = state[2][0]  # optimizer.iterations, the first of the optimizer's variables
            slot = (it % CHUNK).astype("int32")
            buf = lax.dynamic_update_slice(buf, holder["row"][None], (slot, jnp.int32(0)))
            return logs, new_state, buf

        fn = jax.jit(step, donate_argnums=(0, 1))
        return warm(lambda st, buf: fn(st, buf, data), state_of(), jnp.zeros((CHUNK, width), jnp.float32))

    assert opt.variables[0].name == "iteration", opt.variables[0].name
    steps = {level: make(level) for level in args.levels}
    times: dict[str, list[float]] = {level: [] for level in args.levels}
    live = {level: (state, buf) for level, (_, state, buf) in steps.items()}
    for rep in range(args.reps):
        order = args.levels[rep % len(args.levels) :] + args.levels[: rep % len(args.levels)]
        for level in order:
            fn = steps[level][0]
            state, buf = live[level]
            t = time.perf_counter()
            for _ in range(args.calls):
                _, state, buf = fn(state, buf)
            jax.block_until_ready(state)
            times[level].append((time.perf_counter() - t) / args.calls * 1e6)
            live[level] = (state, buf)
    return {level: statistics.median(ts) for level, ts in times.items()}


# -- TensorFlow ---------------------------------------------------------------------------------------------


def _tf_run(kind: str, args) -> dict[str, float]:
    """Keras' ``train_step`` in a graph loop of 64 steps per call (see ``chunk_of``); the levels' statistics
    added to the optimizer's ``apply`` in the form the recorder uses on TensorFlow (one op per variable and
    statistic: the graph runs op by op, and the fewest ops win), the row written into a ``(64, width)``
    variable at the step's slot."""
    import tensorflow as tf

    from pytest_stability.training.recorders import make_recorder

    model, xb, yb, width = _model(kind)
    opt = model.optimizer
    data = (tf.constant(xb), tf.constant(yb))
    original = opt.apply
    state_vars = [v for v in opt.variables if "float" in v.dtype]

    def stats(level: str, grads, before, after) -> tf.Tensor:
        """The level's statistics as one row, zeros past what it computes; sums of squares as the recorder
        takes them (one L2Loss op each, half the sum), scalars stacked into vectors as early as possible."""
        f32 = tf.float32
        if level == "store":
            return tf.zeros((width,), f32)
        g_half = [tf.nn.l2_loss(tf.cast(g, f32)) for g in grads]
        if level == "gnorm":
            parts = [tf.reshape(tf.sqrt(tf.add_n(g_half) * 2.0), (1,))]
        else:
            g_sq = tf.stack(g_half) * 2.0
            parts = [tf.reshape(tf.sqrt(tf.reduce_sum(g_sq)), (1,)), tf.sqrt(g_sq)]
        if level in ("update", "state"):
            w_half = tf.stack([tf.nn.l2_loss(tf.cast(b, f32)) for b in before])
            pairs = zip(before, after, strict=True)
            d_half = tf.stack([tf.nn.l2_loss(tf.cast(a, f32) - tf.cast(b, f32)) for b, a in pairs])
            parts.append(tf.sqrt(d_half) / tf.sqrt(w_half + 1e-30))  # halves: the same ratio
        if level == "state":
            total = tf.add_n([tf.reduce_sum(tf.cast(v.value, f32)) for v in state_vars])
            parts.append(tf.reshape(tf.cast(tf.math.is_finite(total), f32), (1,)))
        row = tf.concat(parts, axis=0)
        return tf.concat([row, tf.zeros((width - row.shape[0],), f32)], axis=0)

    def chunk_of(one):
        """``CHUNK`` steps in one call, in a graph loop: what ``fit(steps_per_execution=64)`` runs."""

        def chunk():
            for _ in tf.range(CHUNK):
                one(data)

        fn = tf.function(chunk)
        fn()  # traces
        return fn

    def step_for(level: str):
        if level == "recorder":  # traced while installed: the graph keeps what it traced
            rec = make_recorder("tensorflow", model, chunk=CHUNK, limit=10**9, diagnostics=False)
            rec.install()
            try:
                return chunk_of(model.train_step)
            finally:
                rec.uninstall()
        if level == "plain":
            return chunk_of(model.train_step)
        buf = tf.Variable(tf.zeros((CHUNK, width), tf.float32), trainable=False)

        def apply(grads, trainable_variables=None):
            grads = list(grads)
            tvars = list(trainable_variables) if trainable_variables is not None else list(opt._trainable_variables)
            # read before the update: TensorFlow copies a buffer it updates in place while a read of it is in use
            before = [tf.convert_to_tensor(v.value) for v in tvars] if level in ("update", "state") else None
            out = original(grads, trainable_variables)
            after = [v.value for v in tvars] if before is not None else None
            row = stats(level, grads, before, after)
            slot = tf.math.floormod(tf.cast(opt.iterations.value, tf.int32), CHUNK)
            buf.scatter_nd_update(tf.reshape(slot, (1, 1)), row[None])
            return out

        def one(batch):
            object.__setattr__(opt, "apply", apply)  # while tracing only
            try:
                return model.train_step(batch)
            finally:
                object.__delattr__(opt, "apply")

        return chunk_of(one)

    steps = {level: step_for(level) for level in args.levels}
    chunks = max(1, round(args.calls / CHUNK))
    times: dict[str, list[float]] = {level: [] for level in args.levels}
    for rep in range(args.reps + 1):  # the first is a warm-up, not counted
        order = args.levels[rep % len(args.levels) :] + args.levels[: rep % len(args.levels)]
        for level in order:
            fn = steps[level]
            t = time.perf_counter()
            for _ in range(chunks):
                fn()
            if rep:
                times[level].append((time.perf_counter() - t) / (chunks * CHUNK) * 1e6)
    traced = {level: fn.experimental_get_tracing_count() for level, fn in steps.items()}
    assert set(traced.values()) == {1}, f"a level's step was traced again: {traced}"
    return {level: statistics.median(ts) for level, ts in times.items()}


# -- PyTorch ------------------------------------------------------------------------------------------------


def _torch_run(kind: str, args) -> dict[str, float]:
    import torch

    from pytest_stability.training.recorders import make_recorder

    model, xb, yb, width = _model(kind)
    opt = model.optimizer
    data = (torch.as_tensor(xb), torch.as_tensor(yb))
    original = opt.apply
    state_floats = [v for v in opt.variables if v.value.is_floating_point()]

    def patched_for(level: str):
        rows: list = []

        def apply(grads, trainable_variables=None):
            grads = list(grads)
            if level == "store":
                original(grads, trainable_variables)
                rows.append(torch.zeros(width))
                return
            with torch.no_grad():
                w = [v._value for v in opt._trainable_variables]
                before = [t.clone() for t in w] if level in ("update", "state") else None
            original(grads, trainable_variables)
            with torch.no_grad():
                ts = list(grads)
                if before is not None:
                    ts = before + list(torch._foreach_sub(w, before)) + ts
                norms = list(torch._foreach_norm(ts, 2))
                if level == "state":
                    norms.append(torch.cat([v._value.reshape(-1) for v in state_floats]).sum())
                rows.append(torch.stack(norms))
            if len(rows) >= CHUNK:
                rows.clear()

        return apply

    def step_for(level: str):
        if level == "recorder":
            rec = make_recorder("torch", model, chunk=CHUNK, limit=10**9, diagnostics=False)

            def run():
                model.train_step(data)
                rec.last_step_nonfinite()  # the per-step host check the engine makes after each step
                if len(rec.t_raw) >= CHUNK:
                    rec.read()

            return run, rec
        if level == "plain":
            return (lambda: model.train_step(data)), None
        apply = patched_for(level)

        def run():
            object.__setattr__(opt, "apply", apply)
            try:
                model.train_step(data)
            finally:
                object.__delattr__(opt, "apply")

        return run, None

    times: dict[str, list[float]] = {level: [] for level in args.levels}
    steps = {level: step_for(level) for level in args.levels}
    for rep in range(args.reps + 1):  # the first is a warm-up, not counted
        order = args.levels[rep % len(args.levels) :] + args.levels[: rep % len(args.levels)]
        for level in order:
            run, rec = steps[level]
            if rec is not None:
                rec.install()
            try:
                t = time.perf_counter()
                for _ in range(args.calls):
                    run()
                elapsed = time.perf_counter() - t
            finally:
                if rec is not None:
                    rec.uninstall()
            if rep:
                times[level].append(elapsed / args.calls * 1e6)
    return {level: statistics.median(ts) for level, ts in times.items()}


def one_backend(args) -> dict:
    import keras

    backend = keras.backend.backend()
    run = {"tensorflow": _tf_run, "jax": _jax_run, "torch": _torch_run}[backend]
    rows = []
    for kind in args.models.split(","):
        us = run(kind, args)
        rows.append({"model": kind, "us": us})
        print(f"[{backend}] {kind} done", file=sys.stderr, flush=True)
    return {"backend": backend, "keras": keras.__version__, "rows": rows}


def table(results: list[dict], args) -> str:
    cpus = "" if args.cpus is None else f" --cpus {args.cpus}"
    levels = args.levels
    command = f"python benchmarks/recording_floor.py --calls {args.calls} --reps {args.reps} --form {args.form}{cpus}"
    tf_steps = max(1, round(args.calls / CHUNK)) * CHUNK
    lines = [
        f"`{command}` on {platform.machine()} ({os.cpu_count()} cores), {platform.python_version()}; "
        f"microseconds per training step (medians of {args.reps} interleaved repetitions of {args.calls} "
        f"steps, TensorFlow {tf_steps} in whole graph loops of {CHUNK}, on one batch of 32), and in brackets the "
        f"ratio to `plain` (Keras' own `train_step`). Each level adds statistics to the one before; `recorder` is "
        f"the plugin's own recording.",
        "",
        "| backend | model | " + " | ".join(levels) + " |",
        "|---|---|" + "---:|" * len(levels),
    ]
    for res in results:
        for r in res["rows"]:
            base = r["us"]["plain"]
            cells = [f"{r['us'][lv]:.1f} ({r['us'][lv] / base:.2f}x)" for lv in levels]
            lines.append(f"| {res['backend']} | {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--calls", type=int, default=400, help="steps timed per repetition (TensorFlow: whole loops of 64)"
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--models", default="mlp,conv")
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument(
        "--form",
        choices=("var", "blocks"),
        default="blocks",
        help="JAX: how the per-variable sums are reduced (see _jax_stats)",
    )
    parser.add_argument("--cpus", default=None, help="comma-separated CPU ids to pin to (os.sched_setaffinity)")

    def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        levels = tuple(args.levels.split(","))
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown or "plain" not in levels:
            parser.error(f"--levels must include plain and name only {', '.join(LEVELS)}; received {args.levels!r}")
        args.levels = levels
        if args.cpus is not None:
            os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    def written(args: argparse.Namespace) -> tuple[str, str]:
        pinned = "" if args.cpus is None else f"Every run pinned to CPU(s) {args.cpus}.\n\n"
        return "recording_floor.md", "# The floor under the recording's overhead\n\n" + pinned

    return main_per_backend(
        parser,
        script=__file__,
        one_backend=one_backend,
        table=table,
        written=written,
        backends=("tensorflow", "jax", "torch"),
        validate=validate,
    )


if __name__ == "__main__":
    raise SystemExit(main())
