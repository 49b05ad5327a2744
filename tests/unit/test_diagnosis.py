"""Unit tests of the diagnosis rules on synthetic traces (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_stability.checks import run_checks
from pytest_stability.diagnosis import CAUSES, diagnose, lr_jump
from pytest_stability.trace import INPUT, WEIGHTS, Trace


def _diag(trace):
    return diagnose([f for r in run_checks(trace) for f in r.findings], trace)


def _adam_trace(opt="Adam", eps=1e-7):
    n = 400
    loss = np.concatenate([np.exp(-np.linspace(0, 12, 300)), np.full(100, 1e-5)])
    loss[350:356] = np.geomspace(0.5, 1e-3, 6)  # Adam recovers over several steps
    g = np.concatenate([np.full(60, 1.0), np.geomspace(1.0, 1e-4, 340)])
    g2v = np.ones(n)
    g2v[345:351] = 1e6
    return Trace(
        loss=loss,
        grad_norm=g,
        opt_stats={"g2_over_v_max": g2v, "v_rms": np.geomspace(1e-2, 1e-5, n)},
        info={
            "optimizer": opt,
            "optimizer_config": {"learning_rate": 1e-3, "epsilon": eps, "beta_2": 0.999, "amsgrad": False},
        },
    )


def test_adam_collapse_named_with_numbers():
    f = next(f for f in _diag(_adam_trace()) if f.check == "loss_spike")
    assert f.evidence["cause_key"] == "adam_second_moment"
    assert f.confidence == "likely"
    assert "epsilon=0.001" in f.fix and "amsgrad=True" in f.fix and "beta_2=0.99" in f.fix
    assert f.evidence["diagnosis"]["g2_over_v_jump"] >= 1e5


def test_spike_with_sgd_is_not_adam():
    f = next(f for f in _diag(_adam_trace(opt="SGD")) if f.check == "loss_spike")
    assert f.evidence["cause_key"] != "adam_second_moment"


def test_nan_in_data():
    flags = np.zeros(20, np.int32)
    flags[7] = INPUT
    (f,) = _diag(Trace(loss=np.ones(20), nonfinite=flags))
    assert f.evidence["cause_key"] == "nan_in_data" and f.step == 7 and f.confidence == "likely"


def test_divergence_before_nan_is_lr_too_high():
    loss = np.concatenate([np.full(30, 1.0), np.geomspace(1.0, 1e8, 10), [np.nan]])
    g = np.concatenate([np.full(30, 1.0), np.geomspace(1.0, 1e6, 10), [np.nan]])
    trace = Trace(loss=loss, grad_norm=g, lr=np.full(41, 0.5), info={"optimizer": "SGD"})
    f = next(f for f in _diag(trace) if f.check == "nonfinite")
    assert f.evidence["cause_key"] == "lr_too_high"
    assert "learning_rate=0.05" in f.fix


def test_sudden_nan_from_steady_loss_is_unsafe_op():
    loss = np.concatenate([np.geomspace(1.0, 0.05, 40), [np.nan]])
    trace = Trace(
        loss=loss,
        grad_norm=np.concatenate([np.full(40, 0.3), [np.nan]]),
        first_nonfinite={"step": 40, "source": "loss"},
    )
    f = next(f for f in _diag(trace) if f.check == "nonfinite")
    assert f.evidence["cause_key"] == "unsafe_loss_op" and "log" in f.fix


def test_grad_explosion_gives_clipnorm_number():
    g = np.concatenate([np.linspace(1.0, 2.0, 200), [500.0], np.full(99, 2.0)])
    rng = np.random.default_rng(0)
    trace = Trace(loss=np.exp(0.1 * rng.normal(size=300)), grad_norm=g)
    f = next(f for f in _diag(trace) if f.check == "grad_norm")
    assert f.evidence["cause_key"] == "gradient_explosion"
    p90 = f.evidence["diagnosis"]["grad_norm_p90_before"]
    assert 1.8 < p90 < 2.0 and f"clipnorm={float(f'{p90:.2g}'):g}" in f.fix


def test_explosion_then_constant_is_collapse():
    g = np.concatenate([np.full(100, 1.0), [1e4], np.full(199, 1e-9)])
    loss = np.concatenate([np.linspace(0.9, 0.3, 100), np.full(200, 0.96)])
    f = next(f for f in _diag(Trace(loss=loss, grad_norm=g)) if f.check == "grad_norm")
    assert f.evidence["cause_key"] == "collapse_constant" and "clipnorm=1" in f.fix


def _val_trace(bn, gap=None):
    info = {"batchnorm_layers": bn, "batchnorm_momentum": [0.99] * bn}
    if gap is not None:
        info["bn_train_infer_gap"] = gap
    v = [0.7, 0.5, 1.2, 0.45, 1.5, 0.5, 1.4]
    return Trace(loss=np.geomspace(1, 0.1, 70), val_steps=np.arange(7) * 10, val_loss=np.array(v), info=info)


def test_batchnorm_without_gap_is_flagged_from_curve():
    f = next(f for f in _diag(_val_trace(2)) if f.check == "val_loss")
    assert f.evidence["cause_key"] == "batchnorm_mismatch" and "not measured" in f.cause
    assert "momentum=0.9" in f.fix


@pytest.mark.parametrize("gap, conf", [(0.5, "likely"), (0.01, "uncertain")])
def test_batchnorm_gap_sets_confidence(gap, conf):
    f = next(f for f in _diag(_val_trace(2, gap)) if f.check == "val_loss")
    assert f.confidence == conf and f"{gap:.0%}" in f.cause


def test_no_batchnorm_is_overfitting():
    f = next(f for f in _diag(_val_trace(0)) if f.check == "val_loss")
    assert f.evidence["cause_key"] == "overfitting"


def test_every_cause_key_is_known_and_evidence_is_builtins():
    for trace in (_adam_trace(), _val_trace(1)):
        for f in _diag(trace):
            assert f.evidence["cause_key"] in CAUSES
            assert f.cause and f.confidence in ("likely", "uncertain")
            for v in f.evidence["diagnosis"].values():
                assert v is None or isinstance(v, (bool, int, float, str))


def test_diagnose_rejects_bad_input():
    with pytest.raises(TypeError, match="Finding"):
        diagnose(["nope"], Trace(loss=np.ones(3)))
    with pytest.raises(TypeError, match="Trace"):
        diagnose([], np.ones(3))


def _repeated_spikes(grad_norm):
    rng = np.random.default_rng(0)
    loss = np.concatenate([np.geomspace(1.0, 0.03, 200), 0.03 * np.exp(0.05 * rng.normal(size=800))])
    for k in (300, 480, 650, 830):
        loss[k : k + 6] = np.geomspace(1.0, 0.1, 6)  # each spike decays over a few steps
    return Trace(
        loss=loss,
        grad_norm=grad_norm,
        info={"optimizer": "Adam", "optimizer_config": {"learning_rate": 3e-2, "epsilon": 1e-7}},
    )


def test_repeated_adam_spikes_without_shrinking_gradients_are_the_learning_rate():
    # Adam, no slot statistics, spike after spike once the loss flattened, but the gradient norm never
    # shrank before them: no evidence that v collapsed, so not Adam's second moment; spike after spike at
    # the same rate is a rate too high for the minimum (a tenth, not a third)
    f = next(f for f in _diag(_repeated_spikes(np.ones(1000))) if f.check == "loss_spike")
    assert f.evidence["n_events"] == 4
    assert f.evidence["cause_key"] == "lr_too_high" and "not a second-moment collapse" in f.cause
    assert "4 separate spikes" in f.cause and f.evidence["fix_configs"][0] == {"learning_rate_factor": 0.1}


def test_repeated_adam_spikes_after_the_gradients_shrank_are_the_second_moment():
    # the same spikes after the gradient norm fell 30x over the first 200 steps: v shrank with it
    g = np.concatenate([np.geomspace(1.0, 1 / 30, 200), np.full(800, 1 / 30)])
    f = next(f for f in _diag(_repeated_spikes(g)) if f.check == "loss_spike")
    assert f.evidence["cause_key"] == "adam_second_moment" and f.confidence == "uncertain"  # no slot statistics
    assert f.evidence["diagnosis"]["grad_collapse"] > 10  # the median of steps 0-49 over that of the 100 before
    assert "4 separate spikes" in f.cause and f.evidence["fix_configs"][0] == {"epsilon": 1e-3}


def _small_gradients_spike(fell, g2v_jump):
    # Adam with slot statistics: the gradient norm shrank 6x (between SMALL_GRADIENTS and TINY_GRADIENTS) over
    # a long fall of the loss, then one spike at step 800
    n = 1000
    loss = np.concatenate([np.geomspace(1.0, 1.0 / fell, 700), np.full(300, 1.0 / fell)])
    loss[800:806] = np.geomspace(100.0 / fell, 2.0 / fell, 6)
    g = np.concatenate([np.full(50, 1.0), np.geomspace(1.0, 1 / 6, 650), np.full(300, 1 / 6)])
    g2v = np.ones(n)
    g2v[796:801] = g2v_jump
    return Trace(
        loss=loss,
        grad_norm=g,
        opt_stats={"g2_over_v_max": g2v},
        info={"optimizer": "Adam", "optimizer_config": {"learning_rate": 3e-2, "epsilon": 1e-7, "beta_2": 0.999}},
    )


@pytest.mark.parametrize(
    ("fell", "g2v_jump", "cause"),
    [
        (5000.0, 20.0, "adam_second_moment"),  # near the floor and v lagged the gradients
        (400.0, 20.0, "lr_too_high"),  # the loss not near its floor: a 6x smaller gradient is not a collapse
        (5000.0, 1.0, "lr_too_high"),  # g^2/v flat: v kept up with the gradients
    ],
)
def test_a_modest_gradient_shrink_names_adam_only_with_a_loss_near_its_floor_and_a_lagging_v(fell, g2v_jump, cause):
    f = next(f for f in _diag(_small_gradients_spike(fell, g2v_jump)) if f.check == "loss_spike")
    d = f.evidence["diagnosis"]
    assert 5 <= d["grad_collapse"] < 10
    assert f.evidence["cause_key"] == cause, (f.cause, d)


def _burst_after_a_fall(fell, stays_up):
    # Adam with slot statistics (g^2/v up 3.6x only): the gradient norm shrank 4x (between PLATEAU_GRADIENTS and
    # SMALL_GRADIENTS) over a long fall of the loss, then a burst at step 800 that leaves the loss on a plateau
    # 100x up (PyTorch's adam_collapse seeds 3 and 4) or comes back down within a few steps (a bounce)
    rng = np.random.default_rng(1)
    n = 1400
    loss = np.concatenate([np.geomspace(1.0, 1.0 / fell, 700), np.full(n - 700, 1.0 / fell)])
    if stays_up:
        loss[800:] = 100.0 / fell
    else:
        loss[800:806] = np.geomspace(100.0 / fell, 2.0 / fell, 6)
    g = np.concatenate([np.full(50, 1.0), np.geomspace(1.0, 1 / 4, 650), np.full(n - 700, 1 / 4)])
    g[800:] *= 20 if stays_up else 1
    g2v = np.ones(n)
    g2v[796:801] = 3.6
    return Trace(
        loss=loss * np.exp(0.05 * rng.normal(size=n)),
        grad_norm=g,
        opt_stats={"g2_over_v_max": g2v},
        info={
            "optimizer": "Adam",
            "optimizer_config": {"learning_rate": 1e-2, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False},
        },
    )


@pytest.mark.parametrize(
    ("fell", "stays_up", "cause"),
    [
        (5000.0, True, "adam_second_moment"),  # near its floor, thrown onto a plateau: "shoots up and plateaus"
        (5000.0, False, "lr_too_high"),  # the same burst, bounced back: a rate too high for the minimum
        (400.0, True, "lr_too_high"),  # not near its floor: a 4x smaller gradient is not a collapse
    ],
)
def test_a_burst_that_left_the_loss_on_a_plateau_names_adam_with_a_modest_gradient_shrink(fell, stays_up, cause):
    f = next(f for f in _diag(_burst_after_a_fall(fell, stays_up)) if f.check == "loss_spike")
    d = f.evidence["diagnosis"]
    assert 3 <= d["grad_collapse"] < 5 and d["g2_over_v_jump"] < 5, d
    assert f.evidence["cause_key"] == cause, (f.cause, d)
    said = "the loss did not come back down after its jump at step 800"
    assert (said in f.cause) is (cause == "adam_second_moment"), f.cause
    if cause == "adam_second_moment":
        assert f.evidence["fix_configs"][0] == {"epsilon": 1e-3}


def _slingshot(climb_to):
    # Adam: the loss falls 1e5x while the gradient norm shrinks 1000x, then (climb_to) climbs back over 150
    # steps and comes down again: a slow climb, no one-step spike
    rng = np.random.default_rng(0)
    loss = np.concatenate([np.geomspace(1.0, 1e-5, 600), np.full(400, 1e-5)])
    loss[600:750] = np.geomspace(1e-5, climb_to, 150)
    loss[750:850] = np.geomspace(climb_to, 1e-5, 100)
    g = np.concatenate([np.full(50, 1.0), np.geomspace(1.0, 1e-3, 550), np.full(400, 1e-3)])
    return Trace(
        loss=loss * np.exp(0.1 * rng.normal(size=1000)),
        grad_norm=g,
        info={
            "optimizer": "Adam",
            "optimizer_config": {"learning_rate": 1e-2, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False},
        },
    )


def test_a_slow_climb_after_the_gradients_shrank_lowers_the_learning_rate_first():
    # the slingshot: Adam's second moment, but a larger epsilon bounds one-step bursts only (measured:
    # benchmarks/results/fix_from_start.md), so the learning rate comes first; a one-step burst keeps epsilon
    (f,) = [f for f in _diag(_slingshot(0.05)) if f.check == "loss_spike"]
    assert f.evidence["slow_rise"] is True and f.evidence["cause_key"] == "adam_second_moment"
    assert f.evidence["fix_configs"][:2] == [{"learning_rate_factor": 0.1}, {"epsilon": 1e-3}]
    assert "climbed back over many steps" in f.cause and "a larger epsilon (now 1e-07) bounds only" in f.cause
    assert f.fix.startswith("learning_rate=0.001 (now 0.01; x 0.1)")
    burst = next(f for f in _diag(_adam_trace()) if f.check == "loss_spike")
    assert not burst.evidence.get("slow_rise") and burst.evidence["fix_configs"][0] == {"epsilon": 1e-3}
    assert "climbed back over many steps" not in burst.cause


def _modest_slingshot(fall, gradient_fall):
    # Adam: the loss falls `fall` x while the gradient norm shrinks only `gradient_fall` x, then climbs back 30x
    # over 150 steps and comes down again (the PyTorch slingshot runs of seeds 7 and 8: 540x and 5-6x)
    rng = np.random.default_rng(1)
    low = 0.1 / fall
    loss = np.concatenate([np.geomspace(0.1, low, 600), np.full(400, low)])
    loss[600:750] = np.geomspace(low, 30 * low, 150)
    loss[750:850] = np.geomspace(30 * low, low, 100)
    g = np.concatenate([np.full(50, 1.0), np.geomspace(1.0, 1 / gradient_fall, 550), np.full(400, 1 / gradient_fall)])
    return Trace(
        loss=loss * np.exp(0.05 * rng.normal(size=1000)),
        grad_norm=g * np.exp(0.05 * rng.normal(size=1000)),
        info={"optimizer": "Adam", "optimizer_config": {"learning_rate": 1e-2, "epsilon": 1e-7, "beta_2": 0.999}},
    )


@pytest.mark.parametrize(
    ("fall", "gradient_fall", "cause"),
    [
        (500.0, 5.0, "adam_second_moment"),  # a slow climb after a fall of orders of magnitude: the slingshot
        (50.0, 5.0, "lr_too_high"),  # the loss had not fallen far enough to reach the sharp minimum it needs
        (500.0, 2.0, "lr_too_high"),  # v kept up with the gradients
    ],
)
def test_a_slow_climb_back_names_adams_second_moment_only_after_a_fall_of_orders_of_magnitude(
    fall, gradient_fall, cause
):
    (f,) = [f for f in _diag(_modest_slingshot(fall, gradient_fall)) if f.check == "loss_spike"]
    assert f.evidence["slow_rise"] is True
    assert f.evidence["cause_key"] == cause, f.cause
    # either way the first fix is a lower learning rate
    assert list(f.evidence["fix_configs"][0]) == ["learning_rate_factor"]


def test_collapse_with_vanished_gradients_is_stuck_even_if_loss_wobbles():
    # After the jump the loss varies with the batch (3 %, too much to count as flat) but
    # the gradients are exactly zero.
    rng = np.random.default_rng(1)
    loss = np.concatenate([0.1 * np.exp(0.4 * rng.normal(size=100)), 0.95 * (1 + 0.03 * rng.normal(size=200))])
    g = np.concatenate([0.2 * np.exp(0.3 * rng.normal(size=100)), np.zeros(200)])
    f = next(f for f in _diag(Trace(loss=loss, grad_norm=g, info={"optimizer": "SGD"})) if f.check == "loss_spike")
    assert f.evidence["cause_key"] == "collapse_constant"
    # one definition of "stuck" in the check and the diagnosis: vanished gradients count
    assert f.evidence["stuck"] is True and f.evidence["vanished"] is True and f.evidence["flat"] is False
    assert "gradients vanished" in f.message
    # a collapse after a blow-up: the lower learning rate first, then clipnorm from the healthy stretch
    assert [c.keys() for c in f.evidence["fix_configs"]] == [{"learning_rate_factor"}, {"clipnorm"}]
    assert "clipnorm=" in f.fix


def _burst_then_vanished(burst):
    """A U-Net under SGD at lr 2, Nesterov momentum 0.99 (benchmarks' unet_jaccard_collapse, seed 1 on an AMD EPYC):
    the gradient norm bursts at step 5 (to ``burst``), the gradients die within a few dozen steps, and momentum
    carries the weights, and the loss with them, from 0.88 down to 0.32 long after: no jump of the loss."""
    rng = np.random.default_rng(3)
    n = 300
    g = np.concatenate([0.075 * np.exp(0.2 * rng.normal(size=5)), [burst], np.geomspace(0.3, 1e-3, 24), np.zeros(270)])
    loss = np.concatenate(
        [0.88 + 0.02 * rng.normal(size=80), np.linspace(0.88, 0.32, 120), 0.32 + 0.03 * rng.normal(size=100)]
    )
    update = np.concatenate([[0.08, 0.1, 0.11, 0.15, 0.24, 0.74], np.geomspace(0.27, 0.01, n - 6)])
    info = {"optimizer": "SGD", "optimizer_config": {"learning_rate": 2.0}}
    return Trace(loss=loss, grad_norm=g, update_ratio=update, lr=np.full(n, 2.0), info=info)


def test_gradients_that_burst_early_and_then_vanished_are_a_collapse_after_a_blow_up():
    # it was "the gradients vanished ... dead ReLUs or saturated outputs", with LeakyReLU / he_normal as the fix:
    # the burst, 11.8x its first steps' norm, before the gradients died is the blow-up; the fix is the rate
    (f,) = [f for f in _diag(_burst_then_vanished(0.81)) if f.check == "stuck"]
    assert f.evidence["cause_key"] == "collapse_constant", f.cause
    assert f.cause.startswith(
        "the gradient norm burst to 0.81 (step 5), 11.8x its first steps' 0.0685 (median of steps 0-4)"
    )
    assert "a collapse after a blow-up" in f.cause
    assert f.evidence["fix_configs"][0] == {"learning_rate_factor": 0.01}, f.fix
    assert f.evidence["fix_from"] == 5
    # without the burst (a norm 1.3x the first steps'), the same vanishing is the vanished gradients, as before
    (f,) = [f for f in _diag(_burst_then_vanished(0.1)) if f.check == "stuck"]
    assert f.evidence["cause_key"] == "vanished_gradients", f.cause


def test_a_network_that_died_after_learning_is_a_collapse_with_a_lower_learning_rate():
    # the loss fell from 0.8 to ~0.1, jumped back to ~0.3 and the gradients died: the stuck check's "died"
    # finding is a collapse after a blow-up; no fix raises the learning rate, and the fix goes in before the jump
    rng = np.random.default_rng(7)
    loss = np.concatenate(
        [np.geomspace(0.8, 0.1, 50) * np.exp(0.1 * rng.normal(size=50)), 0.3 * np.exp(0.2 * rng.normal(size=250))]
    )
    g = np.concatenate([0.2 * np.exp(0.3 * rng.normal(size=50)), np.full(250, 1e-9)])
    info = {"optimizer": "SGD", "optimizer_config": {"learning_rate": 2.0}}
    (f,) = [f for f in _diag(Trace(loss=loss, grad_norm=g, info=info)) if f.check == "stuck"]
    assert f.evidence["died"] is True and f.evidence["cause_key"] == "collapse_constant"
    assert "a collapse after a blow-up" in f.cause
    assert f.evidence["fix_configs"][0] == {"learning_rate_factor": 0.1}
    assert all(c.get("learning_rate_factor", 1.0) <= 1.0 for c in f.evidence["fix_configs"])
    assert f.evidence["fix_from"] < 50 <= f.step


def test_suggested_clipnorm_comes_from_the_healthy_norms_only():
    # the norm is ~1 for 50 steps, then ramps up 10,000x over 50 steps: the 90th percentile of all the
    # norms before the grad_norm finding is the ramp itself, which would clip nothing
    rng = np.random.default_rng(0)
    g = np.concatenate([np.exp(0.1 * rng.normal(size=50)), np.geomspace(1, 1e4, 50)])
    loss = np.exp(-np.arange(100) / 100)
    f = next(f for f in _diag(Trace(loss=loss, grad_norm=g, info={"optimizer": "SGD"})) if f.check == "grad_norm")
    clip = f.evidence["fix_configs"][0]["clipnorm"]
    assert f.evidence["fix_configs"][1] == {"learning_rate_factor": 0.1}
    assert 1.0 <= clip <= 10.0, clip  # within 10x of the early median
    assert f.evidence["diagnosis"]["grad_norm_p90_before"] > 5 * clip
    assert f"clipnorm={clip:g} on the optimizer, from this run's healthy gradient norms before the event" in f.fix


def _schedule_spike(lr):
    """A run that trains well for 150 steps, then spikes at step 166 and stays noisy (the example project's
    mis-typed step schedule): SGD under the rates ``lr``."""
    rng = np.random.default_rng(0)
    loss = np.concatenate([np.geomspace(2.3, 0.7, 150), 0.7 * np.exp(0.02 * rng.normal(size=150))])
    loss[166:175] = np.geomspace(3.1, 1.0, 9)
    g = np.exp(0.1 * rng.normal(size=300)) * 0.2
    g[166:175] = 1.4
    return Trace(loss=loss, grad_norm=g, lr=lr, info={"optimizer": "SGD", "optimizer_config": {"momentum": 0.9}})


def test_a_rate_that_jumped_is_capped_near_the_rates_the_run_trained_at():
    # 1e-3 for 151 steps, then 7 (PiecewiseConstantDecay([150], [1e-3, 7.0])): a tenth of the schedule
    # would still be 700x the rate the run trained at (measured: the loss still spikes at 0.7); the cap is
    # 10x the rate before the jump, and the steps before it keep theirs
    lr = np.where(np.arange(300) <= 150, 1e-3, 7.0)
    f = next(f for f in _diag(_schedule_spike(lr)) if f.check == "loss_spike")
    assert f.evidence["cause_key"] == "lr_too_high" and f.confidence == "likely"
    assert "a learning rate too high, which jumped before it" in f.cause and "unusual batch" not in f.cause
    assert f.evidence["fix_configs"][0] == {"learning_rate_cap": 0.01}
    d = f.evidence["diagnosis"]
    assert d["lr_jump_step"] == 151 and d["lr_before_jump"] == pytest.approx(1e-3) and d["lr_after_jump"] == 7.0
    assert f.fix.startswith(
        "a learning rate capped at 0.01 (lower the schedule's peak): the rate jumped 7e+03x at step 151, from "
        "0.001 (highest in steps 0-150) to 7 (step 151); the cap is 10x the highest rate the run trained at "
        "before the jump, and at most 0.1x the rate it blew up at, 7 (highest in steps 151-"
    )
    # a smaller jump: the cap is at most a tenth of the rate it blew up at
    small = next(
        f for f in _diag(_schedule_spike(np.where(np.arange(300) <= 150, 1e-3, 0.05))) if f.check == "loss_spike"
    )
    assert small.evidence["fix_configs"][0] == {"learning_rate_cap": 0.005}
    # the gradients exploded with it: still the rate that jumped into it, not clipping first
    trace = _schedule_spike(lr)
    trace.grad_norm[166:175] = 50.0
    f = next(f for f in _diag(trace) if f.check == "loss_spike")
    assert f.evidence["cause_key"] == "lr_too_high" and f.confidence == "likely"
    assert (
        "222x the 0.226 (90th percentile of steps 6-165) before it: a learning rate too high, which jumped before it;"
        in f.cause
    ), f.cause
    assert list(f.evidence["fix_configs"][0]) == ["learning_rate_cap"]


def test_a_collapse_after_a_jump_of_the_rate_caps_it_from_before_the_blow_up():
    # the loss settles near 0.67 by step 80, the rate jumps 1e-3 -> 7 at step 151, the loss bursts at 153 and
    # stays at 2.4 with zero gradients (a JAX run of benchmarks/scenarios.py's schedule_jump, seed 7)
    rng = np.random.default_rng(7)
    loss = np.concatenate([np.geomspace(0.75, 0.67, 80), 0.67 * np.exp(0.01 * rng.normal(size=73))])
    loss = np.concatenate([loss, [17.2, 11.2, 76.2, 4.5, 95.4], np.full(142, 2.38)])
    g = np.concatenate([0.3 * np.exp(0.1 * rng.normal(size=153)), [5.0, 8.0, 20.0, 3.0, 9.0], np.zeros(142)])
    lr = np.where(np.arange(300) <= 150, 1e-3, 7.0)
    trace = Trace(loss=loss, grad_norm=g, lr=lr, info={"optimizer": "SGD", "optimizer_config": {"momentum": 0.9}})
    p = primary_finding([f for r in run_checks(trace) for f in r.findings], trace)
    assert p.check == "stuck" and p.evidence["cause_key"] == "collapse_constant", p.cause
    assert p.evidence["fix_configs"][0] == {"learning_rate_cap": 0.01}, p.fix
    assert p.evidence["diagnosis"]["lr_jump_step"] == 151


def test_a_jump_after_a_warm_up_from_zero_is_capped_and_the_warm_up_alone_is_not_a_jump():
    # a linear warm-up from 0 to 1e-3 over 50 steps, then 7 from step 151: the jump is found (the rate of 0 at
    # step 0 is no rate to jump from); without the jump, the warm-up alone is none
    lr = np.concatenate([np.linspace(0.0, 1e-3, 50), np.full(101, 1e-3), np.full(149, 7.0)])
    f = next(f for f in _diag(_schedule_spike(lr)) if f.check == "loss_spike")
    assert f.evidence["fix_configs"][0] == {"learning_rate_cap": 0.01}
    warm = np.concatenate([np.linspace(0.0, 1e-3, 50), np.full(250, 1e-3)])
    assert lr_jump(_schedule_spike(warm), 166) is None


def test_a_warm_up_is_scaled_not_capped():
    # a linear warm-up from 1e-4 to 7: its largest one-step rise comes at its first step, before the run
    # trained at all: no jump, the schedule is scaled as before
    lr = np.concatenate([np.linspace(1e-4, 7.0, 155), np.full(145, 7.0)])
    f = next(f for f in _diag(_schedule_spike(lr)) if f.check == "loss_spike")
    assert "lr_jump_step" not in f.evidence["diagnosis"]
    assert list(f.evidence["fix_configs"][0]) == ["learning_rate_factor"]


# -- one primary cause per run ---------------------------------------------------

from pytest_stability.diagnosis import primary_finding, rank_findings  # noqa: E402


def test_training_blowup_outranks_the_validation_rise_it_causes():
    rng = np.random.default_rng(0)
    loss = np.geomspace(1.0, 0.1, 300) * np.exp(0.05 * rng.normal(size=300))
    loss[150:] = 3.0 * np.exp(0.05 * rng.normal(size=150))  # blows up at step 150 and stays up
    g = np.exp(0.2 * rng.normal(size=300))
    val = np.concatenate([np.geomspace(1.0, 0.12, 7), np.full(6, 3.0)])  # measured every 25 steps
    trace = Trace(loss=loss, grad_norm=g, val_steps=np.arange(13) * 25, val_loss=val, info={"optimizer": "SGD"})
    ranked = rank_findings(run_checks(trace), trace)
    assert ranked[0].check == "loss_spike" and 148 <= ranked[0].step < 200 and ranked[0].evidence["primary"]
    v = next(f for f in ranked if f.check == "val_loss")
    assert v.evidence["consequence_of"] == f"loss_spike@{ranked[0].step}"
    # a validation rise while the training loss also rises is not "overfitting"
    assert v.evidence["cause_key"] == "training_loss_rise" and "not overfitting" in v.cause


#: SGD at a learning rate of 50 on a small MLP classifier (TensorFlow, seed 0; the first 19 steps of a 200-step
#: run): the gradient norm explodes at step 1, is back near its initial level on a few steps between, and the
#: weights go NaN at step 18
SGD50_LOSS = [
    1.13,
    464.5,
    1.476e9,
    2.833e12,
    1.572e4,
    900.6,
    13.97,
    11.11,
    14.01,
    8.269,
    6.534e9,
    8.627,
    20.44,
    2.387e4,
    12.48,
    1.835e4,
    1.355e20,
    7.058e12,
    1.201e18,
    np.nan,
]
SGD50_GRADS = [
    1.205,
    164.1,
    4.154e6,
    1.179e10,
    2.759e5,
    2.556e4,
    0.5796,
    0.7552,
    0.4656,
    0.7175,
    4.407e9,
    0.7552,
    0.5946,
    3.438e5,
    0.9132,
    9.433e5,
    2.178e14,
    4.408e13,
    6.102e17,
    np.nan,
]


def _sgd50(recovered: int = 0) -> Trace:
    """The SGD run above; with ``recovered`` healthy steps (the loss and gradient norm at their initial level)
    inserted before its second blow-up at step 10."""
    loss, g = np.array(SGD50_LOSS), np.array(SGD50_GRADS)
    loss = np.concatenate([loss[:10], np.full(recovered, 1.0), loss[10:]])
    g = np.concatenate([g[:10], np.full(recovered, 1.0), g[10:]])
    n = loss.size
    flags = np.zeros(n, np.int32)
    flags[-1] = WEIGHTS
    upd = np.full(n, 0.01)
    upd[:2] = [6.08, 134.9]
    return Trace(
        loss=loss,
        grad_norm=g,
        update_ratio=upd,
        nonfinite=flags,
        lr=np.full(n, 50.0),
        steps_planned=200,
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 50.0}},
    )


def test_a_nan_that_ends_an_early_blow_up_is_its_consequence_with_one_fix():
    """The NaN 17 steps after the explosion, never healthy in between, is the same event: the report gives the
    explosion's fix (the rate measured on the first update) and no second one (it once added x 1e-06, measured
    on the updates of the divergence itself)."""
    ranked = rank_findings(run_checks(_sgd50()), _sgd50())
    assert [(f.check, f.step) for f in ranked] == [("grad_norm", 1), ("nonfinite", 19)]
    assert ranked[0].evidence["cause_key"] == "lr_too_high"
    assert ranked[0].evidence["fix_configs"][0] == {"learning_rate_factor": 0.001}
    assert ranked[1].evidence["consequence_of"] == "grad_norm@1"


def test_a_divergence_to_nan_is_measured_on_the_updates_before_it():
    """The learning rate's fix for a run that diverged to NaN comes from the updates while the loss was healthy
    (within 10x of its start: up to step 31, 1.5 of the weights' norm per step, a thousandth of the rate brings
    them below 0.01), not from those of the divergence, its consequence (up to 1e4: it once gave a millionth)."""
    loss = np.concatenate([np.full(30, 1.0), np.geomspace(1.0, 1e8, 10), [np.nan]])
    upd = np.concatenate([np.full(30, 0.5), np.geomspace(0.5, 1e4, 10), [np.nan]])
    trace = Trace(loss=loss, update_ratio=upd, lr=np.full(41, 0.5), info={"optimizer": "SGD"})
    (f,) = [f for f in _diag(trace) if f.check == "nonfinite"]
    assert f.evidence["cause_key"] == "lr_too_high" and "diverged" in f.cause
    assert f.evidence["fix_configs"][0] == {"learning_rate_factor": 0.001}
    assert f.evidence["diagnosis"]["update_ratio"] == pytest.approx(upd[:32].max())
    assert loss[31] < 10 < loss[32]


def test_a_nan_after_the_run_recovered_from_a_blow_up_is_an_event_of_its_own():
    trace = _sgd50(recovered=12)
    ranked = rank_findings(run_checks(trace), trace)
    nan = next(f for f in ranked if f.check == "nonfinite")
    assert nan.step == 31 and "consequence_of" not in nan.evidence


def test_overfitting_alone_is_the_primary():
    loss = np.geomspace(1.0, 0.01, 300)
    val = np.concatenate([np.geomspace(1.0, 0.4, 6), 0.4 * 1.1 ** np.arange(1, 8)])
    trace = Trace(loss=loss, grad_norm=np.ones(300), val_steps=np.arange(13) * 25, val_loss=val)
    p = primary_finding(run_checks(trace), trace)
    assert p.check == "val_loss" and p.evidence["cause_key"] == "overfitting"


def test_adam_collapse_with_a_gradient_burst_is_not_clipnorm():
    # Adam, diagnostics off (no slot statistics): loss 1e-12x and gradient norm 1e4x down, then the gradient
    # norm bursts 1e6x at step 600 and the loss follows one step later
    n = 800
    loss = np.concatenate([np.geomspace(1.0, 1e-12, 600), np.full(200, 1e-12)])
    loss[601:610] = np.geomspace(1e-2, 1e-6, 9)
    g = np.concatenate([np.full(60, 1.0), np.geomspace(1.0, 1e-4, 540), np.full(200, 1e-4)])
    g[600] = 500.0
    trace = Trace(
        loss=loss,
        grad_norm=g,
        info={
            "optimizer": "Adam",
            "optimizer_config": {"learning_rate": 1e-2, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False},
        },
    )
    results = run_checks(trace)
    assert {r.name for r in results if r.failed} >= {"grad_norm", "loss_spike"}
    gn = next(f for f in diagnose([f for r in results for f in r.findings], trace) if f.check == "grad_norm")
    assert gn.evidence["cause_key"] == "adam_second_moment" and "epsilon=0.001" in gn.fix
    assert "clipnorm" not in gn.fix and "gradient norm grew to 500 (step 600)" in gn.cause
    p = primary_finding(results, trace)
    # the earliest root event (the burst at 600) leads; the loss spike one step later agrees on the cause
    assert p.check == "grad_norm" and p.step == 600 and p.evidence["cause_key"] == "adam_second_moment"
    # the gradient norm fell 4000x over the steps before the burst and the loss 1e11x: likely even without slot
    # statistics
    assert p.evidence["alternative_causes"] == [] and p.confidence == "likely"
    assert n == trace.steps


def test_nan_at_step_zero_points_at_op_data_or_init_not_the_learning_rate():
    trace = Trace(
        loss=np.array([np.nan]),
        grad_norm=np.array([np.nan]),
        lr=np.array([0.1]),
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 0.1}},
    )
    p = primary_finding(run_checks(trace), trace)
    assert p.check == "nonfinite" and p.evidence["cause_key"] == "nonfinite_at_start"
    assert "learning_rate" not in p.fix and "initialisation" in p.fix and "cannot have caused it" in p.cause
    assert p.evidence["fix_configs"] == []


def test_dead_start_is_named_with_its_fix_and_leads_over_variables_without_gradient():
    rng = np.random.default_rng(0)
    n = 200
    vg = np.zeros((n, 3))
    vg[:, 2] = 0.0
    loss = 0.9 * (1 + 0.05 * rng.normal(size=n))
    trace = Trace(loss=loss, grad_norm=np.zeros(n), var_grad_norms=vg, var_names=("d1/kernel", "d1/bias", "out/bias"))
    ranked = rank_findings(run_checks(trace), trace)
    assert [f.kind for f in ranked] == ["stuck", "no_gradient"]
    assert ranked[0].evidence["cause_key"] == "vanished_gradients" and "LeakyReLU" in ranked[0].fix
    assert ranked[1].evidence["cause_key"] == "no_gradient" and "d1/kernel" in ranked[1].cause


def test_a_never_updated_variable_alone_is_the_primary_finding():
    rng = np.random.default_rng(1)
    vg = np.exp(0.2 * rng.normal(size=(100, 2)))
    vu = np.column_stack([np.full(100, 1e-3), np.zeros(100)])
    trace = Trace(
        loss=np.geomspace(1.0, 0.1, 100),
        grad_norm=np.sqrt((vg**2).sum(1)),
        var_grad_norms=vg,
        var_names=("a/kernel", "b/kernel"),
        var_update_ratio=vu,
    )
    p = primary_finding(run_checks(trace), trace)
    assert p.kind == "no_update" and p.evidence["cause_key"] == "no_update" and "b/kernel" in p.cause


def test_updates_too_fast_make_a_spike_a_likely_learning_rate_problem():
    rng = np.random.default_rng(2)
    loss = 0.3 * np.exp(0.05 * rng.normal(size=300))
    loss[200:206] = [3.0, 2.5, 2.0, 1.5, 1.2, 1.0]
    upd = np.full(300, 1e-3)
    upd[198:206] = 0.5
    trace = Trace(loss=loss, grad_norm=np.ones(300), update_ratio=upd, info={"optimizer": "SGD"})
    f = next(f for f in _diag(trace) if f.check == "loss_spike")
    assert f.evidence["cause_key"] == "lr_too_high" and f.confidence == "likely"
    assert "|dw|/|w|" in f.cause and f.evidence["diagnosis"]["update_ratio"] == pytest.approx(0.5)
    # without update ratios (a user's own loop) the same spike stays uncertain
    f2 = next(
        f for f in _diag(Trace(loss=loss, grad_norm=np.ones(300), info={"optimizer": "SGD"})) if f.check == "loss_spike"
    )
    assert f2.confidence == "uncertain"


def test_rank_findings_empty_and_bad_input():
    assert rank_findings([], Trace(loss=np.ones(3))) == [] and primary_finding([], Trace(loss=np.ones(3))) is None
    with pytest.raises(TypeError, match="rank_findings"):
        rank_findings(["nope"], Trace(loss=np.ones(3)))


def _bn_val_trace_with_training_rise(bn, gap):
    """Validation rises after its best at step 60 while the (training-mode) loss rose 1.8x at step 85: below
    every training check's limit, so no training finding."""
    rng = np.random.default_rng(0)
    loss = np.concatenate([np.full(85, 0.4), np.full(75, 0.72)]) * np.exp(0.02 * rng.normal(size=160))
    info = {"batchnorm_layers": bn, "batchnorm_momentum": [0.99] * bn}
    if gap is not None:
        info["bn_train_infer_gap"] = gap
    val = np.array([0.9, 0.7, 0.6, 0.5, 0.45, 0.9, 1.2, 1.4])
    return Trace(loss=loss, grad_norm=np.ones(160), val_steps=np.arange(8) * 20, val_loss=val, info=info)


