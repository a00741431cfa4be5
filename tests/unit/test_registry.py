"""The learner registry: dispatch on kind, lazy imports, clear configuration errors, checked restores."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from shared.learners import registry
from shared.learners.base import Learner, SnapshotError, Task
from shared.learners.registry import (
    LazyKind,
    LearnerConfigError,
    build_learner,
    known_kinds,
    register,
    restore_learner,
)
from shared.learners.river_learner import RiverLearner, build_river_learner, restore_river_learner
from shared.settings import ModelSettings, PreprocessingSettings

PREPROCESSING = PreprocessingSettings()


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    monkeypatch.setattr(registry, "BUILTIN_KINDS", dict(registry.BUILTIN_KINDS))
    yield


def _model(**fields: Any) -> ModelSettings:
    return ModelSettings(**{"name": "fraud", "estimator": "river.linear_model.LogisticRegression", **fields})


def test_builtin_kinds_are_known_before_their_modules_are_imported() -> None:
    assert {"river", "torch.linear", "torch.mlp", "torch.gru", "torch.cnn"} <= set(known_kinds())


def test_river_only_use_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from shared.learners.registry import build_learner\n"
        "from shared.settings import ModelSettings, PreprocessingSettings\n"
        "build_learner(ModelSettings(name='m', estimator='river.forest.ARFClassifier'), PreprocessingSettings(), 1)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_kind_river_builds_a_river_learner() -> None:
    learner = build_learner(_model(), PREPROCESSING, seed=3)
    assert isinstance(learner, RiverLearner)
    assert (learner.kind, learner.task) == ("river", Task.BINARY)


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"kind": "sklearn"}, r"model 'fraud': field 'kind' is 'sklearn'.*known kinds: river"),
        ({"estimator": None}, r"model 'fraud': field 'estimator' is required"),
        (
            {"estimator": "river.linear_model.NoSuchModel"},
            r"model 'fraud': estimator 'river.linear_model.NoSuchModel' "
            r"does not import",
        ),
        ({"estimator": "river.nosuchmodule.Model"}, r"model 'fraud': estimator 'river.nosuchmodule.Model' does not"),
        ({"estimator": "LogisticRegression"}, r"model 'fraud': estimator 'LogisticRegression' must be an import path"),
        ({"estimator": "river.stats.Mean"}, r"model 'fraud': estimator 'river.stats.Mean' is not a River estimator"),
        (
            {"params": {"learning_rate": 0.1}},
            r"model 'fraud': params: river.linear_model.LogisticRegression has no parameter "
            r"'learning_rate'; it accepts .*l2",
        ),
        (
            {"estimator": "river.forest.ARFClassifier", "params": {"n_models": "many"}},
            r"model 'fraud': params rejected by river.forest.ARFClassifier",
        ),
        (
            {"params": {"optimizer": {"class": "river.optim.NoSuchOptimizer"}}},
            r"model 'fraud': params.optimizer.class 'river.optim.NoSuchOptimizer' does not import",
        ),
    ],
)
def test_configuration_errors_name_the_model_and_the_field(fields: dict[str, object], pattern: str) -> None:
    with pytest.raises(LearnerConfigError, match=pattern):
        build_learner(_model(**fields), PREPROCESSING, seed=3)


def test_a_registered_kind_is_built_and_restored() -> None:
    def factory(model: ModelSettings, preprocessing: PreprocessingSettings, seed: int) -> Learner:
        learner = build_river_learner(model.model_copy(update={"kind": "river"}), preprocessing, seed)
        learner.kind = "custom"
        return learner

    def restore(data: bytes) -> Learner:
        learner = restore_river_learner(data)
        learner.kind = "custom"
        return learner

    register("custom", factory, restore)
    assert "custom" in known_kinds()
    learner = build_learner(_model(kind="custom"), PREPROCESSING, seed=3)
    assert learner.kind == "custom"
    assert restore_learner("custom", learner.snapshot()).kind == "custom"


def test_registering_a_kind_twice_with_other_functions_is_an_error() -> None:
    register("river", build_river_learner, restore_river_learner)
    with pytest.raises(ValueError, match="already registered"):
        register("river", build_river_learner, RiverLearner.restore)


def test_factory_errors_are_reported_with_the_model_name() -> None:
    def failing(model: ModelSettings, preprocessing: PreprocessingSettings, seed: int) -> Learner:
        raise ValueError("hidden_size must be positive")

    register("broken", failing, restore_river_learner)
    with pytest.raises(LearnerConfigError, match=r"model 'fraud' \(kind 'broken'\): hidden_size must be positive"):
        build_learner(_model(kind="broken"), PREPROCESSING, seed=3)


def test_a_factory_that_builds_another_kind_is_an_error() -> None:
    register("liar", build_river_learner, restore_river_learner)
    with pytest.raises(LearnerConfigError, match="built a learner of kind 'river'"):
        build_learner(_model(kind="liar"), PREPROCESSING, seed=3)


def test_lazy_module_may_expose_factory_and_restorer(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_torch_models")

    def build_fake(model: ModelSettings, preprocessing: PreprocessingSettings, seed: int) -> Learner:
        learner = build_river_learner(model.model_copy(update={"kind": "river"}), preprocessing, seed)
        learner.kind = "fake.kind"
        return learner

    module.build_fake = build_fake  # type: ignore[attr-defined]
    module.restore_fake = restore_river_learner  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_torch_models", module)
    monkeypatch.setitem(
        registry.BUILTIN_KINDS, "fake.kind", LazyKind("fake_torch_models", "build_fake", "restore_fake")
    )
    assert build_learner(_model(kind="fake.kind"), PREPROCESSING, seed=3).kind == "fake.kind"


def test_lazy_module_that_provides_nothing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "empty_models", types.ModuleType("empty_models"))
    monkeypatch.setitem(registry.BUILTIN_KINDS, "empty.kind", LazyKind("empty_models", "build", "restore"))
    with pytest.raises(
        LearnerConfigError,
        match=r"model 'fraud': kind 'empty.kind' is unavailable: empty_models "
        r"neither registers",
    ):
        build_learner(_model(kind="empty.kind"), PREPROCESSING, seed=3)
    with pytest.raises(SnapshotError, match=r"empty\.kind"):
        restore_learner("empty.kind", b"")


def test_missing_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BUILTIN_KINDS, "gone.kind", LazyKind("no_such_module_here", "build", "restore"))
    with pytest.raises(LearnerConfigError, match=r"model 'fraud': kind 'gone.kind' is unavailable.*no_such_module"):
        build_learner(_model(kind="gone.kind"), PREPROCESSING, seed=3)


def test_restoring_an_unknown_kind_is_refused() -> None:
    with pytest.raises(SnapshotError, match="unknown learner kind 'nope'"):
        restore_learner("nope", b"data")


def test_restoring_a_snapshot_as_another_kind_is_refused() -> None:
    register("other", build_river_learner, restore_river_learner)
    data = build_learner(_model(), PREPROCESSING, seed=3).snapshot()
    with pytest.raises(SnapshotError, match="kind 'river', expected 'other'"):
        restore_learner("other", data)


def test_any_restorer_failure_becomes_a_snapshot_error() -> None:
    def restore(data: bytes) -> Learner:
        raise RuntimeError("state_dict mismatch")

    register("fragile", build_river_learner, restore)
    with pytest.raises(SnapshotError, match="state_dict mismatch"):
        restore_learner("fragile", b"x")


def test_registry_builds_the_same_river_pipeline_as_the_adapter() -> None:
    from shared.learners.registry import build_river_pipeline

    pipeline = build_river_pipeline("river.forest.ARFClassifier", {"n_models": 2}, PREPROCESSING, 4)
    learner = build_learner(_model(estimator="river.forest.ARFClassifier", params={"n_models": 2}), PREPROCESSING, 4)
    assert isinstance(learner, RiverLearner)
    assert str(pipeline) == str(learner.pipeline)
    assert pipeline[-1].seed == 4
