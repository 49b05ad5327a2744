import os
import sys

# Quiet TensorFlow's C++ warnings (set before TensorFlow is imported, which is when the first test trains).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Make `models` importable when pytest runs from the example project's root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