def test_a_measured_batchnorm_gap_outranks_a_training_mode_loss_rise():
    f = next(f for f in _diag(_bn_val_trace_with_training_rise(2, 0.9)) if f.check == "val_loss")
    assert f.evidence["cause_key"] == "batchnorm_mismatch" and "90%" in f.cause
    rise = f.evidence["quotes"]["train_loss_rise"]["value"]
    assert rise > 1.5 and f"rose {rise:.3g}x" in f.cause and "momentum=0.9" in f.fix


@pytest.mark.parametrize("bn, gap", [(0, None), (2, None), (2, 0.05)])
def test_without_a_measured_gap_the_training_loss_rise_comes_first(bn, gap):
    f = next(f for f in _diag(_bn_val_trace_with_training_rise(bn, gap)) if f.check == "val_loss")
    assert f.evidence["cause_key"] == "training_loss_rise" and "not overfitting" in f.cause


def test_the_measured_first_fix_success_is_the_detection_benchmarks():
    # what the report quotes as a first fix's measured success is the benchmark's result files, not a copy that
    # drifted from them (per cause: tests/unit/test_summary_table.py)
    import ast
    from pathlib import Path

    from pytest_stability.diagnosis import FIX_SUCCESS

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    # a cap of a rate that jumped: the runs of the schedule_jump scenario, by the first fix's setting
    from pytest_stability.diagnosis import FIX_SUCCESS_BY_SETTING, measured_first_fix

    text = (results / "detection-schedule-jump.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("By the first fix's setting"))
    by_setting = ast.literal_eval(line.rsplit(": `", 1)[1].rstrip("`"))
    assert {"learning_rate_cap": by_setting["learning_rate_cap"]} == FIX_SUCCESS_BY_SETTING
    assert measured_first_fix("lr_too_high", {"learning_rate_cap": 0.01}) == (
        *by_setting["learning_rate_cap"],
        "runs whose first fix was learning_rate_cap",
    )
    assert measured_first_fix("lr_too_high", {"learning_rate_factor": 0.1}) == (
        *FIX_SUCCESS["lr_too_high"],
        "runs with this cause",
    )


@pytest.mark.parametrize("loss_first, scale", [(2.3e7, True), (9e3, False), (1.2, False)])
def test_an_early_blow_up_from_a_huge_loss_names_the_targets_scale(loss_first, scale):
    # regression targets around 5000 give a mean squared error of ~2e7 at step 0, and gradients as large: the
    # learning rate is too high for *that* scale, and standardising the targets is what lets a normal one work
    loss = np.concatenate([np.full(3, loss_first), loss_first * np.geomspace(2.0, 1e6, 5)])
    g = np.concatenate([np.full(3, 1e4), np.geomspace(2e4, 1e10, 5)])
    trace = Trace(loss=loss, grad_norm=g, lr=np.full(8, 1e-3), info={"optimizer": "SGD"})
    trace.steps_planned = 300  # eight steps of a planned 300: the blow-up is early
    f = _diag(trace)[0]
    assert f.evidence["cause_key"] == "lr_too_high"
    assert f.fix.startswith("learning_rate=")  # the measured fix stays first
    texts = [x["text"] for x in f.evidence["fixes"]]
    if scale:
        assert f"the loss started at {loss_first:.3g}" in f.cause and "targets (or the inputs)" in f.cause
        assert "a learning rate too high for this model from the start" not in f.cause
        assert any(t.startswith("standardise the targets") for t in texts)
    else:
        assert "targets" not in f.cause and "a learning rate too high for this model from the start" in f.cause
        assert not any("standardise" in t for t in texts)


@pytest.mark.parametrize(
    "info, says, fixes",
    [
        ({"target_rms": 5100.0, "input_rms": 1.0}, "the targets are far from unit scale", ["standardise the targets"]),
        ({"input_rms": 9800.0}, "the inputs are far from unit scale", ["standardise the inputs"]),
        (
            {"input_rms": 130.0, "target_rms": 300.0},
            "the data is far from unit scale",
            ["standardise the targets", "standardise the inputs"],
        ),
        ({"input_rms": 1.0, "target_rms": 0.7}, None, []),  # measured near unit scale: not the data
        # the model rescales its inputs first (Rescaling(1/255)): their raw scale does not train
        ({"input_rms": 9800.0, "inputs_rescaled_by": "Rescaling 'rescaling'"}, None, []),
        # ... or its outputs last (Normalization(invert=True) adapted to the targets)
        ({"target_rms": 5100.0, "input_rms": 1.0, "targets_rescaled_by": "Normalization 'norm'"}, None, []),
    ],
)
def test_an_early_blow_up_quotes_how_far_the_measured_data_is_from_unit_scale(info, says, fixes):
    # array data is measured before training (input_rms, target_rms): the cause quotes it, and offers
    # standardising what is far from unit scale after the lower learning rate
    loss = np.concatenate([np.full(3, 5.0), 5.0 * np.geomspace(2.0, 1e6, 5)])
    g = np.concatenate([np.full(3, 1.0), np.geomspace(2.0, 1e6, 5)])
    trace = Trace(loss=loss, grad_norm=g, lr=np.full(8, 1e-3), info={"optimizer": "SGD", **info})
    trace.steps_planned = 300
    f = _diag(trace)[0]
    assert f.evidence["cause_key"] == "lr_too_high" and f.fix.startswith("learning_rate=")
    offered = [x["text"] for x in f.evidence["fixes"] if x["text"].startswith("standardise")]
    assert [text.split(",")[0] for text in offered] == fixes
    if says is None:
        assert "unit scale (" not in f.cause and "a learning rate too high for this model from the start" in f.cause
    else:
        assert says in f.cause
        for value in info.values():
            if isinstance(value, float) and value >= 100:
                assert f"root mean square is {value:.3g}" in f.cause


@pytest.mark.parametrize(
    "info, ids",
    [
        ({"layers": ["Embedding", "GlobalAveragePooling1D", "Dense"], "data": "arrays"}, True),
        ({"layers": ["IntegerLookup", "Embedding", "Dense"]}, True),  # a dataset: nothing measured, ids looked up
        # a float input measured beside the ids: its scale may be what blew up
        ({"layers": ["Embedding", "Dense"], "input_rms": 1.0}, False),
        ({"layers": ["Dense"], "data": "arrays"}, False),  # integer features into a Dense layer: they have a scale
        ({}, False),  # a trace from a loop of the user's says nothing of its layers
    ],
)
def test_an_early_blow_up_of_a_model_fed_ids_does_not_blame_or_scale_the_inputs(info, ids):
    # token ids into an Embedding: "inputs far from unit scale" and "scale the inputs to about unit range" point
    # the wrong way (an id has no scale); the learning rate and the initialisation stay
    loss = np.concatenate([np.full(3, 0.7), 0.7 * np.geomspace(2.0, 1e6, 5)])
    g = np.concatenate([np.full(3, 0.4), np.geomspace(2.0, 1e6, 5)])
    trace = Trace(loss=loss, grad_norm=g, lr=np.full(8, 3e3), info={"optimizer": "SGD", **info})
    trace.steps_planned = 300
    f = _diag(trace)[0]
    assert f.evidence["cause_key"] == "lr_too_high" and f.fix.startswith("learning_rate=")
    texts = [x["text"] for x in f.evidence["fixes"]]
    assert "a learning rate too high for this model from the start (or weights initialised too large" in f.cause
    assert ("inputs far from unit scale" in f.cause) is not ids
    assert any("check the initialisation" in t for t in texts)
    assert any("scale the inputs" in t for t in texts) is not ids


@pytest.mark.parametrize(
    ("outliers", "made_by", "checked"),
    [
        (
            {"samples": [77], "values": [1e4], "count": 1, "rms_rest": 1.81, "n": 512},
            "made by one sample: sample 77 (1e+04); the others' is 1.81",
            "check the targets of sample 77 (1e+04)",
        ),
        (
            {"samples": [5, 9], "values": [-9999.0, 5000.0], "count": 7, "rms_rest": 0.99, "n": 512},
            "made by 7 of the 512 samples: samples 5 (-9999), 9 (5000) and 5 more; the others' is 0.99",
            "check the targets of samples 5 (-9999), 9 (5000) and 5 more",
        ),
    ],
)
def test_targets_far_from_unit_scale_because_of_a_few_samples_name_them(outliers, made_by, checked):
    # one target of 1e4 among targets of about 1 makes their root mean square 442: standardising them would leave
    # that sample 5000 standard deviations out; the fix is the sample (a wrong value, a -9999 for "missing")
    loss = np.concatenate([np.full(3, 5.0), 5.0 * np.geomspace(2.0, 1e6, 5)])
    g = np.concatenate([np.full(3, 1.0), np.geomspace(2.0, 1e6, 5)])
    info = {"optimizer": "SGD", "target_rms": 442.0, "input_rms": 1.0, "target_outliers": outliers}
    trace = Trace(loss=loss, grad_norm=g, lr=np.full(8, 1e-3), info=info)
    trace.steps_planned = 300
    f = _diag(trace)[0]
    assert "the targets' root mean square is 442, " + made_by in f.cause, f.cause
    assert "a batch that holds one of those samples gets gradients far larger than the others" in f.cause
    texts = [x["text"] for x in f.evidence["fixes"]]
    assert any(t.startswith(checked + ": far outside the others' range") for t in texts), texts
    assert not any(t.startswith("standardise the targets") for t in texts), texts


def _collapsed_and_dead(info):
    """The ``stuck`` findings of a classifier that learned, blew up and died (gradients 1e-9), and of one dead
    from the start (flat loss, zero gradients), under ``info``."""
    rng = np.random.default_rng(7)
    died = np.concatenate(
        [np.geomspace(0.8, 0.1, 50) * np.exp(0.1 * rng.normal(size=50)), 0.3 * np.exp(0.2 * rng.normal(size=250))]
    )
    g = np.concatenate([0.2 * np.exp(0.3 * rng.normal(size=50)), np.full(250, 1e-9)])
    (collapse,) = [f for f in _diag(Trace(loss=died, grad_norm=g, info=dict(info))) if f.check == "stuck"]
    flat = Trace(loss=0.9 * (1 + 0.05 * rng.normal(size=200)), grad_norm=np.zeros(200), info=dict(info))
    return collapse, rank_findings(run_checks(flat), flat)[0]


@pytest.mark.parametrize("input_rms", [9800.0, 1.0, None])
def test_units_saturated_by_inputs_far_from_unit_scale_are_told_to_standardise_them(input_rms):
    # inputs around 1e4 saturate a sigmoid output or kill ReLUs: the gradients go to zero. Measured, the inputs'
    # scale is the cause of a dead start and of a collapse after a blow-up alike (which of the two a run shows
    # depends on the backend's numerics), and standardising them leads the fixes; the lower learning rate stays
    # the collapse's first replayable fix. Unmeasured or unit-scale inputs get the mechanism and its advice only.
    info = {"optimizer": "SGD", "optimizer_config": {"learning_rate": 2.0}}
    if input_rms is not None:
        info["input_rms"] = input_rms
    far = input_rms is not None and input_rms >= 100
    collapse, dead = _collapsed_and_dead(info)
    keys = (collapse.evidence["cause_key"], dead.evidence["cause_key"])
    assert keys == (("inputs_out_of_scale",) * 2 if far else ("collapse_constant", "vanished_gradients"))
    for f in (collapse, dead):
        texts = [x["text"] for x in f.evidence["fixes"]]
        assert ("the inputs' root mean square is" in f.cause) is far
        assert not far or f.cause.startswith(f"the inputs' root mean square is {input_rms:.3g}, far from unit scale")
        assert any(t.startswith("standardise the inputs") for t in texts) is far
        assert f.fix.startswith("standardise the inputs") is far
    assert "a collapse after a blow-up" in collapse.cause and "nothing learns" in dead.cause  # the mechanisms
    assert collapse.evidence["fix_configs"][0] == {"learning_rate_factor": 0.1}  # the first replayable fix
    assert ("normalised inputs" in dead.fix) is not far


def test_a_network_dead_but_for_its_output_bias_after_an_early_blow_up_is_a_collapse_from_that_update():
    from test_checks import _dead_but_the_output_bias

    tr = _dead_but_the_output_bias(first_update=17.0)
    tr.loss[0] = 0.8
    tr.loss[1:10] = [541.0, 16.0, 15.0, 101.0, 40.0, 30.0, 14.4, 15.0, 22.3]
    tr.info["optimizer"] = "Adam"
    tr.info["optimizer_config"] = {"learning_rate": 1.0}
    stuck = [f for f in _diag(tr) if f.check == "stuck"][0]
    assert stuck.evidence["cause_key"] == "collapse_constant", stuck.cause
    assert "after the update at step 0 the loss went from 0.8" in stuck.cause
    assert "every weight but seq/out/bias has had a zero gradient since" in stuck.cause
    assert "labels" not in stuck.cause
    assert stuck.evidence["fix_configs"][0]["learning_rate_factor"] < 1


def test_a_network_dead_but_for_its_output_bias_is_not_blamed_on_the_labels():
    from test_checks import _dead_but_the_output_bias

    tr = _dead_but_the_output_bias()
    stuck = [f for f in _diag(tr) if f.check == "stuck"][0]
    assert "labels" not in stuck.cause and "no signal" not in stuck.cause, stuck.cause
    assert "every weight but seq/out/bias" in stuck.cause, stuck.cause


def test_a_large_first_update_after_which_the_loss_did_not_rise_is_not_called_a_blow_up():
    from test_checks import _dead_but_the_output_bias

    # the first update was 17x the weights' norm, but the loss never rose above its start: whatever killed
    # the network, "the loss went up after the update" would not be the trace's
    tr = _dead_but_the_output_bias(first_update=17.0)
    stuck = [f for f in _diag(tr) if f.check == "stuck"][0]
    assert "after the update at step 0" not in stuck.cause, stuck.cause


def test_a_spike_that_killed_the_network_leads_the_collapse_it_caused():
    from test_checks import _dead_but_the_output_bias

    from pytest_stability.diagnosis import rank_findings

    tr = _dead_but_the_output_bias()  # dead but for the output bias from about step 60
    tr.loss[66:74] *= 12.0  # the spike of that event, found by loss_spike a few steps after the death began
    ranked = rank_findings(run_checks(tr), tr)
    checks = [(f.check, f.step) for f in ranked]
    assert [c for c, _ in checks[:2]] == ["loss_spike", "stuck"], checks
    stuck = ranked[1]
    assert stuck.evidence["dead_network"] and stuck.step < ranked[0].step  # found earlier, led all the same
    assert stuck.evidence["consequence_of"] == f"loss_spike@{ranked[0].step}"


def test_a_healthy_stretch_whose_gradient_norms_are_all_zero_gives_no_clip_and_says_why():
    # a network dead since its first steps (zero gradients, a healthy-looking stretch), then a jump: the
    # clipnorm from those norms would be 0; the note said "fewer than {healthy_min_steps}" with that quote unset
    rng = np.random.default_rng(0)
    n = 200
    loss = 0.7 * np.exp(0.05 * rng.normal(size=n))
    loss[100:] *= 8.0
    g = np.zeros(n)
    g[100:] = 0.5
    found = [f for r in run_checks(Trace(loss=loss, grad_norm=g)) for f in r.findings]
    assert found, "the jump is a finding"
    fixes = [f.fix for f in diagnose(found, Trace(loss=loss, grad_norm=g))]
    assert any("no clipnorm: the gradient norms of the healthy steps before it, 0 " in x for x in fixes), fixes
    assert not any("clipnorm=" in x for x in fixes), fixes


@pytest.mark.parametrize("healthy, said", [(1, "only 1 healthy step before it"), (2, "only 2 healthy steps before it")])
def test_the_note_on_a_stretch_too_short_to_clip_from_counts_its_steps_in_words(healthy, said):
    # gradients that blow up right after the first steps: too few healthy steps to derive a clipnorm from
    g = np.array([1.0] * healthy + [1e3, 1e5, 1e7, 1e9])
    loss = np.array([0.7] * healthy + [7.0, 700.0, 7e4, 7e6])
    tr = Trace(loss=loss, grad_norm=g)
    fixes = [f.fix for f in diagnose([f for r in run_checks(tr) for f in r.findings], tr)]
    assert any(said + " (fewer than 10)" in x for x in fixes), fixes


@pytest.mark.parametrize(
    "optimizer, lr, first_update, info, expected",
    [
        # a 20-layer ReLU net initialised with stddev 0.5: SGD at 0.01 moves its weights 3.6e4x their norm at once;
        # the rate would have to be 1e-9
        ("SGD", 1e-2, 3.6e4, {"input_rms": 1.0}, "gradients_out_of_scale"),
        ("SGD", 1e-2, 3.6e4, {}, "gradients_out_of_scale"),  # a dataset: the inputs' scale not measured
        # Adam at 3 moves an MLP's weights 14x: a rate of 3e-4 trains, so the rate is the cause
        ("Adam", 3.0, 14.0, {"input_rms": 1.0}, "lr_too_high"),
        # pixel values at 0-255: the data's scale is the cause, whatever rate it would take
        ("SGD", 1e-2, 3.6e4, {"input_rms": 120.0}, "lr_too_high"),
    ],
)
def test_a_first_update_too_large_for_any_trainable_rate_names_the_initialisation(
    optimizer, lr, first_update, info, expected
):
    """A first update so large that the rate it asks for (to move the weights 1 % a step) is below 1e-6 says the
    gradients are out of scale from the start: the fix is the initialisation, not 'learning_rate=1e-09'."""
    loss = np.array([0.9, np.nan])
    trace = Trace(
        loss=loss,
        grad_norm=np.array([2.6e8, np.nan]),
        update_ratio=np.array([first_update, np.nan]),
        lr=np.full(2, lr),
        steps_planned=300,
        info={"optimizer": optimizer, "optimizer_config": {"learning_rate": lr}, **info},
    )
    f = _diag(trace)[0]
    assert f.check == "nonfinite" and f.evidence["cause_key"] == expected, f.cause
    texts = [x["text"] for x in f.evidence["fixes"]]
    if expected == "gradients_out_of_scale":
        assert f"the first update moved the weights {first_update:.3g} (step 0) times their norm" in f.cause
        assert "would have to fall to 1e-09" in f.cause and "gradient norm 2.6e+08 (step 0)" in f.cause
        assert ("root mean square 1" in f.cause) == ("input_rms" in info)
        assert texts[0].startswith("initialise the layers so their outputs keep the scale of their inputs")
        assert not any(t.startswith("learning_rate=") for t in texts)  # no rate that means nothing
    else:
        assert any(t.startswith(("learning_rate=", "a learning rate")) for t in texts)


def test_a_finite_blow_up_from_such_a_first_update_names_the_initialisation_too():
    # the same first update, the loss and gradients growing but finite: the early blow-up's rule says the same
    n = 40
    trace = Trace(
        loss=np.r_[0.9, np.geomspace(50, 5e4, n - 1)],
        grad_norm=np.r_[2.6e8, np.geomspace(3e9, 1e12, n - 1)],
        update_ratio=np.r_[3.6e4, np.full(n - 1, 0.5)],
        lr=np.full(n, 1e-2),
        steps_planned=300,
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 1e-2}, "input_rms": 1.0},
    )
    f = rank_findings(run_checks(trace), trace)[0]
    assert f.evidence["cause_key"] == "gradients_out_of_scale", f.cause
    assert f.cause.startswith("the loss jumped to 50 (step 1) from 0.9 (step 0), within the first 15 steps: the first")
    assert f.fix.startswith("initialise the layers")


