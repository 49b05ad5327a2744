"""Every pytest integration in one place: the run's session (records, files, the terminal report), the
baseline gate, CI (TensorBoard, GitHub, GPUs under pytest-xdist, progress lines) and the pytest-html panels.
``pytest_stability.plugin`` wires them into pytest; what they write is rendered by ``pytest_stability.report``.
"""
