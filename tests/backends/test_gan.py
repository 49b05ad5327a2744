"""Models trained by several optimizers: the GAN of Keras' guides (example_project/gan.py), on every backend.

Each optimizer the train_step applies is recorded (gradient norms, updates, learning rate per optimizer), every
scalar it reports is a per-step curve (d_loss, g_loss), the checks judge each loss curve and each optimizer, and
a finding names the one it is about.  A train_step that applies no optimizer is told so.
"""

from __future__ import annotations

from pathlib import Path

import keras

GAN_SOURCE = Path(__file__).parents[2] / "example_project" / "gan.py"
BACKEND = keras.backend.backend()


def run(pytester, body: str, *args: str):
    pytester.makepyfile(gan=GAN_SOURCE.read_text())
    pytester.makepyfile("import keras\nimport numpy as np\nimport pytest\n\nfrom gan import REAL, gan\n" + body)
    return pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", *args)


def test_a_healthy_gan_passes_and_records_each_loss_and_optimizer(pytester):
    result = run(
        pytester,
        '''
class RunningMeans(keras.callbacks.Callback):
    """The d_loss logs show each step: Keras' running mean over the epoch."""
    def __init__(self):
        super().__init__()
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append((batch, float(logs["d_loss"])))


@pytest.mark.stable_training(steps=160)
def test_gan(stability):
    means = RunningMeans()
    report = stability.fit(gan(), REAL, batch_size=32, callbacks=[means])
    trace = report.trace
    assert set(trace.curves) == {"d_loss", "g_loss"} and trace.steps == 160
    assert set(trace.optimizers) == {"d_optimizer", "g_optimizer"}
    assert trace.info["optimizers"] == {"d_optimizer": "Adam", "g_optimizer": "Adam"}
    d_cols = trace.info["optimizer_columns"]["d_optimizer"]
    assert all(n.startswith("discriminator/") for n in trace.var_names[d_cols[0]:d_cols[1]])
    # the global gradient norm is the norm of both optimizers' gradients together
    np.testing.assert_allclose(trace.grad_norm ** 2, sum(s["grad_norm"] ** 2 for s in trace.optimizers.values()),
                               rtol=1e-6)
    # each recorded d_loss is the step's own: what takes the running mean of the logs from one step to the next
    raw = [m if b == 0 else (b + 1) * m - b * prev for (b, m), (_, prev) in zip(means.means, [(0, 0.0)] + means.means)]
    np.testing.assert_allclose(trace.curves["d_loss"], raw, rtol=2e-3, atol=1e-4)
    assert report.verdict == "stable", report.explain()
''',
        "--stability-report=report.json",
    )
    result.assert_outcomes(passed=1)
    import json

    run_json = json.loads((pytester.path / "report.json").read_text())["tests"][0]["calls"][0]["runs"][0]
    assert {"d_loss", "g_loss", "grad_norm/d_optimizer", "grad_norm/g_optimizer"} <= set(run_json["curves"])
    result.stdout.fnmatch_lines(["PASS *test_gan*d_loss * g_loss *"])


def test_a_discriminator_learning_rate_far_too_high_fails_naming_the_optimizer(pytester):
    result = run(
        pytester,
        """
@pytest.mark.stable_training(steps=160)
def test_gan(stability):
    stability.fit(gan(d_learning_rate=5.0), REAL, batch_size=32)
""",
    )
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    # a finding names the optimizer (or the loss curve) it is about, and its fix says which optimizer to change
    assert "d_optimizer: " in text or "g_optimizer: " in text or "d_loss: " in text or "g_loss: " in text, text
    assert "fix to try: on d_optimizer" in text or "fix to try: on g_optimizer" in text, text


def test_a_train_step_that_applies_no_optimizer_is_told_so(pytester):
    result = run(
        pytester,
        """
class NoUpdate(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.tracker = keras.metrics.Mean(name="loss")

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        self.tracker.update_state(keras.ops.mean(self(x) ** 2))
        return {"loss": self.tracker.result()}


@pytest.mark.stable_training(steps=8)
def test_no_update(stability):
    model = NoUpdate()
    model.compile(optimizer="adam")
    stability.fit(model, REAL[:64], batch_size=8)
"""
        if BACKEND != "jax"
        else """
class NoUpdate(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)

    def train_step(self, state, data):
        return {}, state


@pytest.mark.stable_training(steps=8)
def test_no_update(stability):
    model = NoUpdate()
    model.compile(optimizer="adam")
    model.build((None, 16))
    stability.fit(model, REAL[:64], batch_size=8)
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*model.fit() ran 8 training step(s), but the model's train_step applied no Keras optimizer*"]
    )
