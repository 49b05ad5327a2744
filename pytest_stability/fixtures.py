"""The ``stability`` fixture: train a model, run the checks, fail with an explanation.

Thin on purpose: settings come from :mod:`~pytest_stability.marker`, training
from :mod:`~pytest_stability.training.engine` (imported lazily: only tests that
train pay for TensorFlow), verdicts from :mod:`~pytest_stability.checks` and
:mod:`~pytest_stability.diagnosis`.  After the test, a builtins-only record of
what happened (a :class:`~pytest_stability.record.StabilityRecord`) goes into
``item.stash[RECORD_KEY]`` for the session (terminal report, JSON, baselines),
also when the test crashed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import warnings
import weakref
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from .errors import StabilityError, StabilityUsageError
from .framework_types import Data, Model
from .integrations.session import RECORD_KEY, SESSION_KEY
from .marker import MARKER_NAME, spec_for_node
from .options import OPTIONS_BY_NAME, OptionValueError, RunSpec, steps_above_ceiling
from .record import StabilityRecord

if TYPE_CHECKING:
    from pathlib import Path

    from .checks.base import CheckResult
    from .integrations.progress import Progress
    from .report.runs import RunReport, StabilityReport
    from .training.engine import RunResult, StoppedRun
    from .training.isolation import ProcessState  # noqa: F401 (SETUP_STATE_KEY's type, a string)


#: the models stability tests trained in this session (``id(model)``: a weak reference to it, the test's node id
#: and the steps it ran): a model that a later test trains again starts where the earlier one left it
TRAINED_KEY = pytest.StashKey[dict[int, tuple["weakref.ref[Model]", str, int]]]()


class Stability:
    """What the ``stability`` fixture gives a test.

    Example::

        @pytest.mark.stable_training(steps=300)
        def test_classifier(stability):
            model = build_classifier()  # compiled keras.Model
            stability.fit(model, x, y, validation_data=(x_val, y_val), batch_size=32)
    """

    def __init__(
        self,
        nodeid: str,
        spec: RunSpec,
        config: pytest.Config,
        cli_values: dict[str, Any],
        *,
        node_id_options: tuple[str, ...] = (),
    ) -> None:
        self.nodeid = nodeid
        self.spec = spec
        self._config = config
        self._cli_values = cli_values
        # other plugins' options without which the replay command's node id would not be collected
        self._node_id_options = node_id_options
        #: every StabilityReport returned by train() in this test
        self.reports: list[StabilityReport] = []
        self.error: str | None = None

    # -- public API -----------------------------------------------------------

    def fit(
        self,
        model: Model | Callable[[], Model],
        x: Data = None,
        y: Data = None,
        *,
        steps: int | None = None,
        seed: int | None = None,
        check: bool = True,
        **fit_kwargs: Any,
    ) -> StabilityReport:
        """Train ``model`` with its own ``model.fit`` for ``steps`` optimizer steps and check its stability.

        Args:
            model: a compiled ``keras.Model`` (its own ``train_step`` too), or a
                zero-argument function that builds and compiles one (called once
                per seed, after seeding: the way to vary the initialisation with
                ``seeds=K``).
            x, y: whatever ``model.fit`` takes: arrays, lists / tuples / dicts of
                them, a ``tf.data.Dataset``, a ``keras.utils.PyDataset``, a
                generator, a torch ``DataLoader`` on the torch backend.
            steps, seed: override the marker / command line / ini.
            check: when False, return the report without raising.
            **fit_kwargs: passed to ``model.fit`` as they are (``batch_size``,
                ``callbacks``, ``class_weight``, ``sample_weight``,
                ``validation_data``, ``validation_split``, ``shuffle``,
                ``epochs``, ``steps_per_epoch``...).  ``batch_size`` defaults to
                the marker's for array inputs.

        Returns:
            A :class:`~pytest_stability.report.StabilityReport`.

        Raises:
            StabilityError: (an ``AssertionError``) when a check fails and
                ``check`` is true; its message is the explanation.
        """
        __tracebackhide__ = True
        return self._call("fit", model, x, y, steps=steps, seed=seed, check=check, fit_kwargs=fit_kwargs)

    def _call(
        self,
        entry: str,
        model: Model | Callable[[], Model],
        x: Data,
        y: Data,
        *,
        steps: int | None,
        seed: int | None,
        check: bool,
        fit_kwargs: dict[str, Any],
    ) -> StabilityReport:
        __tracebackhide__ = True
        failure = None
        try:
            if not isinstance(check, bool):  # check="no" would check: a truthy string
                raise StabilityUsageError(f"check must be True or False, received {check!r} ({type(check).__name__})")
            report = self._train(model, x, y, steps=steps, seed=seed, fit_kwargs=fit_kwargs)
        except StabilityUsageError as exc:
            self.error = str(exc)
            failure = f"stability.{entry}(): {exc}"
        if failure is not None:  # outside the except block: the message is printed once, unchained
            pytest.fail(failure, pytrace=False)
        self.reports.append(report)
        self._config.hook.pytest_stability_run_finished(nodeid=self.nodeid, report=report)
        if check and not report.ok:
            raise StabilityError(report.explain(), report)
        return report

    def train(
        self,
        model: Model | Callable[[], Model],
        x: Data = None,
        y: Data = None,
        *,
        validation_data: Data = None,
        batch_size: int | None = None,
        steps: int | None = None,
        seed: int | None = None,
        check: bool = True,
        sample_weight: Data = None,
        **fit_kwargs: Any,
    ) -> StabilityReport:
        """The same as :meth:`fit` (kept for the keywords it always had)."""
        __tracebackhide__ = True
        for name, value in (
            ("validation_data", validation_data),
            ("batch_size", batch_size),
            ("sample_weight", sample_weight),
        ):
            if value is not None:
                fit_kwargs[name] = value
        return self._call("train", model, x, y, steps=steps, seed=seed, check=check, fit_kwargs=fit_kwargs)

    # -- internals ------------------------------------------------------------

    def _override(self, name: str, value: Any) -> Any:
        if value is None:
            return self.spec.values[name]
        try:
            return OPTIONS_BY_NAME[name].parse(value)
        except OptionValueError as exc:
            raise StabilityUsageError(f"{name} must be {exc}") from None

    def seeds_for(self, base_seed: int) -> list[int]:
        replay = self._config.getoption("stability_replay", None)
        if replay is not None:
            return [int(replay)]
        return [base_seed + i for i in range(self.spec.seeds)]

    def _train(
        self,
        model: Model | Callable[[], Model],
        x: Data,
        y: Data,
        *,
        steps: int | None,
        seed: int | None,
        fit_kwargs: dict[str, Any],
    ) -> StabilityReport:
        from . import pipeline
        from .checks import Thresholds
        from .report import RunReport, StabilityReport

        steps = self._override("steps", steps)
        above = steps_above_ceiling({"steps": steps, "max_steps": self.spec.max_steps})
        if above is not None:  # the same rule and words as for the marker's and the command line's steps
            raise StabilityUsageError(above)
        if "batch_size" in fit_kwargs and fit_kwargs["batch_size"] is not None:
            fit_kwargs["batch_size"] = self._override("batch_size", fit_kwargs["batch_size"])
        base_seed = self._override("seed", seed)
        spec = self.spec
        thresholds = Thresholds.from_mapping(spec.values)
        runs: list[RunReport] = []
        history = None
        for s in self.seeds_for(base_seed):
            # Each seed trains a distinct model (the user's instance for the
            # first seed, a fresh build or clone for the others).
            run_model = self._model_for_seed(model, s, first=(s == base_seed))
            earlier = self._trained_by_another_test(run_model)
            progress = self._progress(steps)
            try:
                outcome = pipeline.run(
                    run_model,
                    x,
                    y,
                    fit_kwargs=fit_kwargs,
                    steps=steps,
                    seed=s,
                    spec=spec,
                    thresholds=thresholds,
                    progress=progress.update,
                    on_raise=functools.partial(self._raised, seed=s, runs=tuple(runs)),
                    replay_batch=self._config.getoption("stability_replay_batch", None),
                )
            finally:
                progress.close()
                self._remember_trained(run_model, steps)
            result, results = outcome.result, outcome.results
            if earlier is not None:
                result.trace.info.setdefault("notes", []).append(earlier)
            if s == base_seed:  # Keras' History of the model given, which plain model.fit() returns
                history = getattr(run_model, "history", None)
            results = self._save_batches(results, result, x, y, fit_kwargs, s)
            runs.append(
                RunReport(
                    seed=s,
                    trace=result.trace,
                    results=results,
                    device=result.device,
                    wall_time=result.wall_time,
                    replay=self.replay_command(s),
                    data_kind=result.data_kind,
                    final_metrics=result.final_metrics,
                )
            )
        return StabilityReport(self.nodeid, runs, history=history)

    def _save_batches(
        self, results: list[CheckResult], result: RunResult, x: Data, y: Data, fit_kwargs: dict[str, Any], seed: int
    ) -> list[CheckResult]:
        """Save the batch of each finding that names one with its samples (``evidence["batch"]["indices"]``)
        as an ``.npz`` in the batches directory (:attr:`~.options.RunFiles.batches_dir`); its path goes into
        ``evidence["batch"]["file"]``.  Never fails the test: a batch that cannot be written says why."""
        session = self._config.stash.get(SESSION_KEY, None)
        directory = session.files.batches_dir if session is not None else None
        if directory is None or result.data_kind != "arrays":
            return results
        import dataclasses

        from .report.plots import plot_filename
        from .training import engine
        from .training.batches import batch_arrays

        keras = engine.import_keras()
        out = []
        for r in results:
            findings = list(r.findings)
            for i, f in enumerate(findings):
                where = f.evidence.get("batch")
                if not where or "indices" not in where:
                    continue
                stem = plot_filename(self.nodeid, set())[: -len(".png")]
                path = directory / f"{stem}-seed{seed}-step{where['step']}.npz"
                try:
                    arrays = batch_arrays(keras, x, y, fit_kwargs.get("sample_weight"), where["indices"])
                    directory.mkdir(parents=True, exist_ok=True)
                    _write_npz(path, arrays, where, loss=float(result.trace.loss[where["step"]]), seed=seed)
                    saved = {**where, "file": str(path)}
                except Exception as exc:
                    saved = {**where, "not_saved": f"{type(exc).__name__}: {exc}"}
                findings[i] = dataclasses.replace(f, evidence={**f.evidence, "batch": saved})
            out.append(type(r)(r.name, r.status, tuple(findings), r.detail, r.stats) if findings else r)
        return out

    def _raised(
        self,
        exc: BaseException,
        where: str,
        stopped: StoppedRun | None = None,
        *,
        seed: int | None = None,
        runs: tuple[RunReport, ...] = (),
    ) -> None:
        """The user's own exception from inside ``fit``, or one that stopped it from outside (Ctrl-C,
        pytest-timeout): it ends the test unchanged; the report says so, and shows the steps recorded before it
        (``stopped``: the curves of how far training got, which no check judged) after the call's runs of
        earlier seeds (``runs``).  A skip is a skip, not an error."""
        if isinstance(exc, pytest.skip.Exception):
            return
        message = _first_line(exc)  # (Ctrl-C's KeyboardInterrupt has none)
        self.error = f"training raised {type(exc).__name__}{': ' + message if message else ''} ({where})"
        if stopped is None or seed is None:
            return
        from .report import RunReport, StabilityReport

        run = RunReport(
            seed=seed,
            trace=stopped.trace,
            results=[],
            device=stopped.device,
            wall_time=stopped.wall_time,
            replay=self.replay_command(seed),
            stopped=self.error,
        )
        report = StabilityReport(self.nodeid, [*runs, run])
        self.reports.append(report)
        try:
            self._config.hook.pytest_stability_run_stopped(nodeid=self.nodeid, report=report, error=self.error)
        except Exception as hook_exc:  # noqa: BLE001 - the exception that stopped training must reach the test
            from .errors import StabilityWarning

            warnings.warn(
                StabilityWarning(
                    f"pytest-stability: a pytest_stability_run_stopped implementation raised "
                    f"{type(hook_exc).__name__}: {hook_exc} (for {self.nodeid}: {self.error})"
                ),
                stacklevel=2,
            )

    def _progress(self, steps: int) -> Progress:
        """The progress line of a long run (steps done, steps/s, ETA; see
        :mod:`pytest_stability.integrations.progress`)."""
        from .integrations.progress import Progress

        return Progress(self._config, self.nodeid, steps)

    def _trained_by_another_test(self, model: Model) -> str | None:
        """A note when an earlier stability test of this session trained ``model`` (a model shared through a
        module- or session-scoped fixture, or kept at module level): this run starts where that one ended, so
        it depends on which tests ran before it, and its replay command, which runs this test alone, trains
        another model."""
        entry = self._config.stash.get(TRAINED_KEY, {}).get(id(model))
        if entry is None or entry[0]() is not model or entry[1] == self.nodeid:
            return None
        return (
            f"this model was trained by an earlier stability test, {entry[1]} ({entry[2]} steps): this run starts "
            "where that one ended, so its result depends on which tests ran before it (-k, --lf, pytest-xdist, "
            "pytest-randomly) and its replay command, run alone, trains another model; build the model in the test "
            "or in a function-scoped fixture, or pass stability.fit a function that builds it"
        )

    def _remember_trained(self, model: Model, steps: int) -> None:
        trained = self._config.stash.setdefault(TRAINED_KEY, {})
        for key in [k for k, (ref, _, _) in trained.items() if ref() is None]:  # models gone since
            del trained[key]
        with contextlib.suppress(TypeError):  # an object that takes no weak reference: not remembered
            trained[id(model)] = (weakref.ref(model), self.nodeid, steps)

    def _model_for_seed(self, model: Model | Callable[[], Model], seed: int, first: bool) -> Model:
        """The model to train under ``seed``: a fresh build, the user's instance, or a clone."""
        from .training import engine

        keras = engine.import_keras()
        if not isinstance(model, keras.Model) and callable(model):
            engine.seed_everything(seed)
            built = model()
            if not isinstance(built, keras.Model):
                raise StabilityUsageError(
                    f"the model function {getattr(model, '__name__', model)!r} must return a compiled "
                    f"keras.Model; it returned {type(built).__name__}"
                )
            return built
        if first:
            return model
        engine.seed_everything(seed)
        return _clone_compiled(keras, model)

    def replay_command(self, seed: int) -> str:
        """The command that re-runs this test with exactly this seed's run."""
        node = node_id_from_invocation_dir(self.nodeid, self._config)
        parts = ["pytest", node, f"--stability-replay={seed}", *self._node_id_options]
        for name, value in sorted(self._cli_values.items()):
            if name in ("seed", "seeds") or name in self.spec.from_marker:
                continue
            opt = OPTIONS_BY_NAME[name]
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            parts.append(f"{opt.cli}={text}")
        return " ".join(shlex.quote(p) for p in parts)

    def record(self) -> StabilityRecord:
        """This test's stability runs so far, as the record the session collects."""
        return StabilityRecord.trained(
            self.nodeid,
            settings=_builtins_spec(self.spec),
            calls=[r.to_record() for r in self.reports],
            error=self.error,
        )


