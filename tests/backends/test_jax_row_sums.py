"""The JAX recording's per-variable sums: one reduction over blocks on a small model, one per variable on a
large one (recorders.jax._jax_row_sums).  Both must give each variable's own sums, whatever its size."""

from __future__ import annotations

import keras
import numpy as np
import pytest

if keras.backend.backend() != "jax":
    pytest.skip("the block sums are JAX's (KERAS_BACKEND=jax)", allow_module_level=True)

import jax.numpy as jnp  # noqa: E402

from pytest_stability.training.recorders import jax as recorder  # noqa: E402

# sizes around the block (64) and a large one that makes the blocks grow (at most ~1024 of them)
SIZES = (1, 63, 64, 65, 3, 2048, 150_000, 7)


def _mats():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(4, n)).astype("float32") * (10.0**k) for k, n in enumerate(SIZES)]


def _expected(mats):
    return np.stack([m.astype(np.float64).sum(axis=1) for m in mats], axis=1)


def _close(got, want, mats):
    """float32 sums of up to 150k terms: within 1e-5 of each variable's own scale (1 to 1e7 here)."""
    scale = np.stack([np.abs(m.astype(np.float64)).sum(axis=1) for m in mats], axis=1)
    np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - want), 1e-5 * scale + 1e-6)


def test_block_sums_are_each_variables_own():
    mats = _mats()
    got = np.asarray(recorder._jax_row_sums([jnp.asarray(m) for m in mats]))
    assert got.shape == (4, len(SIZES))
    _close(got, _expected(mats), mats)


def test_past_the_limits_one_reduction_per_variable_gives_the_same(monkeypatch):
    host = _mats()
    mats = [jnp.asarray(m) for m in host]
    monkeypatch.setattr(recorder, "BLOCK_MAX_VARIABLES", 2)
    per_variable = np.asarray(recorder._jax_row_sums(mats))
    _close(per_variable, _expected(host), host)
    monkeypatch.setattr(recorder, "BLOCK_MAX_VARIABLES", 128)
    monkeypatch.setattr(recorder, "BLOCK_MAX_WEIGHTS", 1000)
    np.testing.assert_array_equal(np.asarray(recorder._jax_row_sums(mats)), per_variable)
