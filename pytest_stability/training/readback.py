"""The plugin's own callbacks in the user's ``fit``: the read-back, and the random state at the first batch.

:class:`Readback` goes last in the callback list.  At execution boundaries
(``steps_per_execution``) it reads what the recorder wrote on the device, once
per chunk, stops ``fit`` on a non-finite step or at the planned steps,
validates, measures curvature and reports progress; before a call that would
run past the planned steps it cuts that call to the steps left, so that ``fit``
runs exactly ``steps`` steps, as a plain ``fit`` of that many steps would.

:class:`RandomStart` goes first: it keeps the random state at the first batch,
so that the what-if replay, a second ``fit`` of the same model, starts from it.

Imports Keras: reached only from :func:`~pytest_stability.training.engine.train`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras

from ..framework_types import Callback, Data, Model
from ..trace import GRADS, INPUT, LOSS, OPTIMIZER, WEIGHTS
from . import isolation
from .keras_internals import build_before_first_trace, fit_epoch_iterator
from .recorders import ChunkRows, Recorder, host_flags
from .state import State, take_state

if TYPE_CHECKING:
    from .curves import Curves

#: the bits that stop a run (a non-finite loss, gradients, weights, optimizer state, or input batch)
STOP_BITS = LOSS | GRADS | WEIGHTS | OPTIMIZER | INPUT


class Readback(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Reads the recorder's buffers at execution boundaries, stops, validates, reports progress.

    Args:
        recs: the recorders of this ``fit``, one per optimizer, ``model.optimizer``'s first.
        steps: the steps to run.
        chunk: the rows the recorder's buffers hold: at most that many steps between two read-backs.
        epoch_steps: the steps of every epoch when known exactly (arrays, or the one epoch the plugin
            sizes), else None: with it the last call is cut to the steps left.
        data_ends_epochs: the data runs out at each epoch's end (arrays), so that a call ends there too;
            else (a generator, a repeated dataset) a call runs all its steps.
        read_every: calls of the train function between two read-backs (:attr:`.plan.Chunking.read_every`).
        pass_length: with ``epoch_steps`` the user's ``steps_per_epoch`` over arrays it does not divide, the
            batches of one pass: an epoch then ends early where a pass ends (:func:`.plan.epochs_for`).
    """

    def __init__(
        self,
        recs: list[Recorder],
        *,
        steps: int,
        chunk: int,
        validate: Callable[..., None] | None,
        validate_every: int,
        progress: Callable[[int], None] | None,
        on_boundary: Callable[[int], None] | None,
        measure: Callable[[int], None] | None = None,
        epoch_steps: int | None = None,
        virtual_call: int | None = None,
        keep_initial_state: bool = False,
        callbacks: list[Callback] | None = None,
        curves: Curves | None = None,
        data_ends_epochs: bool = True,
        read_every: int = 1,
        pass_length: int | None = None,
    ) -> None:
        super().__init__()
        self.recs = list(recs)
        #: the recorder of model.optimizer (it also records the loss)
        self.rec = self.recs[0]
        self.user_callbacks = list(callbacks or [])
        #: the other scalars the train_step reports (see :mod:`.curves`), read with the recorders
        self.curves = curves
        #: what each recorder recorded, in step order
        self.rowsets = [ChunkRows() for _ in self.recs]
        #: how many times a step applies each recorder's optimizer, against the reference (set at the first
        #: read-back in which they applied, before any non-finite step)
        self.multiples: dict[int, int] = {}
        self.steps = steps
        self.chunk = chunk
        self.read_every = read_every
        self.validate = validate
        self.validate_every = validate_every
        self.progress = progress
        self.on_boundary = on_boundary
        self.measure = measure
        self.epoch_steps = epoch_steps
        self.data_ends_epochs = data_ends_epochs
        #: the user's steps_per_epoch, and the batches of a pass and those of it read so far (``pass_length``)
        self.full_epoch_steps = epoch_steps
        self.pass_length = pass_length if epoch_steps is not None else None
        self.in_pass = 0
        #: PyTorch, which runs one step per call: the steps a call of TensorFlow's or JAX's fit would run,
        #: so that read-backs, and with them validation points and curvature measurements, fall at the same
        #: steps on every backend
        self.virtual_call = virtual_call
        self.want_initial_state = keep_initial_state
        self.calls = 0
        self.calls_began = False
        self.last_val = 0
        self.device: str | None = None
        self.stopped_nonfinite = False
        #: the plugin set model.stop_training (planned steps reached, or a non-finite step)
        self.stopping = False
        #: (steps run, "...") when something else (a callback) stopped training early
        self.stopped_by: tuple[int, str] | None = None
        self.initial_state: State | None = None
        #: steps of the epochs before this one, and of this one so far (from Keras' own batch indices)
        self.steps_before_epoch = 0
        self.in_epoch = 0
        self.cut_at: int | None = None
        #: fit's epoch iterator, closed when fit returns (:func:`.keras_internals.fit_epoch_iterator`)
        self.epoch_iterator: weakref.ref[object] | None = None

    # -- the state before the first step -------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.epoch_iterator = fit_epoch_iterator()
        if self.want_initial_state:
            self.initial_state = take_state(self.model, self.recs)
        if self.validate is not None:
            # the validation loss before the first step, after fit's own set-up (measured before it, the model
            # would be built already, and fit would skip the look at a first batch that draws from the
            # global random state: the run's data order would differ from plain fit's)
            self.validate(first=True)
        if self.on_boundary is not None:
            self.on_boundary(0)

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.rec.recording_loss = False
        if self.curves is not None:
            self.curves.recording = False

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self.rec.recording_loss = True
        if self.curves is not None:
            self.curves.recording = True

    # -- calls, epochs, read-backs -------------------------------------------------

    def after_call(self) -> None:
        """After each call of fit's train function (``steps_per_execution`` steps)."""
        if self.virtual_call is not None:  # PyTorch: one step per call
            self.in_epoch += 1
            # stop right there: at the planned steps (the host counts them), or after a non-finite step,
            # before the next one's forward pass can assert on a GPU (see TorchRecorder.last_step_nonfinite)
            if self.keras_steps >= self.steps or any([rec.last_step_nonfinite() for rec in self.recs]):
                self.read()
                return
            if self.in_epoch % self.virtual_call:
                return
        self._end_of_call()

    def _end_of_call(self) -> None:
        self.calls += 1
        if self.calls % self.read_every:
            return
        self.read()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.pass_length and self.full_epoch_steps is not None:  # this epoch ends early where the pass ends
            self.epoch_steps = min(self.full_epoch_steps, self.pass_length - self.in_pass)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # PyTorch: a call of TensorFlow's or JAX's fit is cut at an epoch's end, so one ends here too
        if self.virtual_call is not None and self.in_epoch % self.virtual_call:
            self._end_of_call()
        self.steps_before_epoch += self.in_epoch
        if self.pass_length:
            self.in_pass = (self.in_pass + self.in_epoch) % self.pass_length
        self.in_epoch = 0
        # a non-finite step stops the run at the end of its epoch, not at the next read-back some epochs later
        # (whose epochs your callbacks would see, trained with no update): one scalar read, where fit reads its
        # logs back anyway (TensorFlow, JAX; PyTorch's host checks each step)
        if self.virtual_call is None and not self.stopped_nonfinite and any(r.built and r.halted() for r in self.recs):
            self.read()

    @property
    def keras_steps(self) -> int:
        """The training steps Keras ran so far (its batch indices; a step that recorded nothing counts)."""
        return self.steps_before_epoch + self.in_epoch

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._stopped_by_other(self.keras_steps)

    @property
    def trained(self) -> Model:
        """The model ``fit`` trains, for its Python attributes (``stop_training``, ``steps_per_execution``).

        Not :attr:`model`: under JAX, Keras' ``Callback.model`` puts the state ``fit`` holds back into the
        variables (``jax_state_sync``) at every access, and the next step then reads the variables again.  Read
        at every batch's end, that made every step pick up what a callback of the user's had assigned to a
        variable in between (a learning rate set per batch), which plain ``fit`` drops until the epoch's end.
        """
        return self._model

    def _stopped_by_other(self, steps: int) -> None:
        if self.trained.stop_training and not self.stopping and self.stopped_by is None:
            self.stopped_by = (steps, _who_stopped(self.user_callbacks))

    def stop(self) -> None:
        self.stopping = True
        self.trained.stop_training = True

    @property
    def reference(self) -> int:
        """The recorder whose applies count the steps: of those that applied, the one that applied least
        (``model.optimizer``'s when it ties: a GAN's two optimizers each apply once a step, a critic
        trained several times a step applies more); 0 before any applied."""
        applied = [i for i, rows in enumerate(self.rowsets) if rows.done]
        return min(applied, key=lambda i: self.rowsets[i].done) if applied else 0

    @property
    def rows(self) -> ChunkRows:
        """The reference recorder's rows."""
        return self.rowsets[self.reference]

    def read(self, *, measure: bool = True) -> None:
        """Reads the rows recorded since the last read, stops ``fit`` on a non-finite step or at the planned
        steps, and (``measure``) validates and measures curvature where due: not after ``fit`` raised,
        where the run's error is re-raised or reported, not judged further."""
        if self.stopped_nonfinite:
            return
        new = bad = False
        for rec, rowset in zip(self.recs, self.rowsets, strict=True):
            if not rec.built:
                continue
            snap = rec.read()
            before = rowset.done
            rows = rowset.take(snap, rec.chunk, strict=rec.primary)
            if rowset.done == before:
                continue
            new = True
            if self.device is None:
                self.device = rec.device_of_buffer()
            loss = rowset.losses[-1] if rowset.losses else None
            flags = host_flags(rows, loss if loss is not None and len(loss) == len(rows) else None, rec.is_loss_scaled)
            bad = bad or bool((flags & STOP_BITS).any() or snap["halt"])
        if not new:
            return
        if self.curves is not None:
            self.curves.read()
        if not self.multiples and not bad:
            ref = self.reference
            base = self.rowsets[ref].done
            self.multiples = {
                i: max(1, round(rows.done / base)) for i, rows in enumerate(self.rowsets) if rows.done and base
            }
        done = self.rows.done
        if self.on_boundary is not None:  # the device's own step count (Keras' batch index can run ahead)
            self.on_boundary(done)
        if bad:
            self.stopped_nonfinite = True
            self.stop()
        elif done >= self.steps:
            self.stop()
        if (
            measure
            and self.validate is not None
            and not self.stopped_nonfinite
            and done != self.last_val
            and (done // self.validate_every > self.last_val // self.validate_every or done >= self.steps)
        ):
            self.last_val = done
            self.validate()
        if measure and self.measure is not None and not self.stopped_nonfinite:
            self.measure(done)
        if self.progress is not None:
            self.progress(done)


class ReadbackAtBatchEnd(Readback):
    """TensorFlow and JAX, which run a chunk of steps per call of the train function.

    A callback that overrides ``on_train_batch_end`` makes Keras convert the logs to Python floats after
    every call, in fit's own thread (without one, JAX hands that to a worker thread): once per chunk here.
    PyTorch runs one step per call, so there the train function itself is wrapped instead
    (:func:`read_after_each_call`), and no call is cut (each is one step).
    """

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Keras' batch index is the call's nominal last step (its first + steps_per_execution - 1): an
        # epoch's last call may run fewer
        self.in_epoch = int(batch) + 1 if self.epoch_steps is None else min(int(batch) + 1, self.epoch_steps)
        if self.keras_steps >= self.steps:  # the planned steps ran: read now, which stops fit right there
            self.calls += 1
            self.read()
        else:
            self.after_call()
        self._stopped_by_other(self.keras_steps)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        self._stopped_by_other(self.keras_steps)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.calls_began:  # the first call traces the step: traced once (TensorFlow)
            self.calls_began = True
            build_before_first_trace(self.trained, self.epoch_iterator)
        # A call that would run past the planned steps runs only the steps left, and is the last: JAX's fit
        # reads steps_per_execution at each call; TensorFlow compiles it into the call, so there the train
        # function is made again for that call (one more trace, in the last call only)
        if self.epoch_steps is None:
            return
        per_call = int(getattr(self.trained, "steps_per_execution", 1) or 1)
        # a call on arrays ends at its epoch's end; on data that goes on (a generator) it runs all its steps
        in_call = min(per_call, self.epoch_steps - int(batch)) if self.data_ends_epochs else per_call
        left = self.steps - (self.steps_before_epoch + int(batch))
        if 0 < left < in_call:
            self.trained.steps_per_execution = left
            if keras.backend.backend() == "tensorflow":
                self.trained.make_train_function(force=True)
            self.cut_at = self.steps
            self.stop()


def _who_stopped(callbacks: list[Callback]) -> str:
    """What set ``model.stop_training``, as far as the callbacks say (EarlyStopping keeps ``stopped_epoch``)."""
    for callback in callbacks:
        stopped = getattr(callback, "stopped_epoch", 0)
        if isinstance(stopped, int) and stopped > 0:
            return f"{type(callback).__name__} stopped training (at epoch {stopped})"
    return "a callback (or the model's train_step) set model.stop_training, which stopped training"


def readback_class() -> type[Readback]:
    return Readback if keras.backend.backend() == "torch" else ReadbackAtBatchEnd


def read_after_each_call(rec: Recorder, model: Model, cb: Readback) -> None:
    """PyTorch: ``cb.after_call()`` right after each step, from inside fit's train function, so that the
    read-backs need no per-step batch-end callback (which would make Keras read the logs back to the host
    after every step: a device sync per step on a GPU).  Put back by ``rec.uninstall()``."""
    original = model.make_train_function

    def make_train_function(force: bool = False) -> Any:
        out = original(force)
        step = model.train_function
        if step is not None and not getattr(step, "_stability_reads", False):

            def train_function(data: Data) -> Any:
                logs = step(data)
                cb.after_call()
                return logs

            train_function._stability_reads = True  # type: ignore[attr-defined]
            model.train_function = train_function
        return out

    rec.patch(model, "make_train_function", make_train_function)


class RandomStart(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """First in the callback list: the random state when ``fit`` starts training, kept or put back.

    The first ``fit`` of a model builds its compiled loss and metrics first (Keras' ``_symbolic_build``),
    opening the training data once to peek at a batch: a shuffled array iterator draws a permutation from
    numpy's global RNG (JAX), a torch ``DataLoader`` draws its base seed from torch's global generator
    (PyTorch).  A later ``fit`` of the same, now built, model (the what-if replay) skips that, so its data
    order (and, on PyTorch, unseeded dropout masks) would differ from step 0.  The first run keeps the
    random state at its first batch (:attr:`kept`); a replay given that state (``start``) puts it back
    there.  A run of its own changes nothing: its random state is the one plain ``fit`` would have.
    """

    def __init__(self, start: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.start = start
        self.kept: dict[str, Any] | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.start is not None:
            isolation.set_random_state(self.start)
        else:
            self.kept = isolation.random_state()


__all__ = ["RandomStart", "Readback", "ReadbackAtBatchEnd", "read_after_each_call", "readback_class"]
