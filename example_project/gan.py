"""A GAN as Keras' "customizing what happens in fit()" guides write it, small, with one train_step per backend.

TensorFlow and PyTorch: the guides' GAN (two optimizers kept on the model, a ``train_step`` that applies each,
``d_loss`` / ``g_loss`` trackers).  JAX: the same GAN written with ``stateless_apply``; ``fit`` threads both
optimizers' variables (the model says how: ``_get_jax_state`` / ``jax_state_sync``).  The plugin's own tests
train it too (tests/backends/test_gan.py, test_fidelity.py).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

BACKEND = keras.backend.backend()
LATENT = 8
rng = np.random.default_rng(0)
#: "real" samples: a shifted, scaled Gaussian in 16 dimensions
REAL = (rng.normal(size=(512, 16)) * 0.5 + 1.0).astype("float32")


def networks():
    discriminator = keras.Sequential(
        [keras.Input((16,)), layers.Dense(16), layers.LeakyReLU(negative_slope=0.2), layers.Dense(1)],
        name="discriminator",
    )
    generator = keras.Sequential(
        [keras.Input((LATENT,)), layers.Dense(16), layers.LeakyReLU(negative_slope=0.2), layers.Dense(16)],
        name="generator",
    )
    return discriminator, generator


class _GANBase(keras.Model):
    def __init__(self, discriminator, generator):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)
        self.built = True

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn


if BACKEND == "tensorflow":
    import tensorflow as tf

    class GAN(_GANBase):
        def train_step(self, real):
            if isinstance(real, tuple):
                real = real[0]
            batch = tf.shape(real)[0]
            z = keras.random.normal((batch, LATENT), seed=self.seed_generator)
            combined = tf.concat([self.generator(z), real], axis=0)
            labels = tf.concat([tf.ones((batch, 1)), tf.zeros((batch, 1))], axis=0)
            labels += 0.05 * keras.random.uniform(tf.shape(labels), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                d_loss = self.loss_fn(labels, self.discriminator(combined))
            grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
            self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights, strict=True))
            z = keras.random.normal((batch, LATENT), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                g_loss = self.loss_fn(tf.zeros((batch, 1)), self.discriminator(self.generator(z)))
            grads = tape.gradient(g_loss, self.generator.trainable_weights)
            self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights, strict=True))
            self.d_loss_tracker.update_state(d_loss)
            self.g_loss_tracker.update_state(g_loss)
            return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}

elif BACKEND == "torch":
    import torch

    class GAN(_GANBase):
        def train_step(self, real):
            if isinstance(real, tuple):
                real = real[0]
            batch = real.shape[0]
            z = keras.random.normal((batch, LATENT), seed=self.seed_generator)
            # keras.ops create and convert on Keras' device (the GPU when there is one); torch.ones would not
            combined = torch.concat([self.generator(z), keras.ops.convert_to_tensor(real)], axis=0)
            labels = keras.ops.concatenate([keras.ops.ones((batch, 1)), keras.ops.zeros((batch, 1))], axis=0)
            labels = labels + 0.05 * keras.random.uniform(labels.shape, seed=self.seed_generator)
            self.zero_grad()
            d_loss = self.loss_fn(labels, self.discriminator(combined))
            d_loss.backward()
            grads = [v.value.grad for v in self.discriminator.trainable_weights]
            with torch.no_grad():
                self.d_optimizer.apply(grads, self.discriminator.trainable_weights)
            z = keras.random.normal((batch, LATENT), seed=self.seed_generator)
            self.zero_grad()
            g_loss = self.loss_fn(keras.ops.zeros((batch, 1)), self.discriminator(self.generator(z)))
            g_loss.backward()
            grads = [v.value.grad for v in self.generator.trainable_weights]
            with torch.no_grad():
                self.g_optimizer.apply(grads, self.generator.trainable_weights)
            self.d_loss_tracker.update_state(d_loss)
            self.g_loss_tracker.update_state(g_loss)
            return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}

else:
    import jax

    class GAN(_GANBase):
        def compile(self, d_optimizer, g_optimizer, loss_fn):
            super().compile(d_optimizer, g_optimizer, loss_fn)
            d_optimizer.build(self.discriminator.trainable_variables)  # stateless_apply needs built optimizers
            g_optimizer.build(self.generator.trainable_variables)

        def _optimizer_variables(self):
            return self.d_optimizer.variables + self.g_optimizer.variables

        # fit threads `optimizer_variables` through each step: here both optimizers'
        def _get_jax_state(
            self,
            trainable_variables=False,
            non_trainable_variables=False,
            optimizer_variables=False,
            metrics_variables=False,
            purge_model_variables=False,
        ):
            state = []
            if trainable_variables:
                state.append([v.value for v in self.trainable_variables])
            if non_trainable_variables:
                state.append([v.value for v in self.non_trainable_variables])
            if optimizer_variables:
                state.append([v.value for v in self._optimizer_variables()])
            if metrics_variables:
                state.append([v.value for v in self.metrics_variables])
            return tuple(state)

        def jax_state_sync(self):
            if not getattr(self, "_jax_state", None) or self._jax_state_synced:
                return
            state = self._jax_state
            for refs, values in (
                (self.trainable_variables, state["trainable_variables"]),
                (self.non_trainable_variables, state["non_trainable_variables"]),
                (self._optimizer_variables(), state["optimizer_variables"]),
                (self.metrics_variables, state["metrics_variables"]),
            ):
                for ref, value in zip(refs, values, strict=True):
                    ref.assign(value)
            self._jax_state_synced = True

        def _loss(self, net_values, other_values, seed_values, which, real):
            batch = real.shape[0]
            d_values, g_values = (net_values, other_values) if which == "d" else (other_values, net_values)
            mapping = (
                list(zip(self.discriminator.trainable_variables, d_values, strict=True))
                + list(zip(self.generator.trainable_variables, g_values, strict=True))
                + list(zip(self.non_trainable_variables, seed_values, strict=True))
            )
            with keras.StatelessScope(state_mapping=mapping) as scope:
                z = keras.random.normal((batch, LATENT), seed=self.seed_generator)
                if which == "d":
                    combined = keras.ops.concatenate([self.generator(z), real], axis=0)
                    labels = keras.ops.concatenate([keras.ops.ones((batch, 1)), keras.ops.zeros((batch, 1))], 0)
                    labels = labels + 0.05 * keras.random.uniform(labels.shape, seed=self.seed_generator)
                    loss = self.loss_fn(labels, self.discriminator(combined))
                else:
                    loss = self.loss_fn(keras.ops.zeros((batch, 1)), self.discriminator(self.generator(z)))
            seeds = [
                scope.get_current_value(v) if scope.get_current_value(v) is not None else s
                for v, s in zip(self.non_trainable_variables, seed_values, strict=True)
            ]
            return loss, seeds

        def train_step(self, state, real):
            trainable, non_trainable, optimizer_values, metrics_values = state
            if isinstance(real, tuple):
                real = real[0]
            n_d = len(self.discriminator.trainable_variables)
            n_dopt = len(self.d_optimizer.variables)
            d_values, g_values = trainable[:n_d], trainable[n_d:]
            d_opt, g_opt = optimizer_values[:n_dopt], optimizer_values[n_dopt:]
            (d_loss, seeds), grads = jax.value_and_grad(
                lambda v, s: self._loss(v, g_values, s, "d", real), has_aux=True
            )(d_values, non_trainable)
            d_values, d_opt = self.d_optimizer.stateless_apply(d_opt, grads, d_values)
            (g_loss, seeds), grads = jax.value_and_grad(
                lambda v, s: self._loss(v, d_values, s, "g", real), has_aux=True
            )(g_values, seeds)
            g_values, g_opt = self.g_optimizer.stateless_apply(g_opt, grads, g_values)
            n_m = len(self.d_loss_tracker.variables)
            d_metrics = self.d_loss_tracker.stateless_update_state(metrics_values[:n_m], d_loss)
            g_metrics = self.g_loss_tracker.stateless_update_state(metrics_values[n_m:], g_loss)
            logs = {
                "d_loss": self.d_loss_tracker.stateless_result(d_metrics),
                "g_loss": self.g_loss_tracker.stateless_result(g_metrics),
            }
            return logs, (
                list(d_values) + list(g_values),
                seeds,
                list(d_opt) + list(g_opt),
                list(d_metrics) + list(g_metrics),
            )


def gan(d_learning_rate=3e-4):
    discriminator, generator = networks()
    model = GAN(discriminator, generator)
    model.compile(
        d_optimizer=keras.optimizers.Adam(d_learning_rate),
        g_optimizer=keras.optimizers.Adam(3e-4),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return model
