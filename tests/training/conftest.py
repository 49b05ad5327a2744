"""End-to-end training tests.

numpy, keras and tensorflow are imported here, at the top: pytester's
in-process runs restore ``sys.modules`` after each run, and numpy 2 refuses to
be loaded twice in one process ("cannot load module more than once").
"""

import contextlib
import importlib
import os
import pkgutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402,F401
import numpy  # noqa: E402,F401
import tensorflow  # noqa: E402,F401

# Where Hypothesis is installed, its pytest plugin imports it in each pytester run's terminal summary, and an
# in-process run drops the modules it imported: once here, not seconds per run (`[test]` installs it).
with contextlib.suppress(ImportError):
    import hypothesis  # noqa: F401

# The plugin's own modules, imported once here too: an in-process pytester run drops the modules it imported,
# so each run that trains would import the training engine, the checks and the reports (and what they import
# of Keras) again.
import pytest_stability  # noqa: E402

for _module in pkgutil.walk_packages(pytest_stability.__path__, "pytest_stability."):
    importlib.import_module(_module.name)
