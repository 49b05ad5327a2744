"""What-if replay: the same fit re-run from its start, exact without a fix; a fix that helps, one that
does not; its limits.  Real Keras training throughout (seconds each on a CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import keras  # noqa: E402

from benchmarks import scenarios as S  # noqa: E402
from pytest_stability.checks import Thresholds, run_checks  # noqa: E402
from pytest_stability.options import resolve_config_defaults  # noqa: E402
from pytest_stability.pipeline import judge  # noqa: E402
from pytest_stability.training import engine, whatif  # noqa: E402


def _spec(**kw):
    return resolve_config_defaults(lambda n: None, lambda n: None).replace(whatif=True, **kw)


def _fit_kwargs(sc):
    return {"validation_data": sc.validation_data} if sc.validation_data is not None else {}


def _train(sc, seed, **spec_kw):
    spec = _spec(**{**sc.spec_overrides, **spec_kw})
    engine.seed_everything(seed)
    model = sc.build()
    res = engine.train(
        model,
        sc.x,
        sc.y,
        fit_kwargs=_fit_kwargs(sc),
        steps=sc.steps,
        batch_size=sc.batch_size,
        seed=seed,
        spec=spec,
        keep_initial_state=True,
    )
    return model, res, spec


def _replay(sc, seed, model, res, spec, fix, failure_step):
    return whatif.replay(
        model,
        res,
        fix=fix,
        failure_step=failure_step,
        window=50,
        x=sc.x,
        y=sc.y,
        fit_kwargs=_fit_kwargs(sc),
        batch_size=sc.batch_size,
        seed=seed,
        spec=spec,
    )


def _attach(results, model, res, spec, sc, seed):
    """The what-if replays of a diagnosed run, as the plugin attaches them."""
    return whatif.attach_whatif(
        results,
        model,
        res,
        Thresholds(),
        spec,
        x=sc.x,
        y=sc.y,
        fit_kwargs=_fit_kwargs(sc),
        batch_size=sc.batch_size,
        seed=seed,
    )


def _diagnosed(res):
    return judge(res.trace, Thresholds())


def test_replay_without_a_fix_reproduces_the_run_exactly_and_restores_the_model():
    sc = S.noisy_small_batch(0)
    sc.steps = 200
    model, res, spec = _train(sc, 0, readback_every=20)
    before = [v.numpy().copy() for v in model.variables]
    rep = _replay(sc, 0, model, res, spec, fix={}, failure_step=130)
    assert rep.start == 80  # one spike window (50) before step 130
    assert rep.end == 200  # 4 windows past the failure, capped at the steps run
    np.testing.assert_array_equal(rep.trace.loss, res.trace.loss)
    np.testing.assert_array_equal(rep.trace.grad_norm, res.trace.grad_norm)
    for a, v in zip(before, model.variables, strict=True):
        np.testing.assert_array_equal(a, v.numpy())


def test_lower_learning_rate_replay_resolves_a_nan_run():
    sc = S.lr_too_high(1)
    model, res, spec = _train(sc, 1)
    results = _diagnosed(res)
    primary = next(f for r in results for f in r.findings if f.evidence.get("rank") == 0)
    # an early blow-up: a lower learning rate first, its factor from the first updates' size (|dw|/|w| brought
    # below 1e-2), and no clipnorm (no healthy stretch before the explosion to derive one from)
    first_fix = primary.evidence["fix_configs"][0]
    assert primary.evidence["cause_key"] == "lr_too_high" and first_fix.keys() == {"learning_rate_factor"}
    assert first_fix["learning_rate_factor"] <= 0.01
    assert not any("clipnorm" in c for r in results for f in r.findings for c in f.evidence["fix_configs"])
    out = _attach(results, model, res, spec, sc, seed=1)
    notes = [f.evidence["whatif"] for r in out for f in r.findings if "whatif" in f.evidence]
    assert len(notes) == 1, notes
    note = notes[0]
    assert note["resolved"] is True, note["text"]
    # the first replay is the primary finding's first fix, and it resolves the run
    first = note["attempts"][0]
    assert first["fix"] == first_fix, first
    assert first["text"].startswith(f"replayed steps 0-{first['end']} with SGD(learning_rate x ")
    assert "no finding" in first["text"]
    assert len(note["attempts"]) == 1 and np.isfinite(first["final_loss"])
    # the note sits on the primary finding
    assert any("whatif" in f.evidence and f.evidence.get("rank") == 0 for r in out for f in r.findings)


def test_a_smaller_weight_decay_resolves_a_run_it_held_at_the_prior_and_the_users_setting_is_put_back():
    sc = S.weight_decay_huge(0)  # AdamW(1e-2, weight_decay=50): every weight loses half of itself a step
    sc.steps = 300
    model, res, spec = _train(sc, 0)
    results = _diagnosed(res)
    primary = next(f for r in results for f in r.findings if f.evidence.get("rank") == 0)
    assert primary.evidence["cause_key"] == "weight_decay_too_strong", primary.cause
    assert primary.evidence["fix_configs"][0] == {"weight_decay": 0.01}
    out = _attach(results, model, res, spec, sc, seed=0)
    note = next(f.evidence["whatif"] for r in out for f in r.findings if "whatif" in f.evidence)
    assert note["resolved"] is True, note["text"]
    assert note["attempts"][0]["text"].startswith("replayed steps 0-")
    assert "AdamW(weight_decay=0.01)" in note["attempts"][0]["text"]
    assert model.optimizer.weight_decay == 50.0  # the replay changed it on the model; it is the user's again


def test_a_fix_that_does_not_help_is_reported_and_the_next_one_tried():
    # the replay's mechanics, with fixes chosen here: a clipnorm far above the norms (it clips nothing) does not
    # tame Adam at learning rate 3; a 100x lower rate does (an MLP: seconds on every backend, where the RNN
    # explosion this test trained before took a minute on PyTorch)
    import dataclasses

    sc = S.adam_early_blowup(0)
    sc.steps = 100  # not 300: the blow-up is at step 1
    model, res, spec = _train(sc, 0)
    results = _diagnosed(res)
    # amsgrad cannot be replayed: it is reported and does not use up one of the MAX_ATTEMPTS replays
    chosen = [{"clipnorm": 1e6}, {"amsgrad": True}, {"learning_rate_factor": 0.01}]
    results = [
        dataclasses.replace(
            r,
            findings=tuple(
                dataclasses.replace(
                    f, evidence={**f.evidence, "fix_configs": chosen if f.evidence.get("rank") == 0 else []}
                )
                for f in r.findings
            ),
        )
        for r in results
    ]
    out = _attach(results, model, res, spec, sc, seed=0)
    note = next(f.evidence["whatif"] for r in out for f in r.findings if "whatif" in f.evidence)
    first, skipped, second = note["attempts"]
    assert first["fix"] == {"clipnorm": 1e6} and first["resolved"] is False and first["still_failing"], first
    assert "still unstable: [" in first["text"]
    assert skipped["resolved"] is None and skipped["text"].startswith("not replayed with {'amsgrad': True}")
    assert second["fix"] == {"learning_rate_factor": 0.01} and second["resolved"] is True, second
    assert note["resolved"] is True
    # the attempts, then whether a skip-step guard would have saved the run (a spike or explosion was found)
    texts = [a["text"] for a in (first, skipped, second)]
    assert note["text"] == "; then ".join(texts) + "; " + note["guard"]["text"]
    assert note["guard"]["text"].startswith("with a skip-step guard (6 standard deviations over 128 steps)")


def test_a_rate_fix_that_leaves_the_same_failure_at_the_same_step_says_the_rate_did_not_cause_it():
    """A hand-written log loss, and a second batch whose inputs (1e3 x the others) saturate the sigmoid: NaN at
    step 1 whatever the rate.  Adam at 0.1 moved the weights a third of their norm at step 0, so the diagnosis offers a
    lower rate first; its replay at a hundredth of the rate fails at step 1 again, and the note says the rate did
    not cause it (it read as one more failed fix)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    x[32:64] *= 1e3

    def bce(y_true, p):
        return -keras.ops.mean(y_true * keras.ops.log(p) + (1 - y_true) * keras.ops.log(1 - p))

    engine.seed_everything(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss=bce)
    spec, fit_kwargs = _spec(), {"shuffle": False}
    res = engine.train(
        model, x, y, fit_kwargs=fit_kwargs, steps=20, batch_size=32, seed=0, spec=spec, keep_initial_state=True
    )
    results = _diagnosed(res)
    primary = next(f for r in results for f in r.findings if f.evidence.get("rank") == 0)
    assert (primary.check, primary.step) == ("nonfinite", 1)
    assert primary.evidence["fix_configs"][0] == {"learning_rate_factor": 0.01}, primary.evidence["fix_configs"]
    out = whatif.attach_whatif(
        results, model, res, Thresholds(), spec, x=x, y=y, fit_kwargs=fit_kwargs, batch_size=32, seed=0
    )
    (first,) = [f.evidence["whatif"] for r in out for f in r.findings if "whatif" in f.evidence][0]["attempts"]
    assert first["resolved"] is False and first["first_left"] == ["nonfinite", "training", 1]
    assert first["rate_refuted"] is True
    assert first["text"].endswith(
        "(the same failure, no later, at 0.01 x the rate: the learning rate did not cause it; look at the data, "
        "the loss and the initialisation)"
    )


