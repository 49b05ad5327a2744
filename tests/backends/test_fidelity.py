"""Differential: each setup of fidelity_setups.py trained through plain ``model.fit`` and through
``stability.fit`` gives what a user can observe the same way.

Compared: every call of the user's callbacks (hook, epoch or batch index, the keys of ``logs``), the exception
(type and message), ``optimizer.iterations``, the variables each optimizer built (paths and shapes), the
compiled metrics and their variables, the compile settings after the run (``jit_compile``, ``run_eagerly``,
``steps_per_execution``), the warnings (the same ones; no more deprecation warnings than plain fit's),
checkpoints written by ModelCheckpoint, and the final weights: bit for bit (float32 CPU training is
deterministic on every backend here), but for a full batch trained as one long epoch, up to rounding. Runs
once per Keras backend in CI.
"""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

BACKEND = keras.backend.backend()
HERE = Path(__file__).parent

try:  # tf.data serves every backend; imported here, not first inside pytester's run, which cannot re-import it
    import tensorflow  # noqa: F401

    HAVE_TF = True
except ImportError:  # pragma: no cover - the suite installs it
    HAVE_TF = False

RUNNER = '''
import glob
import os

import keras
import numpy as np
import pytest

import fidelity_setups as S


def observe(model, run, spies):
    """What a user can observe of one fit."""
    import warnings

    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run()
        except Exception as exc:  # the user's exception must reach them unchanged
            error = (type(exc).__name__, str(exc))
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    return {
        "error": error,
        "warnings": sorted({(w.category.__name__, str(w.message)) for w in caught if w not in deprecations}),
        "deprecations": len(deprecations),
        "calls": [list(spy.calls) for spy in spies],
        "iterations": [int(keras.ops.convert_to_numpy(opt.iterations)) for opt in optimizers(model)],
        "compile": (bool(model.jit_compile), bool(model.run_eagerly), int(model.steps_per_execution)),
        "optimizers": [slots(model, opt) for opt in optimizers(model)],
        # what compile's metrics and loss built, whenever they built it (accuracy resolved by the data's shapes)
        "metrics": (sorted((v.path, tuple(v.shape)) for v in model.metrics_variables),
                    [type(m).__name__ for m in getattr(model._compile_metrics, "metrics", [])]),
        "weights": [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights],
    }


def optimizers(model):
    """model.optimizer, then the optimizers a train_step of the user's own keeps on the model (a GAN's)."""
    return [model.optimizer] + [
        v for v in vars(model).values() if isinstance(v, keras.optimizers.Optimizer) and v is not model.optimizer]


def slots(model, opt):
    """What the optimizer built, whenever it built it: its variables' paths and shapes, the names that Keras
    numbers per process (the optimizer's, the model's variables' in a slot's name) replaced by what they name."""
    names = [(o.name, f"<{i}>") for i, o in enumerate([opt, getattr(opt, "inner_optimizer", None)]) if o is not None]
    refs = sorted(((v.path.replace("/", "_"), f"<var {i}>") for i, v in enumerate(model.variables)),
                  key=lambda pair: -len(pair[0]))
    out = []
    for v in opt.variables:
        scope, _, name = v.path.rpartition("/")
        scope = "/".join(dict(names).get(part, part) for part in scope.split("/"))
        name = next((tag + name[len(ref):] for ref, tag in refs if name.startswith(ref + "_")), name)
        out.append((scope, name, tuple(v.shape)))
    return out


def steps_of(x, kw):
    """The steps of the plain fit: its epochs (3 unless given) times the steps of an epoch."""
    epochs = kw.get("epochs", kw.get("_plain_epochs", 3))
    if kw.get("steps_per_epoch"):
        return epochs * kw["steps_per_epoch"]
    if isinstance(x, np.ndarray):
        n = int(len(x) * (1 - kw.get("validation_split", 0.0)))
        return epochs * -(-n // kw["batch_size"])
    return epochs * 8


def both_ways(stability, setup, *args):
    """The plain run: seeded, the model built, seeded again, fit (a stability run seeds right before its fit)."""
    keras.utils.set_random_seed(0)
    model, x, y, kw = setup(*args)
    spies = [c for c in keras.tree.flatten(kw.get("callbacks", [])) if hasattr(c, "calls")]
    plain_kw = dict(kw)
    plain_kw.setdefault("epochs", plain_kw.pop("_plain_epochs", 3))
    keras.utils.set_random_seed(0)
    plain = observe(model, lambda: model.fit(x, y, verbose=0, **plain_kw), spies)

    keras.utils.set_random_seed(0)
    model, x, y, kw = setup(*args)
    spies = [c for c in keras.tree.flatten(kw.get("callbacks", [])) if hasattr(c, "calls")]
    steps = steps_of(x, kw)
    kw.pop("_plain_epochs", None)
    mine = observe(model, lambda: stability.fit(model, x, y, steps=steps, seed=0, check=False, **kw), spies)
    return plain, mine


def same(plain, mine, rtol=0.0):
    assert mine["error"] == plain["error"]
    assert mine["warnings"] == plain["warnings"]
    # the run's own extra calls (validation, read-backs) do not multiply a library's deprecation warnings
    assert mine["deprecations"] <= plain["deprecations"] + 2
    assert mine["calls"] == plain["calls"]
    assert mine["iterations"] == plain["iterations"]
    assert mine["compile"] == plain["compile"]
    assert mine["optimizers"] == plain["optimizers"]
    assert mine["metrics"] == plain["metrics"]
    assert len(mine["weights"]) == len(plain["weights"])
    for a, b in zip(plain["weights"], mine["weights"]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-2)
'''

