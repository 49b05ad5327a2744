"""End-to-end training tests.

numpy, keras and tensorflow are imported here, at the top: pytester's
in-process runs restore ``sys.modules`` after each run, and numpy 2 refuses to
be loaded twice in one process ("cannot load module more than once").
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402,F401
import numpy  # noqa: E402,F401
import tensorflow  # noqa: E402,F401

# Where Hypothesis is installed, its pytest plugin imports it in each pytester run's terminal summary, and an
# in-process run drops the modules it imported: once here, not seconds per run (CI installs no Hypothesis).
try:
    import hypothesis  # noqa: E402,F401
except ImportError:
    pass