def test_variables_whose_gradients_vanished_through_the_layers_are_not_a_rate_of_zero():
    """The first layers' kernels never changed, with gradients 1e-12 of the last layer's: vanishing gradients.
    The same frozen kernels with gradients like the others' are what the rule said before (a rate of zero, or
    an optimizer that skips them)."""
    n = 60
    names = ("net/first/kernel", "net/first/bias", "net/last/kernel", "net/last/bias")
    scale = np.array([1e-13, 1e-14, 0.15, 0.05])
    updates = np.tile([0.0, 1e-2, 1e-3, 1e-2], (n, 1))
    for grads, key in ((scale, "vanished_gradients"), (np.array([0.1, 0.01, 0.15, 0.05]), "no_update")):
        trace = Trace(
            loss=np.geomspace(0.7, 0.3, n),
            grad_norm=np.full(n, 0.16),
            var_names=names,
            var_grad_norms=np.tile(grads, (n, 1)),
            var_update_ratio=updates,
            lr=np.full(n, 0.01),
            info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 0.01}},
        )
        (f,) = [f for f in _diag(trace) if f.kind == "no_update"]
        assert f.evidence["variables"] == ["net/first/kernel"] and f.evidence["cause_key"] == key, f.cause
        if key == "vanished_gradients":
            assert "net/first/kernel's gradient norm is 1e-13 (median of steps 0-59), 1.5e+12x below" in f.cause
            assert "net/last/kernel's 0.15 (median of steps 0-59)" in f.cause
        else:
            assert "a learning rate of zero" in f.cause