def test_adam_epsilon_fix_replayed_from_a_snapshot_before_the_collapse():
    sc = S.adam_collapse(2)
    # all 3000 steps: the collapse came at about step 550 on one CPU and at 2493 on another (its timing is chaotic: a
    # float rounding that differs with the CPU's vector width moves it), after the long fall that is its evidence
    model, res, spec = _train(sc, 2)
    first = min((f for r in _diagnosed(res) for f in r.findings), key=lambda f: f.step)
    assert first.evidence["cause_key"] == "adam_second_moment"
    start = first.evidence["start"]
    rep = _replay(sc, 2, model, res, spec, fix=first.evidence["fix_configs"][0], failure_step=start)
    assert rep.fix_text == "Adam(epsilon=0.001)"
    # applied at the last execution boundary (chunks of 25 steps in a replay) at or before one spike
    # window (50 steps) before the collapse
    assert start - 75 < rep.start <= start - 50 and rep.end > start
    # the steps before the snapshot are the original run's; after it, the fix changes the trajectory
    np.testing.assert_array_equal(rep.trace.loss[: rep.start], res.trace.loss[: rep.start])
    assert not np.array_equal(rep.trace.loss[rep.start : rep.end], res.trace.loss[rep.start : rep.end])
    note = whatif.verdict(rep, run_checks(rep.trace, Thresholds(), ("loss_spike", "nonfinite", "grad_norm")))
    assert note["resolved"] is True, note["text"]


