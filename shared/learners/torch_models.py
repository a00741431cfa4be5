"""PyTorch learners trained by mini-batch gradient descent as labels arrive: ``torch.linear``, ``torch.mlp``,
``torch.gru`` and ``torch.cnn`` (the last two over each entity's recent events).

Semantics, options and the snapshot format are in ``docs/models.md``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import numpy as np
import orjson
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn
from torch.nn import functional

from shared.learners.base import Learner, MergeMode, Output, Row, SnapshotError, Target, Task
from shared.learners.registry import LearnerConfigError
from shared.learners.replay import ReplayLog, learn_replayed
from shared.learners.torch_nets import CNNEncoder, GRUEncoder, LinearEncoder, MLPEncoder, Network, initialize
from shared.learners.vectorizer import RunningStats, Vectorizer, VectorizerConfig

if TYPE_CHECKING:
    from shared.settings import ModelSettings, PreprocessingSettings

SNAPSHOT_FORMAT = 1
#: rows per forward pass when predicting many rows at once
PREDICT_CHUNK = 512
DEFAULT_MAX_CLASSES = {Task.BINARY: 2, Task.MULTICLASS: 16}

log = logging.getLogger(__name__)
Clock = Callable[[], float]


class TorchOptions(BaseModel):
    """The ``params`` of a torch model. Each kind accepts the common options and its own (see the docs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(0.005, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(8, ge=1, le=65_536)
    #: a pending partial batch older than this (seconds) is trained at the next learn or ``train_if_due``
    max_wait_s: float | None = Field(10.0, gt=0.0)
    passes: int = Field(1, ge=1, le=100)
    max_grad_norm: float | None = Field(10.0, gt=0.0)
    max_classes: int | None = Field(None, ge=2, le=10_000)
    bottleneck: int = Field(8, ge=1, le=4096)
    device: str = "auto"
    numeric_slots: int = Field(32, ge=0, le=65_536)
    category_slots: int = Field(32, ge=0, le=65_536)
    missing_indicators: bool = True
    standardize: bool | None = None
    one_hot: bool | None = None
    clip: float = Field(8.0, gt=0.0)
    hidden_sizes: tuple[int, ...] = (32,)
    hidden_size: int = Field(32, ge=1, le=4096)
    channels: int = Field(32, ge=1, le=4096)
    kernel_size: int = Field(3, ge=1, le=64)
    num_layers: int | None = Field(None, ge=1, le=8)
    seq_len: int = Field(8, ge=1, le=1024)
    max_keys: int = Field(10_000, ge=1, le=10_000_000)

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if not sizes or any(size < 1 or size > 65_536 for size in sizes):
            raise ValueError("hidden_sizes must be a non-empty list of sizes between 1 and 65536")
        return sizes

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device != "auto":
            try:
                torch.device(device)
            except RuntimeError as exc:
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
        return device


COMMON_OPTIONS = frozenset({
    "optimizer", "lr", "momentum", "weight_decay", "batch_size", "max_wait_s", "passes", "max_grad_norm",
    "max_classes", "bottleneck", "device", "numeric_slots", "category_slots", "missing_indicators",
    "standardize", "one_hot", "clip",
})
SEQUENCE_OPTIONS = frozenset({"seq_len", "max_keys", "num_layers"})


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_available(name: str) -> bool:
    """Whether ``name`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) can be used on this machine."""
    device = resolve_device(name)
    if device.type != "cuda":
        return True
    return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()


class TorchLearner(Learner):
    """A torch network behind :class:`Learner`, trained on mini-batches of labelled rows.

    ``learn_one`` adds the row to a pending batch; a full batch (``batch_size``), or one older than
    ``max_wait_s`` by the injected ``clock``, gets ``passes`` optimizer steps. Predictions always use the
    current weights, computed in float64 and rounded to float32 so that a row's output does not depend on
    the batch it is predicted in.
    """

    #: the network reads the entity's recent events, not only the current one
    sequential: ClassVar[bool] = False
    kind_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: TorchOptions, task: Task, seed: int, *, clock: Clock = time.monotonic) -> None:
        self.options = options
        self.task = task
        self.seed = seed
        self._clock = clock
        self.device = resolve_device(options.device)
        self.vectorizer = Vectorizer(VectorizerConfig(
            numeric_slots=options.numeric_slots,
            category_slots=options.category_slots,
            missing_indicators=options.missing_indicators,
            standardize=True if options.standardize is None else options.standardize,
            one_hot=True if options.one_hot is None else options.one_hot,
            clip=options.clip,
        ))
        self.max_classes = options.max_classes or DEFAULT_MAX_CLASSES.get(task, 0)
        if task is Task.BINARY and self.max_classes != 2:
            raise ValueError(f"a binary model has 2 classes, max_classes is {self.max_classes}")
        self._generator = torch.Generator().manual_seed(seed)
        self.net = self._build_network()
        initialize(self.net, self._generator)
        self.net.to(self.device)
        self._inference = self._build_network().to(device=self.device, dtype=torch.float64).eval()
        self._inference.requires_grad_(False)
        self._inference_stale = True
        self.optimizer = self._build_optimizer()
        self.classes: list[Target] = []
        self._class_index: dict[Target, int] = {}
        self.target_stats = RunningStats(1)
        self._pending_inputs: list[np.ndarray] = []
        self._pending_targets: list[float] = []
        self._pending_since: float | None = None
        self.histories: OrderedDict[str, deque[np.ndarray]] = OrderedDict()
        self.dropped_labels = 0
        self.trained_batches = 0
        self._replay: ReplayLog | None = None

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls, model: ModelSettings, preprocessing: PreprocessingSettings, seed: int, *, clock: Clock = time.monotonic
    ) -> Self:
        """Build from a model's settings; unknown or invalid ``params`` raise :class:`LearnerConfigError`."""
        params = dict(model.params)
        accepted = COMMON_OPTIONS | cls.kind_options
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise LearnerConfigError(
                f"model {model.name!r}: kind {cls.kind!r} has no option {', '.join(map(repr, unknown))}; "
                f"it accepts {', '.join(sorted(accepted))}"
            )
        params.setdefault("standardize", preprocessing.scale_numbers)
        params.setdefault("one_hot", preprocessing.one_hot_categories)
        try:
            options = TorchOptions(**params)
        except ValidationError as exc:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise LearnerConfigError(f"model {model.name!r}: {problems}") from exc
        task = model.task or Task.BINARY
        try:
            return cls(options, task, seed, clock=clock)
        except ValueError as exc:
            raise LearnerConfigError(f"model {model.name!r}: {exc}") from exc

    def _encoder(self, width: int) -> nn.Module:
        raise NotImplementedError

    def _build_network(self) -> Network:
        width = self.vectorizer.width
        encoder = self._encoder(width)
        if self.task is Task.ANOMALY:
            return Network(encoder, 0, reconstruct=width, bottleneck=self.options.bottleneck,
                           nonlinear=not isinstance(encoder, LinearEncoder))
        outputs = 1 if self.task is Task.REGRESSION else self.max_classes
        return Network(encoder, outputs)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        options = self.options
        if options.optimizer == "sgd":
            return torch.optim.SGD(self.net.parameters(), lr=options.lr, momentum=options.momentum,
                                   weight_decay=options.weight_decay)
        return torch.optim.Adam(self.net.parameters(), lr=options.lr, weight_decay=options.weight_decay)

    # -- the Learner interface ----------------------------------------------------------------------------

    def predict_one(self, row: Row) -> Output:
        return self._outputs([self._predict_input(row)])[0]

    def predict_many(self, rows: Sequence[Row]) -> list[Output]:
        return self._outputs([self._predict_input(row) for row in rows])

    def learn_one(self, row: Row, target: Target | None) -> None:
        now = self._clock()
        inputs = self._predict_input(row)
        self._observe(row, inputs)
        if self._replay is not None:
            self._replay.record(row, target)
        if self._enqueue(inputs, target, now):
            self._train_pending()

    def process(self, rows: Sequence[Row], targets: Sequence[Target | None]) -> list[Output]:
        """Prequential batch, equal to ``predict_one`` then ``learn_one`` per row: the rows predicted between
        two changes of state (a training step, a new class) share one forward pass."""
        outputs: list[Output | None] = [None] * len(rows)
        waiting: list[int] = []
        waiting_inputs: list[np.ndarray] = []

        def flush() -> None:
            for index, output in zip(waiting, self._outputs(waiting_inputs), strict=True):
                outputs[index] = output
            waiting.clear()
            waiting_inputs.clear()

        unsupervised = self.task is Task.ANOMALY
        for index, (row, target) in enumerate(zip(rows, targets, strict=True)):
            inputs = self._predict_input(row)
            waiting.append(index)
            waiting_inputs.append(inputs)
            if target is None and not unsupervised:
                continue
            now = self._clock()
            self._observe(row, inputs)
            if self._replay is not None:
                self._replay.record(row, target)
            if self._adds_class(target):
                flush()
            if self._enqueue(inputs, target, now):
                flush()
                self._train_pending()
        flush()
        return [output for output in outputs if output is not None]

    def train_if_due(self) -> bool:
        """Train the pending partial batch if it is older than ``max_wait_s``; for a worker's idle polls."""
        if self._pending_since is None or self.options.max_wait_s is None:
            return False
        if self._clock() - self._pending_since < self.options.max_wait_s:
            return False
        self._train_pending()
        return True

    def sequence_keys(self) -> int:
        """Entities whose recent events are kept (always 0 for models that read only the current event)."""
        return len(self.histories)

    @property
    def pending(self) -> int:
        """Labelled rows waiting for the next training step."""
        return len(self._pending_inputs)

    # -- inputs and per-entity histories ------------------------------------------------------------------

    def _sequence(self, events: Sequence[np.ndarray]) -> np.ndarray:
        """The last ``seq_len`` events, left-padded with zeros; the extra last column marks real events."""
        seq_len, raw_width = self.options.seq_len, self.vectorizer.raw_width
        out = np.zeros((seq_len, raw_width + 1), dtype=np.float32)
        events = list(events)[-seq_len:]
        start = seq_len - len(events)
        for offset, event in enumerate(events):
            out[start + offset, :raw_width] = event
            out[start + offset, raw_width] = 1.0
        return out

    def _predict_input(self, row: Row) -> np.ndarray:
        """The network input of a row: its encoding, or for sequence models the entity's learned events
        followed by this one. Reads state only: predicting a row twice gives the same input."""
        raw = self.vectorizer.encode(row.features)
        if not self.sequential:
            return raw
        history = self.histories.get(row.key) if row.key is not None else None
        recent = list(history)[-(self.options.seq_len - 1):] if history and self.options.seq_len > 1 else []
        return self._sequence([*recent, raw])

    def _observe(self, row: Row, inputs: np.ndarray) -> None:
        """Append a learned row's event (the last step of ``inputs``) to its entity's history, evicting the
        least recently seen entity beyond ``max_keys``."""
        if not self.sequential or row.key is None:
            return
        raw = inputs[-1, : self.vectorizer.raw_width].copy()
        history = self.histories.get(row.key)
        if history is None:
            history = self.histories[row.key] = deque(maxlen=max(1, self.options.seq_len - 1))
            while len(self.histories) > self.options.max_keys:
                self.histories.popitem(last=False)
        else:
            self.histories.move_to_end(row.key)
        history.append(raw)

    def _network_input(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.sequential:
            return self.vectorizer.transform(inputs)
        raw_width = self.vectorizer.raw_width
        valid = inputs[..., raw_width:]
        return torch.cat([self.vectorizer.transform(inputs[..., :raw_width]) * valid, valid], dim=-1)

    def _current_event(self, network_input: torch.Tensor) -> torch.Tensor:
        """The standardized current event, the reconstruction target of anomaly detection."""
        if not self.sequential:
            return network_input
        return network_input[:, -1, : self.vectorizer.width]

    # -- prediction ---------------------------------------------------------------------------------------

    def _sync_inference(self) -> None:
        if self._inference_stale:
            with torch.no_grad():
                for target, source in zip(self._inference.parameters(), self.net.parameters(), strict=True):
                    target.copy_(source)
            self._inference_stale = False

    def _outputs(self, inputs: list[np.ndarray]) -> list[Output]:
        if not inputs:
            return []
        self._sync_inference()
        outputs: list[Output] = []
        for start in range(0, len(inputs), PREDICT_CHUNK):
            chunk = torch.from_numpy(np.stack(inputs[start : start + PREDICT_CHUNK]))
            network_input = self._network_input(chunk.to(device=self.device, dtype=torch.float64))
            with torch.no_grad():
                result = self._inference(network_input)
                if self.task is Task.ANOMALY:
                    result = (result - self._current_event(network_input)).square().mean(dim=1, keepdim=True)
                elif self.task.is_classification and self.classes:
                    result = torch.softmax(result[:, : len(self.classes)], dim=1)
            outputs.extend(self._to_outputs(result.to(dtype=torch.float32, device="cpu").numpy()))
        return outputs

    def _to_outputs(self, values: np.ndarray) -> list[Output]:
        if self.task is Task.ANOMALY:
            return [Output(None, score=float(value)) for value in values[:, 0]]
        if self.task is Task.REGRESSION:
            mean, std = float(self.target_stats.mean[0]), float(self.target_stats.std()[0])
            return [Output(mean + std * float(value)) for value in values[:, 0]]
        if not self.classes:
            return [Output(None) for _ in range(len(values))]
        classes = self.classes
        outputs = []
        for probabilities in values:
            best = int(np.argmax(probabilities))
            proba = {label: float(p) for label, p in zip(classes, probabilities, strict=False)}
            outputs.append(Output(classes[best], proba))
        return outputs

    # -- learning -----------------------------------------------------------------------------------------

    def _adds_class(self, target: Target | None) -> bool:
        return (
            self.task.is_classification
            and target not in self._class_index
            and len(self.classes) < self.max_classes
        )

    def _encode_target(self, target: Target | None) -> float | None:
        if self.task is Task.ANOMALY:
            return 0.0
        if target is None:
            raise ValueError(f"a {self.task} learner needs a target to learn")
        if self.task is Task.REGRESSION:
            value = float(target)
            if not math.isfinite(value):
                raise ValueError(f"a regression target must be finite, got {target!r}")
            return value
        index = self._class_index.get(target)
        if index is None:
            if len(self.classes) >= self.max_classes:
                if self.dropped_labels == 0:
                    log.warning("%s: more than max_classes=%d classes; rows of class %r and other new classes "
                                "are not learned", self.kind, self.max_classes, target)
                self.dropped_labels += 1
                return None
            index = self._class_index[target] = len(self.classes)
            self.classes.append(target)
        return float(index)

    def _enqueue(self, inputs: np.ndarray, target: Target | None, now: float) -> bool:
        """Add a row to the pending batch; whether the batch should be trained now."""
        encoded = self._encode_target(target)
        if encoded is None:
            return False
        self._pending_inputs.append(inputs)
        self._pending_targets.append(encoded)
        if self._pending_since is None:
            self._pending_since = now
        if len(self._pending_inputs) >= self.options.batch_size:
            return True
        max_wait = self.options.max_wait_s
        return max_wait is not None and now - self._pending_since >= max_wait

    def _train_pending(self) -> None:
        if not self._pending_inputs:
            return
        inputs = np.stack(self._pending_inputs)
        targets = np.asarray(self._pending_targets, dtype=np.float64)
        self._pending_inputs, self._pending_targets, self._pending_since = [], [], None
        current = inputs[:, -1, : self.vectorizer.raw_width] if self.sequential else inputs
        self.vectorizer.learn(current)
        network_input = self._network_input(torch.from_numpy(inputs).to(self.device))
        target_tensor = self._target_tensor(targets)
        self.net.train()
        for _ in range(self.options.passes):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(self.net(network_input), target_tensor, network_input)
            loss.backward()
            if self.options.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.net.parameters(), self.options.max_grad_norm)
            self.optimizer.step()
        self.trained_batches += 1
        self._inference_stale = True

    def _target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        if self.task is Task.REGRESSION:
            ones = np.ones_like(targets)[:, None]
            self.target_stats.update(targets[:, None], ones)
            scaled = (targets - self.target_stats.mean[0]) / self.target_stats.std()[0]
            return torch.from_numpy(scaled.astype(np.float32)).to(self.device)
        return torch.from_numpy(targets.astype(np.int64)).to(self.device)

    def _loss(self, output: torch.Tensor, targets: torch.Tensor, network_input: torch.Tensor) -> torch.Tensor:
        if self.task is Task.ANOMALY:
            return functional.mse_loss(output, self._current_event(network_input))
        if self.task is Task.REGRESSION:
            return functional.mse_loss(output[:, 0], targets)
        return functional.cross_entropy(output[:, : len(self.classes)], targets)

    # -- state --------------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        pending_age = None if self._pending_since is None else max(0.0, self._clock() - self._pending_since)
        keys = list(self.histories)
        events = [event for key in keys for event in self.histories[key]]
        return {
            "options": self.options.model_dump(),
            "task": str(self.task),
            "seed": self.seed,
            "net": {name: tensor.detach().cpu() for name, tensor in self.net.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "vectorizer": self.vectorizer.state_dict(),
            "target_stats": self.target_stats.state_dict(),
            "classes": list(self.classes),
            "dropped_labels": self.dropped_labels,
            "trained_batches": self.trained_batches,
            "pending_inputs": _stack(self._pending_inputs),
            "pending_targets": list(self._pending_targets),
            "pending_age": pending_age,
            "history_keys": keys,
            "history_lengths": [len(self.histories[key]) for key in keys],
            "history_events": _stack(events),
            "generator": self._generator.get_state(),
        }

    def snapshot(self) -> bytes:
        """A JSON header line (kind, format, torch version, payload length and SHA-256), then ``torch.save``
        of plain containers and tensors, loadable with ``weights_only=True``."""
        buffer = io.BytesIO()
        torch.save(self._state(), buffer)
        payload = buffer.getvalue()
        header = {
            "kind": self.kind,
            "format": SNAPSHOT_FORMAT,
            "torch": torch.__version__,
            "length": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        return json.dumps(header, sort_keys=True).encode() + b"\n" + payload

    @classmethod
    def restore(cls, data: bytes, *, clock: Clock = time.monotonic) -> Self:
        """Rebuild from :meth:`snapshot`; raise :class:`SnapshotError` for another kind, another format, a
        different torch major version, or corrupt bytes. Never returns a half-loaded learner."""
        header, payload = read_header(data)
        if header["kind"] != cls.kind:
            raise SnapshotError(f"snapshot of kind {header['kind']!r} cannot be restored as {cls.kind!r}")
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
            options = dict(state["options"])
            if not device_available(str(options.get("device", "auto"))):
                # a checkpoint taken on a GPU worker restores on a CPU-only one (the tensors are loaded to the CPU)
                log.warning("%s snapshot was taken on device %r, which this machine lacks: restoring on the CPU",
                            cls.kind, options["device"])
                options["device"] = "cpu"
            learner = cls(TorchOptions(**options), Task(state["task"]), int(state["seed"]), clock=clock)
            learner._load_state(state)
        except SnapshotError:
            raise
        except Exception as exc:
            raise SnapshotError(f"corrupt {cls.kind} snapshot: {exc!r}") from exc
        return learner

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        vectorizer = Vectorizer.from_state_dict(state["vectorizer"])
        if asdict(vectorizer.config) != asdict(self.vectorizer.config):
            raise SnapshotError("the snapshot's vectorizer does not match its options")
        self.vectorizer = vectorizer
        self.target_stats.load_state_dict(state["target_stats"])
        self.classes = list(state["classes"])
        self._class_index = {label: index for index, label in enumerate(self.classes)}
        if len(self._class_index) != len(self.classes) or len(self.classes) > max(self.max_classes, 0):
            raise SnapshotError("the snapshot's classes are repeated or too many")
        self.dropped_labels = int(state["dropped_labels"])
        self.trained_batches = int(state["trained_batches"])
        self._pending_inputs = _unstack(state["pending_inputs"])
        self._pending_targets = [float(value) for value in state["pending_targets"]]
        if len(self._pending_inputs) != len(self._pending_targets):
            raise SnapshotError("the snapshot's pending batch is inconsistent")
        age = state["pending_age"]
        self._pending_since = None if age is None else self._clock() - float(age)
        events = _unstack(state["history_events"])
        lengths = [int(length) for length in state["history_lengths"]]
        if sum(lengths) != len(events) or len(lengths) != len(state["history_keys"]):
            raise SnapshotError("the snapshot's histories are inconsistent")
        offset, capacity = 0, max(1, self.options.seq_len - 1)
        for key, length in zip(state["history_keys"], lengths, strict=True):
            history: deque[np.ndarray] = deque(events[offset : offset + length], maxlen=capacity)
            self.histories[str(key)] = history
            offset += length
        self._generator.set_state(state["generator"])
        self._inference_stale = True

    def clone(self) -> Self:
        """An untrained copy with the same options, task, seed and clock (and merge mode)."""
        copy = type(self)(self.options, self.task, self.seed, clock=self._clock)
        if self._replay is not None:
            copy.replay(self._replay.max_examples)
        return copy

    # -- merging across the workers of a group (FedAvg; docs/models.md) ------------------------------------

    def merge_mode(self) -> MergeMode:
        """Parameters average (FedAvg): ``sum(n_i * theta_i) / sum(n_i)`` over the members' parameters, ``n_i`` the
        examples each learned since its last sync. The whole parameters travel, not a difference from a base:
        each member's output rows follow the order in which it met the classes, and a row is matched to the
        same class by label, so the members' models mean the same thing whatever that order. The optimizer's
        state (Adam's moments, momentum), the vectorizer's running statistics and the per-entity histories
        stay local. Not aligned yet: one-hot category columns, which follow the order in which each member met
        the categories (docs/models.md). In replay mode (:meth:`replay`): :attr:`MergeMode.REPLAY`."""
        return MergeMode.AVERAGE if self._replay is None else MergeMode.REPLAY

    def replay(self, max_examples: int) -> bool:
        """Replay mode: the delta is the examples learned since the last sync, with their entity keys, so a
        sequence model learns the others' entities' events in their order and keeps their histories too."""
        if self._replay is None:
            self._replay = ReplayLog(max_examples)
        self._replay.max_examples = max_examples
        return True

    def mark_synced(self) -> None:
        if self._replay is not None:
            self._replay.clear()

    def sync_delta(self) -> bytes | None:
        """This member's parameters and class order (what a merge averages); in replay mode its examples."""
        if self._replay is not None:
            return self._replay.delta()
        params = {}
        for name, tensor in self.net.state_dict().items():
            array = tensor.detach().to(device="cpu", dtype=torch.float64).numpy()
            params[name] = [list(array.shape), base64.b64encode(array.tobytes()).decode()]
        stats = {name: [_b64(getattr(holder, field)) for field in ("count", "mean", "m2")]
                 for name, holder in (("inputs", self.vectorizer.stats), ("target", self.target_stats))}
        return orjson.dumps({"classes": list(self.classes), "params": params, "stats": stats})

    def _decode_params(self, data: bytes) -> dict[str, torch.Tensor] | None:
        """A member's parameters, its output rows moved to this learner's class order (``None``: they do not
        fit this network)."""
        payload = orjson.loads(data)
        state = self.net.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for name, (shape, raw) in payload["params"].items():
            if name not in state or list(state[name].shape) != shape:
                log.warning("%s: a member's parameters do not fit this network (%s): not merged", self.kind, name)
                return None
            array = np.frombuffer(base64.b64decode(raw), dtype=np.float64).reshape(shape)
            tensors[name] = torch.from_numpy(array.copy()).to(device=self.device, dtype=state[name].dtype)
        classes = payload.get("classes") or []
        if self.task.is_classification and classes != self.classes[: len(classes)]:
            rows: list[int | None] = []
            for label in classes:  # classes this member has not met yet take the next free rows, in order
                if label not in self._class_index and len(self.classes) < self.max_classes:
                    self._class_index[label] = len(self.classes)
                    self.classes.append(label)
                rows.append(self._class_index.get(label))
            for name in ("head.0.weight", "head.0.bias"):
                if name in tensors:
                    moved = state[name].detach().clone()  # rows of classes the other has not met: this member's
                    for source, target in enumerate(rows):
                        if target is not None:
                            moved[target] = tensors[name][source]
                    tensors[name] = moved
        return tensors

    def _merge_stats(self, others: Sequence[tuple[bytes, int]], own_weight: int) -> None:
        """The running input and target statistics become the weighted mean of the members' means and variances
        (with the largest count), so that every member scales its inputs alike."""
        for name, holder in (("inputs", self.vectorizer.stats), ("target", self.target_stats)):
            members = [(holder.count, holder.mean, holder.m2, float(own_weight))]
            for data, weight in others:
                stats = orjson.loads(data).get("stats", {}).get(name)
                if stats is None or weight <= 0:
                    continue
                count, mean, m2 = (np.frombuffer(base64.b64decode(raw), dtype=np.float64) for raw in stats)
                if count.shape == holder.count.shape:
                    members.append((count, mean, m2, float(weight)))
            total = sum(weight for *_, weight in members)
            if len(members) < 2 or total <= 0:
                continue
            variance = [np.divide(m2, count, out=np.zeros_like(m2), where=count > 0) for count, _, m2, _ in members]
            count = np.maximum.reduce([member[0] for member in members])
            mean = np.sum([member[1] * (member[3] / total) for member in members], axis=0)
            var = np.sum([v * (member[3] / total) for v, member in zip(variance, members, strict=True)], axis=0)
            holder.count, holder.mean, holder.m2 = count, np.asarray(mean), np.asarray(var) * count

    def merge(self, own: bytes | None, own_weight: int, others: Sequence[tuple[bytes, int]]) -> None:
        if self._replay is not None:
            learn_replayed(self, self._replay, others)
            return
        if not others:
            return
        self._merge_stats(others, own_weight)
        own_classes = len(self.classes)
        decoded = []
        for data, weight in others:
            met = orjson.loads(data).get("classes") or []
            params = self._decode_params(data)
            decoded.append((params, weight, {self._class_index[label] for label in met if label in self._class_index}))
        usable = [(params, weight, rows) for params, weight, rows in decoded if params is not None and weight > 0]
        members = [(self.net.state_dict(), own_weight, set(range(own_classes))), *usable]
        total = sum(weight for _, weight, _ in members)
        if not usable or total <= 0:
            return
        head = ("head.0.weight", "head.0.bias") if self.task.is_classification else ()
        with torch.no_grad():
            merged = {}
            for name, tensor in self.net.state_dict().items():
                if name in head:  # an output row is the mean over the members that have met its class
                    weights = torch.zeros(tensor.shape[0], dtype=tensor.dtype, device=tensor.device)
                    sums = torch.zeros_like(tensor)
                    for params, weight, rows in members:
                        mask = torch.zeros(tensor.shape[0], dtype=tensor.dtype, device=tensor.device)
                        mask[sorted(rows)] = 1.0
                        shape = (-1,) + (1,) * (tensor.dim() - 1)
                        sums = sums + params[name] * (mask * weight).reshape(shape)
                        weights = weights + mask * weight
                    shape = (-1,) + (1,) * (tensor.dim() - 1)
                    merged[name] = torch.where(weights.reshape(shape) > 0,
                                               sums / weights.clamp(min=1e-12).reshape(shape), tensor)
                else:
                    merged[name] = sum(params[name] * (weight / total) for params, weight, _ in members)
            for name, tensor in self.net.state_dict().items():
                tensor.copy_(merged[name])
        self._inference_stale = True

    def memory_bytes(self) -> int:
        """Weights (training copy and float64 inference copy), optimizer state, vectorizer, pending rows and
        per-entity histories."""
        weights = sum(t.numel() * t.element_size() for t in self.net.state_dict().values())
        optimizer = sum(
            value.numel() * value.element_size()
            for state in self.optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )
        pending = sum(inputs.nbytes + 112 for inputs in self._pending_inputs)
        history_events = sum(len(history) for history in self.histories.values())
        event_bytes = self.vectorizer.raw_width * 4 + 112
        histories = sys.getsizeof(self.histories) + len(self.histories) * 700 + history_events * event_bytes
        replay = 0 if self._replay is None else self._replay.memory_bytes()
        return 3 * weights + optimizer + self.vectorizer.memory_bytes() + pending + histories + replay + 4096

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device": str(self.device),
            "params": self.options.model_dump(exclude_defaults=True),
            "width": self.vectorizer.width,
            "classes": len(self.classes),
            "trained_batches": self.trained_batches,
            "dropped_labels": self.dropped_labels,
        }


class TorchLinear(TorchLearner):
    """Logistic / softmax / linear regression on the vectorized event (a linear autoencoder for anomalies)."""

    kind = "torch.linear"

    def _encoder(self, width: int) -> nn.Module:
        return LinearEncoder(width)


class TorchMLP(TorchLearner):
    """A multi-layer perceptron on the vectorized event (an autoencoder for anomalies)."""

    kind = "torch.mlp"
    kind_options = frozenset({"hidden_sizes"})

    def _encoder(self, width: int) -> nn.Module:
        return MLPEncoder(width, self.options.hidden_sizes)


class TorchGRU(TorchLearner):
    """A GRU over the entity's last ``seq_len`` events, ending with the current one."""

    kind = "torch.gru"
    sequential = True
    kind_options = SEQUENCE_OPTIONS | {"hidden_size"}

    def _encoder(self, width: int) -> nn.Module:
        return GRUEncoder(width, self.options.hidden_size, self.options.num_layers or 1)


class TorchCNN(TorchLearner):
    """Causal 1D convolutions over the entity's last ``seq_len`` events, ending with the current one."""

    kind = "torch.cnn"
    sequential = True
    kind_options = SEQUENCE_OPTIONS | {"channels", "kernel_size"}

    def _encoder(self, width: int) -> nn.Module:
        return CNNEncoder(width, self.options.channels, self.options.kernel_size, self.options.num_layers or 2)


TORCH_CLASSES: dict[str, type[TorchLearner]] = {cls.kind: cls for cls in (TorchLinear, TorchMLP, TorchGRU, TorchCNN)}


def read_header(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The checked header of a torch snapshot and its payload; :class:`SnapshotError` if they do not fit."""
    raw_header, newline, payload = bytes(data).partition(b"\n")
    try:
        header = json.loads(raw_header) if newline else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise SnapshotError("not a torch learner snapshot (no valid header)")
    if header.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"torch snapshot format {header.get('format')!r}, expected {SNAPSHOT_FORMAT}")
    written_with = str(header.get("torch", ""))
    if written_with.split(".")[0] != torch.__version__.split(".")[0]:
        raise SnapshotError(f"torch snapshot written with torch {written_with!r}, this process has {torch.__version__}")
    if header.get("length") != len(payload) or header.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise SnapshotError("torch snapshot is truncated or corrupt (length or checksum mismatch)")
    return header, payload


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.float64).tobytes()).decode()


def _stack(arrays: Sequence[np.ndarray]) -> torch.Tensor | None:
    return torch.from_numpy(np.stack(arrays)) if arrays else None


def _unstack(tensor: torch.Tensor | None) -> list[np.ndarray]:
    if tensor is None:
        return []
    return [row.copy() for row in tensor.numpy().astype(np.float32)]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value


def build_torch_learner(model: ModelSettings, preprocessing: PreprocessingSettings, seed: int) -> TorchLearner:
    """The registry factory for every torch kind (dispatches on ``model.kind``)."""
    cls = TORCH_CLASSES.get(model.kind)
    if cls is None:
        raise LearnerConfigError(f"model {model.name!r}: {model.kind!r} is not a torch kind")
    return cls.from_settings(model, preprocessing, seed)


def restore_torch_learner(data: bytes) -> TorchLearner:
    """The registry restorer for every torch kind (dispatches on the snapshot header)."""
    header, _ = read_header(data)
    cls = TORCH_CLASSES.get(header["kind"])
    if cls is None:
        raise SnapshotError(f"snapshot of kind {header['kind']!r} is not a torch learner")
    return cls.restore(data)


TORCH_KINDS: dict[str, Callable[[ModelSettings, PreprocessingSettings, int], TorchLearner]] = {
    kind: cls.from_settings for kind, cls in TORCH_CLASSES.items()
}

__all__ = [
    "TORCH_CLASSES",
    "TORCH_KINDS",
    "TorchCNN",
    "TorchGRU",
    "TorchLearner",
    "TorchLinear",
    "TorchMLP",
    "TorchOptions",
    "build_torch_learner",
    "resolve_device",
    "restore_torch_learner",
]