def test_variables_that_never_changed_in_a_model_that_hardly_moves_are_a_rate_too_low_not_a_rate_of_zero():
    """SGD at 1e-7: every update is about 2.5e-9 of the weights, so the kernels' add up to less than 1e-6 of their
    norm over the run.  Their finding names the rate too low, as the run's own does, not "a learning rate of
    zero ... or an optimizer that skips these variables"."""
    n = 300
    rng = np.random.default_rng(0)
    names = ("net/first/kernel", "net/first/bias", "net/last/kernel", "net/last/bias")
    trace = Trace(
        loss=0.72 * (1 + 0.01 * rng.normal(size=n)),
        grad_norm=np.full(n, 0.9),
        var_names=names,
        var_grad_norms=np.tile([0.5, 0.1, 0.7, 0.2], (n, 1)),
        var_update_ratio=np.tile([2.4e-9, 1e-4, 2.6e-9, 1e-4], (n, 1)),
        update_ratio=np.full(n, 2.5e-9),
        lr=np.full(n, 1e-7),
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 1e-7}},
    )
    (f,) = [f for f in _diag(trace) if f.kind == "no_update"]
    assert f.evidence["variables"] == ["net/first/kernel", "net/last/kernel"]
    assert f.evidence["cause_key"] == "updates_too_small", f.cause
    assert "the whole model hardly moves (median |dw|/|w| 2.5e-09 (median of steps 0-299) per step)" in f.cause
    assert "learning rate of zero" not in f.cause and f.evidence["fix_configs"] == [{"learning_rate_factor": 10.0}]


