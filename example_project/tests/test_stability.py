"""Stability tests of the example project's models, as a user writes them."""

import keras
import pytest
from gan import REAL, gan
from models import batchnorm_classifier, blobs_segmentation, convnet_classifier, shapes_dataset, small_unet

X, Y = shapes_dataset(512, seed=0)
XV, YV = shapes_dataset(128, seed=1)
XS, MS = blobs_segmentation(256, seed=0)
XSV, MSV = blobs_segmentation(64, seed=1)


@pytest.mark.stable_training(steps=300)
def test_convnet_trains_stably(stability):
    stability.fit(convnet_classifier(), X, Y, validation_data=(XV, YV), batch_size=32)


@pytest.mark.stable_training(steps=300)
def test_batchnorm_convnet_trains_stably(stability):
    stability.fit(batchnorm_classifier(momentum=0.9), X, Y, validation_data=(XV, YV), batch_size=32)


@pytest.mark.stable_training(steps=300)
def test_unet_soft_jaccard_trains_stably(stability):
    stability.fit(small_unet(keras.optimizers.Adam(3e-3)), XS, MS, validation_data=(XSV, MSV), batch_size=16)


def jump_schedule(peak):
    """Learning rate 1e-3 for 150 steps, then `peak` (a mis-typed schedule, say)."""
    return keras.optimizers.schedules.PiecewiseConstantDecay([150], [1e-3, peak])


# After the jump the run is chaotic: how many spikes follow, and how large the gradient norms
# get, can change with the CPU or library version.  Looser baseline tolerances for this test
# alone; the baseline still fails it if it goes unstable differently (a new kind of finding).
@pytest.mark.stable_training(steps=300, whatif=True, baseline_grad_factor=10.0, baseline_extra_spikes=5)
def test_known_unstable_schedule_is_detected(stability):
    """A known-unstable configuration, kept as a regression test of the detector.

    check=False: the run is expected to be unstable, so the test asserts that it is (and where),
    instead of failing on it.  The peak is 7: at 5 the jump is caught on TensorFlow, but the JAX run and the
    H100 runs under JAX and PyTorch stay just below the spike rules (largest spike 3.4-3.6x, not
    confirmed), so the same file would not pass on every backend.  whatif=True: the same fit is re-run with the
    suggested fix applied before the failure, and the report says whether it works.
    """
    model = convnet_classifier()
    model.compile(
        optimizer=keras.optimizers.SGD(jump_schedule(7.0), momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    report = stability.fit(model, X, Y, batch_size=32, check=False)
    assert report.verdict == "unstable"
    first = report.findings[0]
    assert first.step > 150
    # the rate jumped 7000x at step 151: the fix caps it near the rate the run trained at (0.01), and the
    # what-if replay, from the last read-back before the failure, says that fix works
    assert first.evidence["fix_configs"][0] == {"learning_rate_cap": 0.01}, first.fix
    assert first.evidence["whatif"]["resolved"] is True, first.evidence["whatif"]["text"]


@pytest.mark.stable_training(steps=300)
def test_fixed_schedule_is_stable(stability):
    """The fix: a peak learning rate the model can take."""
    model = convnet_classifier()
    model.compile(
        optimizer=keras.optimizers.SGD(jump_schedule(3e-2), momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    stability.fit(model, X, Y, validation_data=(XV, YV), batch_size=32)


@pytest.mark.stable_training(steps=300)
def test_gan_trains_stably(stability):
    """Two networks, two optimizers (the GAN of Keras' guides, gan.py): each optimizer's gradients and each
    loss the train_step reports (d_loss, g_loss) are judged."""
    stability.fit(gan(), REAL, batch_size=32)
