"""Loading the plugin imports no TensorFlow or Keras (every pytest run pays for plugin import)."""


def test_a_pytest_run_without_stability_tests_imports_no_framework(pytester):
    pytester.makepyfile(
        "import sys\n\ndef test_x():\n    assert 'tensorflow' not in sys.modules\n"
        "    assert 'keras' not in sys.modules\n"
    )
    result = pytester.runpytest_subprocess("-p", "stability", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