def test_a_loss_stuck_at_the_prior_because_the_first_layers_never_changed_is_not_blamed_on_the_labels():
    """A 12-layer sigmoid stack on labels it could learn: its first kernels never change (gradients 1e-8 there,
    0.2 at the last layer) and the loss sits flat at ln 2.  Both findings name the vanishing gradients; the
    collapsed loss was told "the labels carry no signal", with a smoke-test dataset as the fix."""
    n = 300
    rng = np.random.default_rng(0)
    names = ("net/first/kernel", "net/first/bias", "net/last/kernel", "net/last/bias")
    trace = Trace(
        loss=np.log(2) * (1 + 0.004 * rng.normal(size=n)),
        grad_norm=np.full(n, 0.2),
        var_names=names,
        var_grad_norms=np.tile([2e-8, 3e-9, 0.2, 0.06], (n, 1)),
        var_update_ratio=np.tile([6e-12, 1e-2, 3e-2, 1e-2], (n, 1)),
        lr=np.full(n, 0.01),
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 0.01}},
    )
    findings = rank_findings(run_checks(trace), trace)
    assert {f.kind for f in findings} == {"collapsed", "no_update"}
    for f in findings:
        assert f.evidence["cause_key"] == "vanished_gradients", f.cause
        assert "net/first/kernel's gradient norm is 2e-08 (median of steps 0-299), 1e+07x below" in f.cause
    (collapsed,) = [f for f in findings if f.kind == "collapsed"]
    assert collapsed.cause.startswith("the loss sits at 0.692 (median of steps 250-299) from step 0 (initially 0.693")
    assert "labels" not in collapsed.cause + collapsed.fix