#: a torch DataLoader is an input of the PyTorch backend only
TORCH_ONLY = {"torch_dataloader", "torch_dataloader_unobserved"}
#: setups that do not apply on a backend; spy_alone, a lone callback, differs on JAX and PyTorch, where plain fit
#: runs its batch-end hooks on a thread pool (Keras inspects only a list when it decides that) and a stability run
#: in order on the main thread (docs/fidelity.md, What differs)
UNSUPPORTED = {
    # torch.compile is no part of this comparison (it compiles for minutes on a CPU); Keras' fit refuses
    # steps_per_execution > 1 on PyTorch (a stability run says so before training: test_input_errors.py)
    "torch": {"jit_compile", "own_steps_per_execution", "spy_alone"},
    # Keras' JAX fit builds the optimizer for every trainable variable before the callbacks run, and its first
    # step then refuses a layer a callback froze (ValueError: ... built with 4 variables)
    "jax": {"frozen_at_first_epoch", "frozen_whatif", "spy_alone", *TORCH_ONLY},
    "tensorflow": TORCH_ONLY,
}


def _test_source(names: list[str]) -> str:
    out = [RUNNER]
    for name in names:
        if name == "model_checkpoint":
            out.append(f"""

@pytest.mark.stable_training(readback_every=16)
def test_{name}(stability, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "mine").mkdir()
    keras.utils.set_random_seed(0)
    model, x, y, kw = S.model_checkpoint(str(tmp_path / "plain"))
    keras.utils.set_random_seed(0)
    plain = observe(model, lambda: model.fit(x, y, epochs=3, verbose=0, **kw), [])
    keras.utils.set_random_seed(0)
    model, x, y, kw = S.model_checkpoint(str(tmp_path / "mine"))
    mine = observe(model, lambda: stability.fit(model, x, y, steps=24, seed=0, check=False, **kw), [])
    same(plain, mine)
    written = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "plain" / "*.h5")))
    assert written and written == sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "mine" / "*.h5")))
    for name in written:  # each checkpoint loads into a fresh model, with the same weights
        loaded = []
        for where in ("plain", "mine"):
            fresh = S.mlp()
            fresh.load_weights(str(tmp_path / where / name))
            loaded.append([keras.ops.convert_to_numpy(w) for w in fresh.weights])
        for a, b in zip(*loaded):
            np.testing.assert_array_equal(a, b)
""")
        else:
            rtol = ROUNDING.get(name, ROUNDING_ON.get(BACKEND, {}).get(name, 0.0))
            out.append(f"""

@pytest.mark.stable_training({MARKER.get(name, "readback_every=16")})
def test_{name}(stability):
    plain, mine = both_ways(stability, S.{name})
    same(plain, mine, rtol={rtol!r})
""")
    return "".join(out)


#: setups that need other settings of the stability run: read-backs and validations inside an epoch (an epoch is
#: 8 steps; read every 16, they fall on epochs' ends)
MARKER = {
    "rate_set_per_batch": "readback_every=4, validate_every=4",
    # TensorFlow's op determinism (on by default, for the run's fit only) computes a sparse cross-entropy another
    # way than plain fit does without it, equal up to the last bits (6e-8 after 24 steps): compared bit for bit
    # without it (docs/fidelity.md, Determinism)
    "sparse_labels_two_outputs": "readback_every=16, deterministic=False",
    # the what-if keeps the state before the first step (to replay a failing run from it) without building
    # anything plain fit does not
    "gan_whatif": "readback_every=16, whatif=True",
    "frozen_whatif": "readback_every=16, whatif=True",
}
#: setups whose weights may differ by float rounding (rtol): a full batch summed in another order
ROUNDING = {"full_batch_no_dropout": 1e-4}
#: ... on one backend: on JAX, the moving average's weights differ from plain fit's in the last bits (2e-6 at
#: most), where XLA fuses the average's update with the step that the plugin's instrumentation surrounds
ROUNDING_ON = {"jax": {"moving_average": 1e-5}}

SETUP_NAMES = [
    "spy",
    "spy_alone",
    "own_test_step",
    "epoch_spy",
    "stop_training",
    "raising_callback",
    "early_stopping",
    "reduce_lr_on_plateau",
    "learning_rate_scheduler",
    "rate_set_per_batch",
    "frozen_at_first_epoch",
    "sparse_labels_two_outputs",
    "model_checkpoint",
    "mixed_precision",
    "jit_compile",
    "run_eagerly",
    "own_steps_per_execution",
    "gradient_accumulation",
    "moving_average",
    "callable_learning_rate",
    "stateful_rnn",
    "class_weight",
    "sample_weight",
    "validation_split",
    "tf_dataset",
    "py_dataset",
    "generator",
    "validation_generator",
    "torch_dataloader",
    "torch_dataloader_unobserved",
    "pandas_frame",
    "endpoint_layer",
    "add_loss_bare_validation",
    "full_batch",
    "full_batch_no_dropout",
    "gan",
    "gan_whatif",
    "frozen_whatif",
]


#: the setups in this many pytester runs, one test each: the suite's pytest-xdist workers share them (one run of
#: all 29 took 60-73 s on TensorFlow, on one worker, at the end of the suite as often as not)
PARTS = 3


@pytest.mark.parametrize("part", range(PARTS))
def test_plain_fit_and_stability_fit_are_observed_the_same(pytester, part):
    """One pytester run per part, one test per setup (a failure names the setup and the difference)."""
    names = [n for n in SETUP_NAMES if n not in UNSUPPORTED.get(BACKEND, set()) and (HAVE_TF or n != "tf_dataset")]
    names = names[part::PARTS]
    pytester.makepyfile(
        fidelity_setups=(HERE / "fidelity_setups.py").read_text(),
        gan=(HERE.parents[1] / "example_project" / "gan.py").read_text(),
    )
    pytester.makepyfile(test_setups=_test_source(names))
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=len(names))
