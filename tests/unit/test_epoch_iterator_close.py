"""``close_epoch_iterator`` on a stand-in for Keras' epoch iterator (no framework needed): its generators are
closed and the iterator's references to them dropped, so the iterator is freed by its reference count.

Dropping the references is what frees it on CPython 3.12.0 to 3.12.3, where ``close()`` leaves a generator's
locals (here ``self``) alive (CPython gh-118272): the GPU machine's Python 3.12.3 kept Keras' epoch iterator
alive after ``fit`` that way.  The end-to-end check is ``test_fits_epoch_iterator_stopped_at_the_planned_step_is_
freed_when_fit_returns`` in tests/backends/test_fit.py.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from pytest_stability.training.keras_internals import close_epoch_iterator


class EpochIterator:
    """Keras' shape: ``_epoch_iterator`` a generator method of the iterator, ``_current_iterator`` the epoch's
    data (a generator method too for JAX's look-ahead on an accelerator, a plain iterator elsewhere)."""

    def __init__(self, look_ahead: bool) -> None:
        self.finished: list[str] = []
        self._current_iterator = self._ahead() if look_ahead else iter(range(100))
        self._epoch_iterator = self._enumerate()

    def _ahead(self):
        try:
            yield from range(100)
        finally:
            self.finished.append("_ahead")

    def _enumerate(self):
        try:
            for step in range(100):
                yield step, next(self._current_iterator)
        finally:
            self.finished.append("_enumerate")


@pytest.mark.parametrize("look_ahead", [False, True])
def test_generators_closed_and_dropped_and_the_iterator_freed(look_ahead):
    it = EpochIterator(look_ahead)
    next(it._epoch_iterator)  # suspended mid-epoch, as fit leaves it at the planned step
    current = it._current_iterator
    ref = weakref.ref(it)
    finished = it.finished
    gc.disable()
    try:
        close_epoch_iterator(ref)
        assert it._epoch_iterator is None  # dropped, as Keras' reset() drops it
        if look_ahead:
            assert it._current_iterator is None
        else:
            assert it._current_iterator is current  # not a generator: left as it is
        assert finished == (["_enumerate", "_ahead"] if look_ahead else ["_enumerate"])  # closed: finally ran
        del it, current
        assert ref() is None  # freed by its reference count, no collection
    finally:
        gc.enable()


def test_nothing_found_is_nothing_to_close():
    close_epoch_iterator(None)
    it = EpochIterator(False)
    ref = weakref.ref(it)
    del it
    close_epoch_iterator(ref)  # already freed: nothing to do
