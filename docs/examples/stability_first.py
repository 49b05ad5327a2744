import keras
import numpy as np
import pytest

# A small, learnable problem: the label is the sign of a fixed linear function of the inputs.
rng = np.random.default_rng(0)
x = rng.normal(size=(640, 20)).astype("float32")
y = (x @ rng.normal(size=20) > 0).astype("float32")
x_train, y_train, x_val, y_val = x[:512], y[:512], x[512:], y[512:]


def build_model(learning_rate=0.05):
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9), loss="binary_crossentropy")
    return model


@pytest.mark.stable_training(steps=200)
def test_classifier_trains_stably(stability):
    stability.fit(build_model(), x_train, y_train, validation_data=(x_val, y_val), batch_size=32)
