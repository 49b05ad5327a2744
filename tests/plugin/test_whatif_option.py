"""The ``whatif`` option end to end: the failure message, the JSON report, the marker keyword."""

from __future__ import annotations

NAN_DATA = """

def nan_batches():
    import tensorflow as tf

    x = X.copy()
    x[5, 0] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, Y)).batch(16)


@pytest.mark.stable_training(steps=40, whatif=False)
def test_nan_data_marker_off(stability):
    stability.train(build(), nan_batches())


@pytest.mark.stable_training(steps=40, whatif=True)
def test_nan_data(stability):
    stability.train(build(), nan_batches())
"""


def test_whatif_replays_the_suggested_fix_and_reports_the_outcome(pytester, scenario, gating):
    scenario("diverges", module="test_w", extra=NAN_DATA)
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-whatif=true", "--stability-report=r.json")
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    # SGD(10) blowing up at once: the primary finding's first fix (a far lower rate; no clip value can be derived
    # from one healthy step) is replayed from step 0
    result.stdout.fnmatch_lines(["*test_diverges*", "*  what-if: replayed steps 0-* with SGD(learning_rate x *"])
    # NaN in the data: the fix is in the data, there is nothing to replay
    assert "what-if: nothing to replay: the suggested fix is not an optimizer setting" in out
    # the marker keyword beats the command line: the run with whatif=False has no what-if line
    tests = gating.tests_by_id(gating.load_strict(pytester.path / "r.json"))
    off = tests["test_w.py::test_nan_data_marker_off"]
    assert off["findings"] and all("whatif" not in f["evidence"] for f in off["findings"])
    assert off["settings"]["whatif"] is False
    first = tests["test_w.py::test_diverges"]["findings"][0]
    note = first["evidence"]["whatif"]
    # at most two fixes are replayed, stopping at the first that works: here the first (seeded, deterministic)
    assert note["resolved"] is any(a["resolved"] for a in note["attempts"])
    assert (note["resolved"], len(note["attempts"])) == (True, 1)
    assert (note["attempts"][0]["resolved"], note["attempts"][0]["still_failing"]) == (True, [])
    assert note["attempts"][0]["fix"].keys() == {"learning_rate_factor"}
    assert note["attempts"][0]["start"] == 0 and note["text"].startswith("replayed steps 0-")
    assert tests["test_w.py::test_nan_data"]["findings"][0]["evidence"]["whatif"]["resolved"] is None


def test_whatif_is_off_by_default(pytester, scenario):
    scenario("diverges")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*fix to try:*"])
    assert "what-if" not in result.stdout.str()