@pytest.mark.parametrize(
    ("info", "standardise"),
    [
        ({"target_rms": 2.1e5, "input_rms": 1.0}, ["standardise the targets"]),
        ({"target_rms": 0.7, "input_rms": 1.0}, []),  # measured near unit scale: not the data
        ({"target_rms": 2.1e5, "input_rms": 1.0, "targets_rescaled_by": "Normalization 'norm'"}, []),
    ],
)
def test_gradients_that_grow_with_targets_far_from_unit_scale_are_told_to_standardise_them(info, standardise):
    # regression on raw house prices with Adam: the loss falls from 4e10 while the gradient norm grows 200x, as
    # the outputs climb towards targets of 2e5 (tried as a new user would). The clip and the rate stay first
    # (their success is measured); standardising the targets comes after them, with the targets' scale in the cause
    rng = np.random.default_rng(0)
    n = 600
    loss = 4.4e10 * np.geomspace(1.0, 0.3, n) * np.exp(0.05 * rng.normal(size=n))
    g = 1e6 * np.geomspace(1.0, 300.0, n) * np.exp(0.1 * rng.normal(size=n))
    cfg = {"learning_rate": 1e-3, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False}
    trace = Trace(
        loss=loss, grad_norm=g, lr=np.full(n, 1e-3), info={"optimizer": "Adam", "optimizer_config": cfg, **info}
    )
    f = next(f for f in _diag(trace) if f.check == "grad_norm")
    assert f.evidence["cause_key"] == "gradient_explosion" and f.fix.startswith("clipnorm=")
    texts = [x["text"] for x in f.evidence["fixes"]]
    assert [t.split(",")[0] for t in texts if t.startswith("standardise")] == standardise
    assert texts[0].startswith("clipnorm=") and texts[1].startswith("learning_rate=")
    d = f.evidence["diagnosis"]
    # the gradients rose before the event: said as a rise, not as a fall by a factor below 1
    assert d["grad_collapse"] < 1 and "had risen from its early level" in f.cause and "x below" not in f.cause
    if standardise:
        assert "the targets' root mean square is 2.1e+05" in f.cause
    else:
        assert "unit scale" not in f.cause


