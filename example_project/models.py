"""A small but real Keras project: the models a team would gate in CI.

Data is synthetic (generated, seeded) so the project runs anywhere, offline.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


def shapes_dataset(n: int = 512, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images of a bright square or a bright cross on noise; label 0 / 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, size=(n, size, size, 1)).astype("float32")
    y = rng.integers(0, 2, size=n)
    for i in range(n):
        r, c = rng.integers(3, size - 4, size=2)
        if y[i] == 0:
            x[i, r - 2 : r + 2, c - 2 : c + 2, 0] += 1.0
        else:
            x[i, r - 2 : r + 3, c, 0] += 1.0
            x[i, r, c - 2 : c + 3, 0] += 1.0
    return x, y.astype("int32")


def blobs_segmentation(n: int = 256, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images with one bright disc; the mask marks the disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x = rng.normal(0.0, 0.3, size=(n, size, size, 1)).astype("float32")
    m = np.zeros((n, size, size, 1), dtype="float32")
    for i in range(n):
        cy, cx = rng.uniform(4, size - 4, size=2)
        rad = rng.uniform(2, 4)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rad**2
        m[i, ..., 0] = disc
        x[i, ..., 0] += disc
    return x, m


def _compile_classifier(model: keras.Model, lr: float) -> keras.Model:
    """Adam and a from-logits cross-entropy: how both classifiers train."""
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def convnet_classifier(lr: float = 1e-3) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            layers.Conv2D(8, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(16, 3, activation="relu", padding="same"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(2),
        ],
        name="convnet",
    )
    return _compile_classifier(model, lr)


def batchnorm_classifier(momentum: float = 0.99, lr: float = 1e-3) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            layers.Conv2D(8, 3, padding="same"),
            layers.BatchNormalization(momentum=momentum),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Conv2D(16, 3, padding="same"),
            layers.BatchNormalization(momentum=momentum),
            layers.ReLU(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(2),
        ],
        name="bn_convnet",
    )
    return _compile_classifier(model, lr)


def soft_jaccard_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - soft IoU, per image."""
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    union = ops.sum(y_true + y_pred, axis=(1, 2, 3)) - inter
    return 1.0 - (inter + smooth) / (union + smooth)


def small_unet(optimizer: keras.optimizers.Optimizer | None = None) -> keras.Model:
    inp = keras.Input((16, 16, 1))
    c1 = layers.Conv2D(8, 3, activation="relu", padding="same")(inp)
    p1 = layers.MaxPooling2D()(c1)
    c2 = layers.Conv2D(16, 3, activation="relu", padding="same")(p1)
    u1 = layers.UpSampling2D()(c2)
    m1 = layers.Concatenate()([u1, c1])
    c3 = layers.Conv2D(8, 3, activation="relu", padding="same")(m1)
    out = layers.Conv2D(1, 1, activation="sigmoid")(c3)
    model = keras.Model(inp, out, name="unet")
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3), loss=soft_jaccard_loss)
    return model
