import os
import sys

# Make `models` importable when pytest runs from the example project's root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