def node_id_from_invocation_dir(nodeid: str, config: pytest.Config) -> str:
    """``nodeid`` with its file as a path from the directory pytest was run in.  pytest's node ids are relative to
    the rootdir (where ``pytest.ini`` or ``pyproject.toml`` is), which a run from a subdirectory
    (``cd tests && pytest``) or with ``--rootdir`` is not: ``pytest tests/test_a.py::test_a`` typed there finds
    no file.  (pytest's own ``Config.cwd_relative_nodeid`` does this, but its argument changed type in pytest 9.)"""
    try:
        here, root = Path(config.invocation_params.dir), Path(config.rootpath)
    except AttributeError:  # pragma: no cover - a config without them
        return nodeid
    if here == root:
        return nodeid
    path, sep, rest = nodeid.partition("::")
    try:
        relative = os.path.relpath(root / path, here)
    except ValueError:  # another drive (Windows): the node id is all there is
        return nodeid
    return Path(relative).as_posix() + sep + rest


def _node_id_options(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Other plugins' command-line options that this test's node id exists under: pytest-repeat's
    ``--count=5`` makes ``test_a[2-5]``, which ``pytest test.py::test_a[2-5]`` alone does not find (a
    ``@pytest.mark.repeat(5)`` count is in the source, and needs nothing)."""
    callspec = getattr(request.node, "callspec", None)  # the parametrization pytest-repeat adds
    if callspec is None or "__pytest_repeat_step_number" not in callspec.params:
        return ()
    if request.node.get_closest_marker("repeat"):
        return ()
    count = getattr(request.config.option, "count", None)
    return (f"--count={count}",) if isinstance(count, int) and count > 1 else ()


def _write_npz(path: Path, arrays: dict[str, Any], where: dict[str, Any], *, loss: float, seed: int) -> None:
    """The batch's arrays, its ``indices``, ``step``, ``epoch``/``batch`` when known, the ``loss`` recorded at
    the step and the ``seed``; written atomically (a temporary file renamed)."""
    import os
    import tempfile

    import numpy as np

    meta = {"indices": np.asarray(where["indices"], dtype=np.int64), "step": where["step"], "loss": loss, "seed": seed}
    meta.update({k: where[k] for k in ("epoch", "batch") if where.get(k) is not None})
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays, **meta)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _builtins_spec(spec: RunSpec) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.values.items()}


def _clone_compiled(keras: ModuleType, model: Model) -> Model:
    """A freshly initialised, identically compiled copy of ``model`` (for extra seeds)."""
    try:
        clone = keras.models.clone_model(model)
        try:
            clone.compile_from_config(model.get_compile_config())
        except Exception:
            raw = dict(model._compile_config.config)
            opt = model.optimizer
            raw["optimizer"] = type(opt).from_config(opt.get_config())
            clone.compile(**raw)
        if clone.optimizer is None:
            raise ValueError("the clone has no optimizer after compiling")
        return clone
    except Exception as exc:
        from .training.fitsetup import short_message

        # Keras' deserialization error is pages long (the whole config, twice); what went wrong is its last part
        text = str(exc)
        marker = "Error encountered during deserialization:"
        reason = short_message(Exception(text.rsplit(marker, 1)[-1] if marker in text else text), limit=300)
        raise StabilityUsageError(
            f"seeds > 1 trains a fresh copy of the model per seed, but {type(model).__name__} "
            f"{model.name!r} could not be cloned and recompiled ({type(exc).__name__}: {reason}). "
            "Pass a zero-argument function that builds and compiles the model instead: "
            "stability.fit(build_model, x, y, ...)"
        ) from None


def restart_keras_auto_names() -> None:
    """Restart Keras' automatic names (``sequential``, ``dense``, ``dense_1``, ...) for the test about to run.

    Keras numbers unnamed models and layers with a process-wide counter, so the
    variable names in findings ("largest in sequential_137/dense_4/kernel")
    would depend on how many models the process built before: on test order,
    and on which pytest-xdist worker ran the test, so a serial report and an
    ``-n 2`` report would differ.  Restarted before each stability test, they
    depend on the test alone.  Models built earlier keep their names and train
    as before; a layer built earlier (at import, in an earlier fixture) can now
    share its automatic name with one built in the test, which matters only if
    both go into one functional model (Keras wants unique names there).

    Only the name counter is reset.  ``keras.backend.clear_session()`` would
    reset it too, but it also resets the global dtype policy (a mixed-precision
    policy set at import would silently be dropped), and its garbage collection
    took ~0.3 s per call here; ``free_memory=False`` does not exist in Keras 3.0.
    """
    # Private, but there since Keras 3.0: naming.reset_uids() empties the
    # counter that keras.backend.get_uid() and automatic names draw from.  If a
    # later Keras moves it, training still works: say so once, do not fail.
    global _names_warned
    try:
        from .training.keras_internals import load

        load("naming").reset_uids()
    except (ImportError, AttributeError) as exc:
        if not _names_warned:
            _names_warned = True
            warnings.warn(
                pytest.PytestWarning(
                    f"pytest-stability could not restart Keras' automatic layer names ({exc}); variable names in "
                    "findings may depend on test order and on the pytest-xdist worker"
                ),
                stacklevel=2,
            )


_names_warned = False


#: what a stability test's setup seeded over (the process' state before), put back after its teardown
SETUP_STATE_KEY = pytest.StashKey["ProcessState"]()


class SeededFixtures:
    """Seeds a stability test's fixtures, not only its body.

    pytest sets up a module- or session-scoped fixture before any function-scoped one, and function-scoped
    fixtures in the order the test names them: a model built by ``@pytest.fixture(scope="module")``, or by a
    fixture named before ``stability`` (``def test_x(model, stability)``), was initialised before the
    `stability` fixture seeded, from whatever state Python's generator was in (Keras draws an unseeded
    initializer's seed from it), and the same test trained another model in each session: another verdict,
    and a replay command that did not replay.  The test's seed is now set, and Keras' automatic names
    restarted, right before pytest sets up the first of its fixtures (after every ``pytest_runtest_setup`` but
    pytest's own, which sets them up: after the skip markers, and after pytest-randomly's reseeding); the
    fixture seeds again for the body, as before, and leaves the names counting on (a layer a fixture built and
    one the body builds never share a name); what the seeding changed (the random states, Keras' seeds and
    names) is put back after the teardown."""

    def __init__(self, defaults: RunSpec) -> None:
        self._defaults = defaults  # the session's settings, under each test's marker
        self._pending: pytest.Item | None = None

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        stability = "stability" in getattr(item, "fixturenames", ()) and item.get_closest_marker(MARKER_NAME)
        self._pending = item if stability else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self) -> None:
        item, self._pending = self._pending, None
        if item is None:
            return
        from .training import engine
        from .training.isolation import ProcessState

        try:
            keras = engine.import_keras()
        except StabilityUsageError:
            return  # the fixture fails the test and says what to install
        item.stash[SETUP_STATE_KEY] = ProcessState.take(keras)
        engine.seed_everything(spec_for_node(item, self._defaults).seed)
        restart_keras_auto_names()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        self._pending = None
        try:
            return (yield)
        finally:
            kept = item.stash.get(SETUP_STATE_KEY, None)
            if kept is not None:
                del item.stash[SETUP_STATE_KEY]
                kept.restore_seeding()  # (a dtype policy a session fixture set stays set)


def make_fixture(
    request: pytest.FixtureRequest, spec_for: Callable[[Any], tuple[RunSpec, dict[str, Any]]]
) -> Iterator[Stability]:
    """Generator body of the ``stability`` fixture (registered in plugin.py).

    Seeds everything and restarts Keras' automatic names *before* the test body
    runs, so the model the test builds is initialised and named
    deterministically too.
    """
    from .training import engine

    spec, cli_values = spec_for(request.node)
    skip = None
    state = None
    message: str | None
    try:
        keras = engine.import_keras()  # first: it says what to install without Keras
        from .training.isolation import ProcessState

        # what seeding and the name restart change for the whole process, put back when the test ends
        state = ProcessState.take(keras)
        engine.seed_everything(spec.seed)
        if spec.device == "gpu" and engine.resolve_device("gpu")[0] is None:
            skip = f"stable_training(device='gpu'): the {engine.import_keras().backend.backend()} backend sees no GPU"
        if SETUP_STATE_KEY not in request.node.stash:  # restarted before the test's first fixture otherwise
            restart_keras_auto_names()
    except StabilityUsageError as exc:
        message = str(exc)
    else:
        message = None
    try:
        if message is not None:
            pytest.fail(message, pytrace=False)
        if skip is not None:
            pytest.skip(skip)
        fixture = Stability(
            request.node.nodeid, spec, request.config, cli_values, node_id_options=_node_id_options(request)
        )
        try:
            yield fixture
        finally:
            try:
                record = fixture.record()
            except Exception as exc:  # never lose the test's entry in the report
                record = StabilityRecord.errored(
                    fixture.nodeid, f"pytest-stability could not summarise this test: {type(exc).__name__}: {exc}"
                )
            request.node.stash[RECORD_KEY] = record
    finally:
        if state is not None:
            state.restore(keras)


__all__ = ["RECORD_KEY", "SeededFixtures", "Stability", "make_fixture", "restart_keras_auto_names"]
