"""Backend-neutral tests (run in CI once per Keras backend: KERAS_BACKEND=tensorflow, jax, torch).

numpy and keras (and with it the chosen backend) are imported here, at the top, for the same reason as in
tests/training/conftest.py: pytester's in-process runs restore ``sys.modules`` after each run, and numpy 2
refuses to be loaded twice in one process.  These tests must run without TensorFlow; where it is installed
(the suite's `[test]` extra), it is imported here too: a pytester run that imports it first drops it from
``sys.modules`` when it ends (under any backend, ``keras.utils.set_random_seed`` imports TensorFlow to seed it),
and importing TensorFlow again in the same process aborts it: ``KERAS_BACKEND=jax pytest
tests/backends/test_fit.py`` died of SIGABRT at its second stability run, where the full suite did not only
because another module imported TensorFlow when collected.
"""

import contextlib
import importlib
import os
import pkgutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402,F401
import numpy  # noqa: E402,F401

# Where Hypothesis is installed, its pytest plugin imports it in each pytester run's terminal summary, and an
# in-process run drops the modules it imported: once here, not seconds per run (`[test]` installs it).
with contextlib.suppress(ImportError):
    import hypothesis  # noqa: F401

with contextlib.suppress(ImportError):
    import tensorflow  # noqa: F401

# The plugin's own modules, imported once here too: an in-process pytester run drops the modules it imported,
# so each run that trains would import the training engine, the checks and the reports (and what they import
# of Keras) again.
import pytest_stability  # noqa: E402

for _module in pkgutil.walk_packages(pytest_stability.__path__, "pytest_stability."):
    importlib.import_module(_module.name)
