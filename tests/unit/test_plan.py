"""The run's arithmetic (training/plan.py): epochs asked of fit, steps per call and between read-backs."""

from __future__ import annotations

import pytest

from pytest_stability.training.plan import Chunking, chunking, epochs_for


def test_epochs_cover_the_steps():
    assert epochs_for(200, 8) == 25 and epochs_for(201, 8) == 26
    assert epochs_for(200, None) == 1 and epochs_for(5, 300) == 1
    assert epochs_for(10, 4, initial_epoch=3) == 6  # Keras counts epochs from initial_epoch


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_compiled_backends_run_a_chunk_a_call(backend):
    assert chunking(backend=backend, readback_every=50, validate_every=25, validates=False) == Chunking(
        50, 50, 50, None
    )
    # validation happens at read-backs: at least every validate_every steps
    assert chunking(backend=backend, readback_every=50, validate_every=25, validates=True).chunk == 25
    # an epoch's end cuts a call short
    assert chunking(backend=backend, readback_every=50, validate_every=25, validates=False, per_epoch=8) == Chunking(
        50, 50, 8, None
    )


def test_pytorch_runs_a_step_a_call_and_reads_back_where_a_chunk_would_end():
    assert chunking(backend="torch", readback_every=50, validate_every=25, validates=False) == Chunking(50, 1, 50, 50)
    assert chunking(backend="torch", readback_every=50, validate_every=25, validates=False, per_epoch=8) == Chunking(
        50, 1, 8, 8
    )


def test_a_batch_level_callback_keeps_the_models_steps_per_execution():
    c = chunking(backend="tensorflow", readback_every=50, validate_every=25, validates=False, batch_observers=True)
    assert (c.spe, c.chunk) == (1, 50)
    c = chunking(backend="jax", readback_every=50, validate_every=25, validates=True, user_spe=40)
    assert (c.spe, c.chunk) == (40, 40)  # the chunk never holds less than one call


def test_a_users_steps_per_epoch_is_filled_by_whole_calls():
    c = chunking(backend="tensorflow", readback_every=50, validate_every=25, validates=False, user_steps_per_epoch=30)
    assert c.spe == 30 and 30 % c.spe == 0
    c = chunking(backend="tensorflow", readback_every=50, validate_every=25, validates=False, user_steps_per_epoch=70)
    assert c.spe == 35 and 70 % c.spe == 0  # the largest divisor of 70 up to 50


def test_a_distribution_strategy_runs_a_step_a_call():
    c = chunking(backend="tensorflow", readback_every=50, validate_every=25, validates=False, distributed=True)
    assert (c.spe, c.chunk, c.steps_per_call) == (1, 50, 1)
