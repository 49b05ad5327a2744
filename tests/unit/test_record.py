"""The per-test record: its constructors, and its builtins form at the xdist / JSON boundary."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pytest_stability.record import (
    CRASHED_WORKER,
    INTERRUPTED,
    NO_TRAIN,
    RECORD_KEYS,
    SETUP_ERROR,
    BaselineComparison,
    CallRecord,
    StabilityRecord,
)

CALL_STABLE = CallRecord("stable")
CALL_UNSTABLE = CallRecord("unstable")


def test_trained_verdicts():
    assert StabilityRecord.trained("t", settings={}, calls=[CALL_STABLE]).verdict == "stable"
    assert StabilityRecord.trained("t", settings={}, calls=[CALL_STABLE, CALL_UNSTABLE]).verdict == "unstable"
    never = StabilityRecord.trained("t", settings={"steps": 3}, calls=[])
    assert (never.verdict, never.error, never.settings) == ("error", NO_TRAIN, {"steps": 3})
    rejected = StabilityRecord.trained("t", settings={}, calls=[CALL_STABLE], error="bad data")
    assert (rejected.verdict, rejected.error) == ("error", "bad data")


def test_other_constructors():
    assert StabilityRecord.errored("t", SETUP_ERROR, outcome="error").to_dict() == {
        "nodeid": "t",
        "verdict": "error",
        "outcome": "error",
        "error": SETUP_ERROR,
        "skip_reason": None,
        "settings": {},
        "calls": [],
        "worker": None,
    }
    skipped = StabilityRecord.skipped("t", "Skipped: not today")
    assert (skipped.verdict, skipped.outcome, skipped.skip_reason) == ("skipped", "skipped", "Skipped: not today")
    crashed = StabilityRecord.crashed("t")
    assert (crashed.verdict, crashed.outcome, crashed.error) == ("error", "error", CRASHED_WORKER)
    bare = StabilityRecord.interrupted("t")
    assert (bare.verdict, bare.outcome, bare.error) == ("error", "interrupted", INTERRUPTED)
    partial = StabilityRecord.trained("t", settings={}, calls=[CALL_STABLE])
    kept = StabilityRecord.interrupted("t", partial)
    assert (kept.verdict, kept.outcome, kept.calls) == ("stable", "interrupted", (CALL_STABLE,))


def test_builtins_round_trip_with_every_key():
    record = StabilityRecord.trained("t::x", settings={"checks": ["loss_spike"]}, calls=[CALL_STABLE]).with_(
        outcome="passed", worker="gw0"
    )
    data = record.to_dict()
    assert tuple(data) == RECORD_KEYS
    assert json.loads(json.dumps(data)) == data  # builtins only: xdist's execnet can send it
    assert StabilityRecord.from_dict(data) == record
    assert StabilityRecord.from_dict(dict(data, unknown_future_key=1)) == record


def test_frozen_and_validated():
    record = StabilityRecord.skipped("t", "why")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.verdict = "stable"  # type: ignore[misc]
    with pytest.raises(ValueError, match="verdict must be one of"):
        StabilityRecord("t", "fine")
    with pytest.raises(ValueError, match="outcome must be None or one of"):
        StabilityRecord("t", "stable", outcome="ok")


def test_regressed_and_failed_otherwise():
    failed = BaselineComparison("regressed", failed=True)
    regressed = StabilityRecord.trained("t", settings={}, calls=[dataclasses.replace(CALL_STABLE, baseline=failed)])
    assert regressed.regressed
    assert not regressed.with_(outcome="failed").failed_otherwise  # a regression is not "failed otherwise"
    stable = StabilityRecord.trained("t", settings={}, calls=[CALL_STABLE])
    assert not stable.regressed and not stable.with_(outcome="passed").failed_otherwise
    assert stable.with_(outcome="failed").failed_otherwise and stable.with_(outcome="error").failed_otherwise
    assert not StabilityRecord.trained("t", settings={}, calls=[CALL_UNSTABLE]).with_(outcome="failed").failed_otherwise
