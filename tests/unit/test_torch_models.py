"""Torch learners beyond the conformance harness: sequence models on a keyed stream, bounded per-entity
state, and partial mini-batches trained by ``train_if_due`` after ``max_wait_s``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from shared.datasets import iter_source
from shared.learners.base import Row, Task
from shared.learners.registry import build_learner
from shared.learners.torch_models import TorchLearner, TorchMLP, TorchOptions
from shared.settings import ModelSettings, PreprocessingSettings
from shared.steps.models import ModelStep

#: seeds of the keyed stream and of the models (the same seed for both)
SEQUENCE_SEEDS = (1, 2, 3)
SEQUENCE_EVENTS = 3000
#: GRU and CNN must beat the MLP by this much (prequential accuracy on the second half of the stream)
CLEAR_MARGIN = 0.15


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny networks run faster on one thread, and far faster on a loaded machine (no spinning threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch(kind: str, task: Task = Task.BINARY, seed: int = 7, **params: Any) -> TorchLearner:
    learner = build_learner(ModelSettings(name=kind.replace(".", "-"), kind=kind, task=task, params=params),
                            PreprocessingSettings(), seed)
    assert isinstance(learner, TorchLearner)
    return learner


def keyed_sequence_accuracy(kind: str, seed: int, n: int = SEQUENCE_EVENTS) -> float:
    """Prequential accuracy of a torch model (default options) over the second half of ``keyed-sequence``."""
    samples = list(iter_source("keyed-sequence", seed=seed, limit=n))
    rows = [Row(s.features, s.key) for s in samples]
    labels = [s.label for s in samples]
    outputs = _torch(kind, seed=seed).process(rows, labels)
    half = n // 2
    return sum(o.prediction == y for o, y in zip(outputs[half:], labels[half:], strict=True)) / (n - half)


@pytest.mark.parametrize("seed", SEQUENCE_SEEDS)
def test_gru_and_cnn_beat_mlp_when_the_label_depends_on_the_entity_history(seed: int) -> None:
    mlp = keyed_sequence_accuracy("torch.mlp", seed)
    gru = keyed_sequence_accuracy("torch.gru", seed)
    cnn = keyed_sequence_accuracy("torch.cnn", seed)
    print(f"keyed-sequence seed={seed} n={SEQUENCE_EVENTS}: mlp={mlp:.3f} gru={gru:.3f} cnn={cnn:.3f}")
    assert gru >= mlp + CLEAR_MARGIN, (mlp, gru)
    assert cnn >= mlp + CLEAR_MARGIN, (mlp, cnn)
    assert gru > 0.85 and cnn > 0.85, (gru, cnn)


def test_sequence_prediction_reads_state_only_and_history_grows_on_learn() -> None:
    gru = _torch("torch.gru", seq_len=4)
    first = Row({"x": 0.5}, "a")
    before = gru.predict_one(first)
    assert gru.predict_one(first) == before and gru.sequence_keys() == 0, "predicting changed the state"
    gru.learn_one(first, True)
    assert gru.sequence_keys() == 1
    for i in range(10):
        gru.learn_one(Row({"x": float(i)}, "a"), i % 2 == 0)
    assert len(gru.histories["a"]) == 3, "seq_len - 1 previous events are kept, not more"
    gru.learn_one(Row({"x": 1.0}, None), True)
    assert gru.sequence_keys() == 1, "a row without a key keeps no history"


def test_per_entity_state_is_bounded_by_max_keys_least_recent_first() -> None:
    cnn = _torch("torch.cnn", max_keys=3)
    for key in ("a", "b", "c", "a", "d"):
        cnn.learn_one(Row({"x": 1.0}, key), True)
    assert list(cnn.histories) == ["c", "a", "d"]
    assert cnn.sequence_keys() == 3
    steps = ModelStep([ModelSettings(name="cnn", kind="torch.cnn", task=Task.BINARY, params={"max_keys": 3}),
                       ModelSettings(name="lr", kind="torch.linear", task=Task.BINARY)],
                      lambda m: build_learner(m, PreprocessingSettings(), 1))
    steps.assign(("events", 0), None)
    steps.sets[("events", 0)].learners["cnn"] = cnn
    assert steps.sequence_keys() == {"cnn": 3, "lr": 0}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_partial_batch_trains_after_max_wait_via_train_if_due() -> None:
    clock = Clock()
    options = TorchOptions(batch_size=32, max_wait_s=5.0)
    mlp = TorchMLP(options, Task.BINARY, seed=3, clock=clock)
    rows = [Row({"x": float(i)}) for i in range(4)]
    for i, row in enumerate(rows):
        mlp.learn_one(row, i % 2 == 0)
    assert mlp.pending == 4 and mlp.trained_batches == 0
    before = mlp.predict_many(rows)
    clock.now += 4.9
    assert mlp.train_if_due() is False and mlp.pending == 4
    clock.now += 0.2
    assert mlp.train_if_due() is True
    assert mlp.pending == 0 and mlp.trained_batches == 1
    assert mlp.predict_many(rows) != before, "predictions use the weights right after training"
    assert mlp.train_if_due() is False, "nothing pending"


def test_model_step_train_if_due_reaches_every_partition() -> None:
    clock = Clock()
    step = ModelStep([ModelSettings(name="mlp", kind="torch.mlp", task=Task.BINARY),
                      ModelSettings(name="river", estimator="river.linear_model.LogisticRegression")],
                     lambda m: (TorchMLP(TorchOptions(batch_size=64, max_wait_s=1.0), Task.BINARY, 1, clock=clock)
                                if m.kind == "torch.mlp" else build_learner(m, PreprocessingSettings(), 1)))
    for partition in (0, 1):
        step.assign(("events", partition))
        step.sets[("events", partition)].learners["mlp"].learn_one(Row({"x": 1.0}), True)
    assert step.train_if_due() == 0
    clock.now += 2.0
    assert step.train_if_due() == 2, "one partial batch per partition trained; River has nothing to do"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the restore on a machine without CUDA")
def test_a_snapshot_taken_on_cuda_restores_on_a_cpu_only_machine() -> None:
    mlp = _torch("torch.mlp", device="cpu", batch_size=4)
    rows, labels = [Row({"x": float(i % 5)}, None) for i in range(40)], [i % 2 == 0 for i in range(40)]
    mlp.process(rows, labels)
    # what a GPU worker writes: the same state with device "cuda" in its options
    mlp.options = mlp.options.model_copy(update={"device": "cuda"})
    restored = type(mlp).restore(mlp.snapshot())
    assert restored.device.type == "cpu" and restored.options.device == "cpu"
    assert [restored.predict_one(r) for r in rows[:5]] == [mlp.predict_one(r) for r in rows[:5]]
