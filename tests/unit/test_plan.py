"""The run's arithmetic (training/plan.py): epochs asked of fit, steps per call and between read-backs."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_stability.training.plan import (
    Chunking,
    accumulating_steps,
    accumulation_steps,
    chunking,
    epochs_for,
    short_epochs_at_pass_ends,
)


def test_epochs_cover_the_steps():
    assert epochs_for(200, 8) == 25 and epochs_for(201, 8) == 26
    assert epochs_for(200, None) == 1 and epochs_for(5, 300) == 1
    assert epochs_for(10, 4, initial_epoch=3) == 6  # Keras counts epochs from initial_epoch


def keras_epochs(run_steps: int, steps_per_epoch: int, pass_length: int) -> int:
    """Keras' EpochIterator with a steps_per_epoch over finite data, step by step: an epoch ends after
    steps_per_epoch steps or where a pass over the data ends, and the next epoch starts the next pass."""
    done = epochs = seen = 0
    while done < run_steps:
        epochs += 1
        for _ in range(steps_per_epoch):
            if seen >= pass_length or done == run_steps:
                break
            seen, done = seen + 1, done + 1
        if seen >= pass_length:
            seen = 0
    return epochs


@pytest.mark.parametrize("pass_length", [1, 3, 7, 8, 16, 40])
@pytest.mark.parametrize("steps_per_epoch", [1, 5, 8, 50])
def test_epochs_cover_the_steps_when_epochs_end_where_a_pass_ends(steps_per_epoch, pass_length):
    for run_steps in (1, 7, 23, 40, 101):
        cut = pass_length if short_epochs_at_pass_ends(steps_per_epoch, pass_length) else None
        assert epochs_for(run_steps, steps_per_epoch, 0, cut) == keras_epochs(run_steps, steps_per_epoch, pass_length)
        assert epochs_for(run_steps, steps_per_epoch, 2, cut) == 2 + keras_epochs(
            run_steps, steps_per_epoch, pass_length
        )
    assert short_epochs_at_pass_ends(steps_per_epoch, pass_length) == bool(pass_length % steps_per_epoch)
    assert not short_epochs_at_pass_ends(steps_per_epoch, None) and not short_epochs_at_pass_ends(None, pass_length)


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


def _call_ends(c: Chunking, per_epoch: int, run_steps: int) -> list[int]:
    """The steps at which TensorFlow's calls end when each epoch is ``per_epoch`` steps of arrays (a call ends at
    an epoch's end too), up to the first end at or past ``run_steps``."""
    ends, step = [], 0
    while step < run_steps:
        step += min(c.spe, per_epoch - step % per_epoch)
        ends.append(step)
    return ends


def _read_backs(c: Chunking, ends: list[int]) -> list[int]:
    """The steps after which the read-back callback reads: every ``read_every`` calls."""
    return [end for i, end in enumerate(ends, 1) if i % c.read_every == 0]


@pytest.mark.parametrize(
    ("per_epoch", "run_steps", "readback", "spe"),
    [
        (8, 60, 64, 4),  # an epoch is one call of 8; the run ends 4 steps into its last epoch
        (8, 23, 16, 1),  # 7 steps in: only single steps end there (21 more calls)
        (6, 45, 50, 3),  # a validation split's shorter epoch
        (40, 110, 20, 10),  # whole calls of 20 fill an epoch of 40; the run ends 30 steps into its last
    ],
)
def test_tensorflow_shortens_the_calls_so_that_the_last_ends_at_the_planned_step(per_epoch, run_steps, readback, spe):
    """A last call that would run past the planned steps is traced again on TensorFlow (its steps are compiled
    in): the calls are made shorter instead, the run's end falls on a call's end, every earlier call boundary
    stays one, and the read-backs (the validation points) fall at the same steps."""
    kw = dict(backend="tensorflow", readback_every=readback, validate_every=readback, validates=False)
    before = chunking(per_epoch=per_epoch, **kw)
    after = chunking(per_epoch=per_epoch, run_steps=run_steps, **kw)
    assert (after.spe, after.steps_per_call, after.chunk) == (spe, spe, before.chunk)
    old, new = _call_ends(before, per_epoch, run_steps), _call_ends(after, per_epoch, run_steps)
    assert run_steps not in old and new[-1] == run_steps  # before, the last call ran past the planned steps
    assert set(old[:-1]) <= set(new)
    assert [r for r in _read_backs(after, new) if r < run_steps] == [
        r for r in _read_backs(before, old) if r < run_steps
    ]


def test_calls_are_not_shortened_where_no_retrace_is_saved_or_it_costs_too_many_calls():
    kw = dict(readback_every=64, validate_every=64, validates=False)
    assert chunking(backend="tensorflow", per_epoch=8, run_steps=64, **kw).spe == 64  # ends on an epoch's end
    assert chunking(backend="jax", per_epoch=8, run_steps=60, **kw).spe == 64  # JAX does not trace again
    # the user's own steps_per_execution, kept for a callback that sees single batches
    assert chunking(backend="tensorflow", per_epoch=8, run_steps=60, batch_observers=True, **kw).spe == 1
    # an epoch whose last call is shorter than the others: shorter calls would move the read-backs
    assert chunking(backend="tensorflow", per_epoch=7, run_steps=60, **{**kw, "readback_every": 4}).spe == 4
    # 4004 steps in calls of 4 instead of 8: 501 more calls, more than the retrace costs
    assert chunking(backend="tensorflow", per_epoch=8, run_steps=4004, **kw).spe == 64
    assert chunking(backend="tensorflow", per_epoch=8, run_steps=1596, **kw).spe == 4  # 200 more: shortened


class _Optimizer:
    def __init__(self, n):
        self.gradient_accumulation_steps = n


def test_accumulation_steps_is_the_optimizers_setting_or_one():
    assert [accumulation_steps(_Optimizer(n)) for n in (None, 0, 1, 4)] == [1, 1, 1, 4]
    assert accumulation_steps(object()) == 1 and accumulation_steps(_Optimizer(True)) == 1


def test_the_steps_that_only_accumulated_are_those_off_the_updates_phase():
    # gradient_accumulation_steps=4 from a fresh optimizer: steps 3, 7, 11 update the weights
    update = np.zeros(12)
    update[[3, 7, 11]] = [1e-3, 2e-3, 5e-4]
    assert np.flatnonzero(~accumulating_steps(update, 4)).tolist() == [3, 7, 11]
    # an optimizer that had run 2 iterations before: the phase is read from the updates, not assumed
    shifted = np.roll(update, -2)
    assert np.flatnonzero(~accumulating_steps(shifted, 4)).tolist() == [1, 5, 9]
    # an update step whose update was 0 (a zero rate) is still an update step; a diverged one (NaN) too
    update[7], update[11] = 0.0, np.nan
    assert np.flatnonzero(~accumulating_steps(update, 4)).tolist() == [3, 7, 11]
    # weights changed off the phase (a callback that set them) stay; the phase is the commonest one
    update = np.zeros(12)
    update[[3, 7, 11]], update[5] = 1e-3, 1e-4
    assert np.flatnonzero(~accumulating_steps(update, 4)).tolist() == [3, 5, 7, 11]


def test_nothing_is_masked_without_accumulation_or_without_any_update():
    update = np.zeros(12)
    assert not accumulating_steps(update, 4).any()  # weights that never moved: judged as such
    update[3] = 1e-3
    assert not accumulating_steps(update, 1).any()
