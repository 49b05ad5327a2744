"""A full garbage collection after a plain TensorFlow ``fit`` stopped in the middle of an epoch, with and without
closing ``fit``'s epoch iterator when ``fit`` returns (what the plugin does: ``keras_internals.close_epoch_iterator``).

Each repetition trains a fresh small model with plain ``model.fit`` on arrays, stopped by a callback at step 21 of
64 in its first epoch (as a stability run stops at its planned step), leaves it idle ``--idle`` seconds with the
garbage collector off, then times one ``gc.collect()``.  Without the close, Keras' epoch iterator is still in a
reference cycle then, and TensorFlow's destructor of its tf.data iterator can wait for its autotuning thread with
Python's lock held; the time varies from run to run, so the script prints every run, the median and the maximum.

Usage::

    python benchmarks/iterator_release.py --reps 6 --idle 12

TensorFlow only (the other backends' epoch iterators hold no tf.data iterator).  Prints; writes nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=6, help="repetitions per variant (default 6)")
    parser.add_argument("--idle", type=float, default=12.0, help="seconds between fit and the collection (12)")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from pytest_stability.training.keras_internals import close_epoch_iterator, fit_epoch_iterator

    rng = np.random.default_rng(0)
    x = rng.random((2048, 8), dtype=np.float32)
    y = rng.random((2048, 1), dtype=np.float32)

    class StopEarly(keras.callbacks.Callback):  # type: ignore[misc]
        ref = None

        def on_train_begin(self, logs=None):
            self.ref = fit_epoch_iterator()

        def on_train_batch_end(self, batch, logs=None):
            if batch >= 20:
                self.model.stop_training = True

    def one(close: bool) -> float:
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        stop = StopEarly()
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[stop])
        if close:
            close_epoch_iterator(stop.ref)
        del model, stop
        time.sleep(args.idle)
        started = time.perf_counter()
        gc.collect()
        return time.perf_counter() - started

    gc.disable()
    try:
        times: dict[str, list[float]] = {"left to gc": [], "closed": []}
        for _ in range(args.reps):  # interleaved
            times["left to gc"].append(one(close=False))
            times["closed"].append(one(close=True))
    finally:
        gc.enable()
    print(f"gc.collect() {args.idle:g} s after fit stopped mid-epoch, {args.reps} runs each (seconds)")
    for name, values in times.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"  {name:10s} median {statistics.median(values):.2f}  max {max(values):.2f}  runs: {runs}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