def test_a_rate_that_jumped_is_capped_and_the_cap_resolves_the_run():
    # the example project's mis-typed step schedule (1e-3, then 7 after step 150): a tenth of the schedule, the
    # fix before the cap, still spiked; the cap at 10x the rate before the jump resolves it
    sc = S.schedule_jump(0)
    model, res, spec = _train(sc, 0)
    primary = next(f for r in _diagnosed(res) for f in r.findings if f.evidence.get("rank") == 0)
    assert primary.evidence["cause_key"] == "lr_too_high", primary.cause
    assert primary.evidence["fix_configs"][0] == {"learning_rate_cap": 0.01}, primary.fix
    start = primary.evidence["start"]
    rep = _replay(sc, 0, model, res, spec, fix=primary.evidence["fix_configs"][0], failure_step=start)
    assert rep.fix_text == "SGD(learning_rate at most 0.01)" and rep.start < 151
    note = whatif.verdict(rep, run_checks(rep.trace, Thresholds(), ("loss_spike", "nonfinite", "grad_norm")))
    assert note["resolved"] is True, note["text"]


def test_a_rate_fix_that_a_callback_overwrites_is_not_judged():
    # the same jump set by a LearningRateScheduler callback each epoch (16 steps): the replay caps the rate, and
    # at the next epoch the callback sets 7 again; judging that replay would call the cap useless
    sc = S.schedule_jump(0)
    model = sc.build()
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    jump = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 1e-3 if epoch < 10 else 7.0)
    spec = _spec()
    engine.seed_everything(0)
    kw = {"callbacks": [jump]}
    res = engine.train(
        model, sc.x, sc.y, fit_kwargs=kw, steps=200, batch_size=32, seed=0, spec=spec, keep_initial_state=True
    )
    results = _diagnosed(res)
    primary = next(f for r in results for f in r.findings if f.evidence.get("rank") == 0)
    assert primary.evidence["fix_configs"][0] == {"learning_rate_cap": 0.01}, primary.fix
    rep = whatif.replay(
        model,
        res,
        fix={"learning_rate_cap": 0.01},
        failure_step=primary.evidence.get("fix_from", primary.evidence.get("start", primary.step)),
        window=50,
        x=sc.x,
        y=sc.y,
        fit_kwargs=kw,
        batch_size=32,
        seed=0,
        spec=spec,
    )
    assert rep.start < 160 and whatif.rate_not_held(rep, res.trace) == (160, 7.0)
    out = whatif.attach_whatif(
        results, model, res, Thresholds(), spec, x=sc.x, y=sc.y, fit_kwargs=kw, batch_size=32, seed=0
    )
    note = next(f for r in out for f in r.findings if "whatif" in f.evidence).evidence["whatif"]
    first = note["attempts"][0]
    assert first["resolved"] is None and first["text"].startswith(
        "not judged with SGD(learning_rate at most 0.01): the learning rate was 7 again at step 160 of the replay"
    ), first["text"]


