"""Each stability run makes fresh ``tf.function``s by design (Keras' train function, the plugin's compiled
measurements): TensorFlow's "triggered tf.function retracing" warning about them is dropped during the run's
``fit``, and the same warning about a function of the user's passes."""

from __future__ import annotations

import logging

import pytest

from pytest_stability.training.isolation import _OwnRetracingFilter
from pytest_stability.training.validation import CompiledMeasure

#: TensorFlow's message (tensorflow/python/eager/polymorphic_function/polymorphic_function.py), as it logged it
#: for the plugin's compiled test_step from the fifth stability run of a process on
MESSAGE = (
    "5 out of the last 5 calls to <function {} at 0x7f42441d5bc0> triggered tf.function retracing. Tracing is "
    "expensive and the excessive number of tracings could be due to (1) creating @tf.function repeatedly in a loop"
)


def _passes(function_name: str) -> bool:
    record = logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, MESSAGE.format(function_name), None, None)
    return _OwnRetracingFilter().filter(record)


@pytest.mark.parametrize(
    "name",
    [
        "TensorFlowTrainer._make_function.<locals>.multi_step_on_iterator",
        f"{CompiledMeasure.tf_test_step.__qualname__}.<locals>.stateless_test_step",
        f"{CompiledMeasure.tf_test_step.__qualname__}.<locals>.stateless_test_steps",
    ],
)
def test_the_retracing_warning_about_the_runs_own_functions_is_dropped(name):
    assert not _passes(name)


def test_the_same_warning_about_a_function_of_the_users_passes():
    assert _passes("my_train_loop")
    assert _OwnRetracingFilter().filter(
        logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, "CompiledMeasure.x: another warning", None, None)
    )