@pytest.mark.parametrize(
    ("first_update", "scale_first", "dtype"),
    [(240.0, True, "float64"), (20.0, False, "float64"), (20.0, False, "float32")],
)
def test_targets_far_from_unit_scale_lead_the_fixes_when_no_rate_that_trains_would_tame_them(
    first_update, scale_first, dtype
):
    # SGD at 0.01 on targets of 2.5e4 (tried as a new user would): the first update moved the weights 240x their
    # norm, and the rate that would keep it below 0.01 of them is 1e-07, which stops the training with the
    # blow-up: standardising the targets leads, the rate follows. A first update of 20x asks 1e-06, the lowest
    # rate that trains: the measured rate stays first, the targets after it; also where the rate is float32's 0.01
    # (9.9999998e-07 after the cut, which had read "1e-06 is below any that trains (1e-06)")
    n = 8
    loss = np.concatenate([np.full(3, 6e8), 6e8 * np.geomspace(2.0, 1e6, 5)])
    g = np.concatenate([np.full(3, 9e4), np.geomspace(2e5, 1e10, 5)])
    ratio = np.concatenate([[first_update], np.full(n - 1, 3.0)])
    trace = Trace(
        loss=loss,
        grad_norm=g,
        lr=np.full(n, 0.01, dtype=dtype),
        update_ratio=ratio,
        info={
            "optimizer": "SGD",
            "optimizer_config": {"learning_rate": float(np.dtype(dtype).type(0.01))},
            "target_rms": 2.5e4,
            "input_rms": 1,
        },
    )
    trace.steps_planned = 300
    f = _diag(trace)[0]
    assert f.evidence["cause_key"] == "lr_too_high"
    texts = [x["text"] for x in f.evidence["fixes"] if not x.get("note")]
    rate = next(t for t in texts if t.startswith("learning_rate="))
    suggested = float(rate.split()[0].split("=")[1])
    assert (suggested < 1e-6) is scale_first
    assert texts[0].startswith("standardise the targets" if scale_first else "learning_rate=")
    assert any(t.startswith("standardise the targets") for t in texts)
    said = f"a learning rate low enough for these gradients ({suggested:.3g}) is below any that trains (1e-06)"
    assert (said in f.cause) is scale_first, f.cause


def test_a_validation_rise_whose_training_loss_rose_with_it_follows_the_training_event_found_later():
    # SGD at 2 (tried as a new user would): the loss diverged over 170 steps, the validation check found the rise
    # at step 64, the gradient-norm and loss checks only at 77 and 94 (a slow divergence passes their limits
    # late); the run had been headlined by the validation rise, whose own cause said training went wrong
    n = 200
    rng = np.random.default_rng(0)
    loss = np.concatenate([np.geomspace(0.7, 0.5, 30), 0.5 * np.geomspace(1, 1e12, n - 30)])
    loss *= np.exp(0.3 * rng.normal(size=n))
    g = np.concatenate([np.full(30, 0.5), 0.5 * np.geomspace(1, 1e7, n - 30)]) * np.exp(0.3 * rng.normal(size=n))
    steps = np.arange(0, n + 1, 16)
    trace = Trace(
        loss=loss,
        grad_norm=g,
        val_loss=np.interp(steps, np.arange(n), loss),
        val_steps=steps,
        update_ratio=np.full(n, 0.2),
    )
    ranked = rank_findings(run_checks(trace), trace)
    val = next(f for f in ranked if f.check == "val_loss")
    training = [f for f in ranked if f.check in ("grad_norm", "loss_spike")]
    assert val.evidence["cause_key"] == "training_loss_rise"
    assert training and val.step < min(f.step for f in training)  # the case: validation found it first
    assert ranked[0].check in ("grad_norm", "loss_spike"), [(f.check, f.step) for f in ranked]
    assert val.evidence["rank"] > 0 and val.evidence["consequence_of"] == f"{ranked[0].check}@{ranked[0].step}"