def test_one_shot_generator_cannot_be_replayed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")

    def batches():
        for i in range(0, 64 * 10, 16):
            j = i % 64
            yield x[j : j + 16], y[j : j + 16]

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    spec = _spec(readback_every=10)
    res = engine.train(model, batches(), None, steps=30, seed=0, spec=spec, keep_initial_state=True)
    with pytest.raises(whatif.NotReplayable, match="can be read only once"):
        whatif.replay(
            model,
            res,
            fix={"learning_rate_factor": 0.1},
            failure_step=20,
            window=5,
            x=batches(),
            y=None,
            fit_kwargs={},
            batch_size=None,
            seed=0,
            spec=spec,
        )


def test_amsgrad_and_unknown_settings_are_not_replayed_and_say_why():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.raises(whatif.NotReplayable, match="SGD has no 'epsilon' setting"):
        whatif._fixable(keras, model, {"epsilon": 1e-3})
    model.compile(keras.optimizers.Adam(), "mse")
    with pytest.raises(whatif.NotReplayable, match="amsgrad=True needs optimizer state"):
        whatif._fixable(keras, model, {"amsgrad": True})


def test_learning_rate_factor_scales_a_schedule_in_place():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=10, decay_rate=0.5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(schedule, global_clipnorm=2.0), "mse")
    whatif.apply_fix(keras, model, {"learning_rate_factor": 0.1, "clipnorm": 1.0})
    opt = model.optimizer
    assert float(opt._learning_rate(10)) == pytest.approx(0.1 * float(schedule(10)))
    assert opt.clipnorm == 1.0 and opt.global_clipnorm is None


def test_learning_rate_cap_caps_a_schedule_or_a_rate_in_place():
    # the example project's mis-typed step schedule: 1e-3, then 7 after step 150; capped at 0.01, the steps
    # before the jump keep their rate
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([150], [1e-3, 7.0])
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9), "mse")
    whatif.apply_fix(keras, model, {"learning_rate_cap": 0.01})
    rates = [float(keras.ops.convert_to_numpy(model.optimizer._learning_rate(k))) for k in (0, 150, 151, 299)]
    assert rates == pytest.approx([1e-3, 1e-3, 0.01, 0.01])
    assert whatif.describe_fix("SGD", {"learning_rate_cap": 0.01}) == "SGD(learning_rate at most 0.01)"
    # a constant rate: lowered to the cap, never raised to it
    for lr, capped in ((0.5, 0.01), (1e-3, 1e-3)):
        model.compile(keras.optimizers.SGD(lr), "mse")
        whatif.apply_fix(keras, model, {"learning_rate_cap": 0.01})
        assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(capped)
