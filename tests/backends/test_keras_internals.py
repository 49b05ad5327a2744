"""Every Keras internal the plugin depends on (``pytest_stability/training/keras_internals.py``) is in the
installed Keras, on each backend CI runs: a Keras release that moves one fails here, naming it."""

from __future__ import annotations

import keras
import pytest

from pytest_stability.training import keras_internals


def test_the_installed_keras_has_every_internal_the_plugin_uses():
    assert keras_internals.missing(keras) == [], keras.__version__


def test_every_keras_src_import_goes_through_the_internals_module():
    import pathlib
    import re

    package = pathlib.Path(keras_internals.__file__).resolve().parents[1]
    for path in package.rglob("*.py"):
        if path.name == "keras_internals.py":
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            assert not re.match(r"\s*(from|import) keras\.src", line), f"{path.name}: {line.strip()}"


def test_the_installed_keras_is_supported_and_others_are_refused_with_what_to_install(monkeypatch):
    import numpy as np

    from pytest_stability.errors import StabilityUsageError
    from pytest_stability.options import resolve_config_defaults
    from pytest_stability.training import engine

    backend = keras.backend.backend()
    assert keras_internals.unsupported(keras.__version__, backend) is None
    least = ".".join(map(str, keras_internals.KERAS_MIN))
    # an older Keras: refused before anything trains, naming what was found and what to install
    monkeypatch.setattr(keras, "__version__", "3.11.3")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    spec = resolve_config_defaults(lambda n: None, lambda n: None)
    x = np.zeros((8, 2), "float32")
    with pytest.raises(StabilityUsageError) as refused:
        engine.train(model, x, x[:, :1], fit_kwargs={}, steps=2, seed=0, spec=spec, batch_size=4)
    assert str(refused.value) == (
        f"pytest-stability needs Keras {least} or newer; found keras 3.11.3: pip install 'keras>={least}'"
    )
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
    # a newer Keras that moved an internal: named, with what to do
    monkeypatch.setitem(keras_internals.IMPORTS, "Moved", ("keras.src.nowhere", "Thing", "a test's"))
    why = keras_internals.unsupported.__wrapped__("3.99.0", backend)
    assert why is not None and why.startswith("keras 3.99.0 has moved internals of Keras' fit"), why
    assert "keras.src.nowhere.Thing (ModuleNotFoundError" in why and "install the Keras release before it" in why
    assert (
        keras_internals.unsupported.__wrapped__("2.15.0", backend)
        == "pytest-stability needs Keras 3; found keras 2.15.0"
    )