@pytest.mark.parametrize("dead_from", [1, 0], ids=["at_the_update", "before_it"])
def test_gradients_that_die_at_a_huge_first_update_are_a_collapse_at_that_update(dead_from):
    # Adam at 50 on a saturated start (JAX): the update at step 0 moved the weights 183x their norm, the loss fell
    # 8 % and the gradients were exactly zero from step 1 on.  No loss went up, so no blow-up rule saw it, and the
    # run was told "dead ReLUs or saturated outputs" with a fix of activations and initialisation.  Gradients
    # already zero before that update (dead_from=0) are not its doing.
    rng = np.random.default_rng(0)
    n = 100
    loss = np.concatenate([[8.73], 8.06 * np.exp(0.1 * rng.normal(size=n - 1))])
    g = np.concatenate([np.full(dead_from, 68.0), np.zeros(n - dead_from)])
    u = np.concatenate([[183.0], np.zeros(n - 1)])
    info = {"optimizer": "Adam", "optimizer_config": {"learning_rate": 50.0}}
    (f,) = _diag(Trace(loss=loss, grad_norm=g, update_ratio=u, info=info))
    assert f.check == "stuck" and f.evidence["early_update_step"] == 0
    if dead_from == 1:
        assert f.evidence["cause_key"] == "collapse_constant", f.cause
        assert f.cause.startswith("the update at step 0 moved the weights 183 (step 0) times their norm"), f.cause
        assert f.cause.count("183") == 1, f.cause  # quoted once, not again as "the largest update before it"
        assert f.evidence["fix_configs"][0] == {"learning_rate_factor": 1e-5}, f.fix
    else:
        assert "a collapse at that update" not in f.cause, f.cause


@pytest.mark.parametrize(
    ("listed", "zero_weight", "says"),
    [
        (["aux/kernel", "aux/bias"], [], "feed only the output 'aux', which has no loss in compile()"),
        (["aux/kernel", "aux/bias"], ["aux"], "feed only the output 'aux', which has a loss weight of 0 in compile()"),
        (["aux/kernel"], [], None),  # aux/bias is not among them: the general cause
    ],
)
def test_variables_without_gradient_that_feed_only_an_output_without_loss_are_told_so(listed, zero_weight, says):
    rng = np.random.default_rng(0)
    n = 60
    vg = np.exp(0.2 * rng.normal(size=(n, 4)))
    vg[:, 2:] = 0.0
    names = ("dense/kernel", "dense/bias", "aux/kernel", "aux/bias")
    info = {"outputs_without_loss": {"outputs": ["aux"], "zero_weight": zero_weight, "variables": listed}}
    trace = Trace(
        loss=np.geomspace(1.0, 0.1, n), grad_norm=np.sqrt((vg**2).sum(1)), var_grad_norms=vg, var_names=names, info=info
    )
    (f,) = [f for f in _diag(trace) if f.check == "stuck"]
    assert f.kind == "no_gradient" and f.evidence["cause_key"] == "no_gradient"
    if says:
        assert f.cause.startswith("aux/kernel, aux/bias " + says + ": nothing trains them"), f.cause
        weight = " with a weight above 0" if zero_weight else ""
        assert f.fix.startswith(f"give 'aux' a loss{weight} in compile() if it is meant to train"), f.fix
    else:
        assert "not connected to the loss" in f.cause, f.cause


@pytest.mark.parametrize("named", [50, 80])
def test_the_one_batch_note_says_the_failure_names_its_samples_only_when_it_does(named):
    # a jump at step 50 after an ordinary update: its batch may have caused it.  When the finding names the batch
    # of a later step (an event that merged that jump with the blow-up it led to), the note still points the
    # batch replay at step 50 but does not say that the failure lists that step's samples
    from pytest_stability.diagnosis import Quotes, _one_batch_note

    rng = np.random.default_rng(0)
    loss = np.exp(0.05 * rng.normal(size=100))
    loss[50] = 30.0
    u = np.full(100, 1e-3)
    trace = Trace(loss=loss, grad_norm=np.ones(100), update_ratio=u)
    q = Quotes(trace)
    note = _one_batch_note(trace, q, 50, named=named)
    assert note is not None and note.note
    text = q.render(note.template)
    assert "--stability-replay-batch=50 tells a bad sample from a bad update" in text
    assert ("the failure names its samples" in text) is (named == 50), text


def test_inputs_far_from_unit_scale_because_of_a_few_samples_are_told_to_check_them():
    # the stuck run of the test above, with inputs whose root mean square of 9800 is one sample's (-9999 for a
    # missing value): that sample is named and checking it leads; standardising the inputs is not offered
    few = {"samples": [5], "values": [-9999.0], "count": 1, "rms_rest": 0.99, "n": 512}
    info = {"optimizer": "SGD", "optimizer_config": {"learning_rate": 2.0}, "input_rms": 9800.0, "input_outliers": few}
    collapse, dead = _collapsed_and_dead(info)
    for f in (collapse, dead):
        assert f.evidence["cause_key"] == "inputs_out_of_scale", f.cause
        assert f.cause.startswith(
            "the inputs' root mean square is 9.8e+03, made by one sample: sample 5 (-9999); the others' is 0.99, "
            "and the training stopped on them: "
        ), f.cause
        texts = [x["text"] for x in f.evidence["fixes"]]
        assert texts[0].startswith("check the inputs of sample 5 (-9999): far outside the others' range"), texts
        assert sum(t.startswith("check the inputs") for t in texts) == 1, texts
        assert not any(t.startswith("standardise the inputs") for t in texts), texts


def test_a_collapse_at_an_early_update_under_a_schedule_that_rose_is_diagnosed():
    # the rate rose 5000x at step 2 and that step's update killed the network: the fix is the schedule's, and the
    # cause still names the update (it raised KeyError: the update basis it compared with was never measured)
    rng = np.random.default_rng(0)
    n = 100
    loss = np.concatenate([[8.73, 8.7, 8.7], 8.06 * np.exp(0.1 * rng.normal(size=n - 3))])
    g = np.concatenate([[68.0, 60.0, 60.0], np.zeros(n - 3)])
    u = np.concatenate([[0.01, 0.01, 183.0], np.zeros(n - 3)])
    lr = np.concatenate([[0.01, 0.01], np.full(n - 2, 50.0)])
    info = {"optimizer": "Adam", "optimizer_config": {"learning_rate": 50.0}}
    (f,) = _diag(Trace(loss=loss, grad_norm=g, update_ratio=u, lr=lr, info=info))
    assert f.evidence["cause_key"] == "collapse_constant", f.cause
    assert f.cause.startswith("the update at step 2 moved the weights 183 (step 2) times their norm"), f.cause
    assert f.fix.startswith("the learning-rate schedule x "), f.fix


@pytest.mark.parametrize(
    "momentum, batch, momentum_fix, batch_fix",
    [
        ([0.99, 0.99], 8, "(now 0.99)", ", now 8)"),
        ([0.9, 0.99], None, "(now 0.99)", "(>= 32)"),  # the largest momentum; a batch size not known
        ([0.9], 64, None, None),  # both already where the fixes would put them: a lower rate is the fix
        ([0.5], 16, None, ", now 16)"),
    ],
)
def test_batchnorm_fixes_change_only_what_is_not_already_so(momentum, batch, momentum_fix, batch_fix):
    # a ResNet at batch 32 with momentum 0.9 was told "momentum=0.9 (now 0.9) ... a larger batch size (>= 32)"
    trace = _bn_val_trace_with_training_rise(len(momentum), 0.9)
    trace.info["batchnorm_momentum"] = momentum
    if batch is not None:
        trace.info["batch_size"] = batch
    f = next(f for f in _diag(trace) if f.check == "val_loss")
    assert f.evidence["cause_key"] == "batchnorm_mismatch"
    fixes = [fix["text"] for fix in f.evidence["fixes"]]
    assert (
        ("BatchNormalization(momentum=0.9) " + momentum_fix in fixes[0])
        if momentum_fix
        else not any("momentum=" in fix for fix in fixes)
    )
    assert (
        any(batch_fix in fix for fix in fixes if "batch size" in fix)
        if batch_fix
        else not any("batch size" in fix for fix in fixes)
    )
    assert fixes[-1].startswith("a lower learning rate, a tenth of this one")
    assert len(fixes) == 1 + bool(momentum_fix) + bool(batch_fix)


def test_a_blow_up_at_step_1_is_not_its_own_healthy_reference():
    # SGD at 0.5: the first update moves the weights 300x their norm, the gradient norm is 1e5x at step 1, NaN at
    # step 2.  The NaN's diagnosis took the median of steps 0-1 (their mean, raised by the explosion) for the
    # healthy reference, measured the rate on the explosion's own update (1e7) and blamed the initialisation
    # (gradients_out_of_scale, a rate of 5e-10), where the explosion's diagnosis said lr_too_high, 5e-06
    from pytest_stability.diagnosis import healthy_end

    trace = Trace(
        loss=np.array([1.0, 4.0, np.nan]),
        grad_norm=np.array([2.0, 2e5, np.nan]),
        update_ratio=np.array([300.0, 1e7, np.nan]),
        lr=np.full(3, 0.5),
        steps_planned=300,
        info={"optimizer": "SGD", "optimizer_config": {"learning_rate": 0.5}},
    )
    assert healthy_end(trace, 1) == healthy_end(trace, 2) == 1
    findings = {f.check: f for f in _diag(trace)}
    assert set(findings) == {"grad_norm", "nonfinite"}
    for f in findings.values():
        assert f.evidence["cause_key"] == "lr_too_high", (f.check, f.cause)
        assert f.evidence["quotes"]["update_ratio"]["steps"] == [0, 0]
        assert f.evidence["fix_configs"][0] == {"learning_rate_factor": 1e-5}
    # a healthy start is its own reference as before: steps within 10x of those before them
    calm = Trace(loss=np.array([1.0, 0.9, 1.1, 0.8, 0.7, 0.75]), grad_norm=np.array([1.0, 3.0, 2.0, 5.0, 4.0, 3.0]))
    assert healthy_end(calm, 6) == 6
