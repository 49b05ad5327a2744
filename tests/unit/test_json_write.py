"""Writing the JSON report: atomic, strict (no NaN tokens), and the default document yields to a user's hook."""

from __future__ import annotations

import json
import os

import pytest

from pytest_stability.report import json_report


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    json_report.write_atomic(target, '{"old": true}\n')

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        json_report.write_atomic(target, '{"new": true}\n')
    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_strict_encoding_of_nonfinite_and_numpy_values():
    np = pytest.importorskip("numpy")
    doc = {"a": float("nan"), "b": [float("inf"), -float("inf")], "c": np.float32(1.5), "d": np.int64(3), "e": (1, 2)}
    text = json_report.dumps(doc)
    assert json.loads(text, parse_constant=lambda t: pytest.fail(f"token {t}")) == {
        "a": "nan",
        "b": ["inf", "-inf"],
        "c": 1.5,
        "d": 3,
        "e": [1, 2],
    }
    with pytest.raises(TypeError, match=r"document\['x'\] is a object, which JSON cannot hold"):
        json_report.dumps({"x": object()})


def test_default_generate_json_is_trylast_so_a_user_implementation_wins():
    """Against a bare plugin manager: the default runs last, whatever the registration order."""
    import types

    import pluggy

    from pytest_stability import hookspecs
    from pytest_stability.integrations.session import StabilitySession

    config = types.SimpleNamespace(stash=pytest.Stash())
    session = StabilitySession(config)
    session.started, session.finished, session.exitstatus = 0.0, 1.0, 0

    class UserPlugin:
        @pluggy.HookimplMarker("pytest")
        def pytest_stability_generate_json(self, records):
            return {"user": len(records)}

    pm = pluggy.PluginManager("pytest")
    pm.add_hookspecs(hookspecs)
    user = UserPlugin()
    pm.register(user)
    pm.register(session)  # registered later: called first, were it not trylast
    assert pm.hook.pytest_stability_generate_json(config=config, records=[{}]) == {"user": 1}
    pm.unregister(user)
    default = pm.hook.pytest_stability_generate_json(config=config, records=[])
    assert (default["schema_version"], default["tests"], default["exitstatus"], default["complete"]) == (1, [], 0, True)
