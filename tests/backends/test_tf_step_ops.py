"""The TensorFlow recording's form in the step's graph.  On a CPU, TensorFlow runs the train step's graph op by
op (no XLA: ``jit_compile="auto"`` is off there), so each op the recording adds costs under a microsecond
whatever it computes, and some cost far more: ``keras.ops.slice_update`` lowers to ``XlaDynamicUpdateSlice``,
about 20 us a call, two of them per step before the recorder wrote its rows by scatter
(``benchmarks/recording_floor.py``, the TensorFlow rows).  What the rows hold is checked elsewhere
(``test_fit.py``); this checks the form: no such op, the rows scattered into the buffers in place (no read of
a whole buffer, no copy of it), and each of the recorder's own scalars read once."""

from __future__ import annotations

import collections

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("the graph's form is TensorFlow's", allow_module_level=True)

import tensorflow as tf  # noqa: E402

from pytest_stability.training.keras_internals import tf_variable  # noqa: E402
from pytest_stability.training.recorders import make_recorder  # noqa: E402


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum"])
def test_the_step_scatters_rows_in_place_and_reads_each_recorder_variable_once(optimizer):
    """Adam: a step that must not count runs at a zero learning rate (the masked form); SGD with momentum: in
    a ``cond`` (its update is not proportional to the rate)."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(1e-3) if optimizer == "adam" else keras.optimizers.SGD(1e-2, momentum=0.9)
    model.compile(optimizer=opt, loss="mse")
    x = tf.constant(np.ones((8, 4), np.float32))
    y = tf.constant(np.ones((8, 1), np.float32))
    rec = make_recorder("tensorflow", model, chunk=8, limit=100, diagnostics=False)
    rec.install()
    try:
        step = tf.function(model.train_step)
        graph = step.get_concrete_function((x, y)).graph
        step((x, y))
    finally:
        rec.uninstall()
    assert (rec.rate is not None) == (optimizer == "adam")
    nodes = list(graph.as_graph_def().node) + [n for f in graph.as_graph_def().library.function for n in f.node_def]
    kinds = collections.Counter(n.op for n in nodes)
    assert kinds["XlaDynamicUpdateSlice"] == 0, kinds
    assert kinds["ResourceScatterNdUpdate"] == 2, kinds  # the row, the loss: into the variables, in place
    assert kinds["TensorScatterUpdate"] == 0, kinds
    # a step that must not count (Adam's masked form) sends its row to the spare row: no select of a buffer
    rows = tuple(rec.buf.shape)
    assert rows == (9, rec.width)
    selects = [op for op in graph.get_operations() if op.type == "SelectV2"]
    assert all(tuple(op.outputs[0].shape) != rows for op in selects), [op.outputs[0].shape for op in selects]
    # each of the recorder's variables is captured by the step: count the reads of each capture.  The flag of
    # a non-finite loss is read twice, by design: where the loss is filed (to keep the first bad step) and by
    # the update that follows, after that write.  The buffers are never read in the step.  Under SGD the row is
    # written in the cond's branch, a function of its own: its ops are in `kinds`, its reads not counted here.
    own = {
        "count": rec.count,
        "halt": rec.halt,
        "buf": rec.buf,
        "lbuf": rec.lbuf,
        "lcount": rec.lcount,
        "loss_bad": rec.loss_bad,
    }
    captured = {id(ext): internal for ext, internal in graph.captures}
    reads = {}
    for name, var in own.items():
        internal = captured[id(tf_variable(var).handle)]
        reads[name] = sum(op.type == "ReadVariableOp" and op.inputs[0] is internal for op in graph.get_operations())
    expected = {"count": 1, "halt": 1, "buf": 0, "lbuf": 0, "lcount": 1, "loss_bad": 2}
    assert reads == expected, reads
    # and the step ran: one row, one loss
    assert int(rec.count.numpy()) == 1 and int(rec.lcount.numpy()) == 1
    assert rec.read()["buf"].shape == (8, rec.width)  # the spare row is never read back
