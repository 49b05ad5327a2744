"""Every Keras internal the plugin depends on (``pytest_stability/training/keras_internals.py``) is in the
installed Keras, on each backend CI runs: a Keras release that moves one fails here, naming it."""

from __future__ import annotations

import keras

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
