"""The torch models on CPU and on CUDA: same stream, accuracy, speed, and snapshots that cross devices.

``python -m bench.torch_device --out DIR`` (on a machine with a GPU; without one only the CPU rows are run).

For each torch kind (linear, mlp, gru, cnn) it learns the keyed-sequence stream prequentially with
``device: cpu`` and with ``device: cuda``, reports accuracy over the second half and events per second of
``process()``, then writes each CUDA-trained model's snapshot and its probabilities on probe rows to ``DIR``.
``--restore DIR`` (run with ``CUDA_VISIBLE_DEVICES=`` so that ``device: auto`` resolves to the CPU) restores those
snapshots on the CPU and compares the probabilities.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from shared.datasets import iter_source
from shared.learners.base import Row, Task
from shared.learners.registry import build_learner, restore_learner
from shared.learners.torch_models import TorchLearner
from shared.settings import ModelSettings, PreprocessingSettings

KINDS = ("torch.linear", "torch.mlp", "torch.gru", "torch.cnn")
EVENTS, PROBES, SEED = 6000, 300, 1


def _stream(n: int, seed: int) -> tuple[list[Row], list[Any]]:
    samples = list(iter_source("keyed-sequence", seed=seed, limit=n))
    return [Row(s.features, s.key) for s in samples], [s.label for s in samples]


def _learner(kind: str, device: str, batch_size: int) -> TorchLearner:
    settings = ModelSettings(name=kind.replace(".", "-"), kind=kind, task=Task.BINARY,
                             params={"device": device, "batch_size": batch_size})
    learner = build_learner(settings, PreprocessingSettings(), SEED)
    assert isinstance(learner, TorchLearner)
    return learner


def run(out: Path, batch_size: int) -> list[dict[str, Any]]:
    rows, labels = _stream(EVENTS + PROBES, SEED)
    train_rows, train_labels, probes = rows[:EVENTS], labels[:EVENTS], rows[EVENTS:]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report: list[dict[str, Any]] = []
    for kind in KINDS:
        for device in devices:
            learner = _learner(kind, device, batch_size)
            started = time.perf_counter()
            outputs = []
            for start in range(0, EVENTS, 500):  # the worker's poll batches
                outputs += learner.process(train_rows[start:start + 500], train_labels[start:start + 500])
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            half = EVENTS // 2
            accuracy = sum(o.prediction == y for o, y in zip(outputs[half:], train_labels[half:], strict=True)) / half
            row = {"kind": kind, "device": str(learner.device), "batch_size": batch_size,
                   "accuracy_second_half": round(accuracy, 4), "events_per_s": round(EVENTS / seconds)}
            report.append(row)
            print(json.dumps(row), flush=True)
            if device == "cuda":
                name = kind.replace(".", "-")
                (out / f"{name}.snapshot").write_bytes(learner.snapshot())
                probas = [learner.predict_one(r).proba for r in probes]
                (out / f"{name}.probes.json").write_text(json.dumps([{str(k): v for k, v in p.items()}
                                                                      for p in probas]))
    return report


def restore(directory: Path) -> list[dict[str, Any]]:
    rows, _ = _stream(EVENTS + PROBES, SEED)
    probes = rows[EVENTS:]
    report = []
    for kind in KINDS:
        name = kind.replace(".", "-")
        learner = restore_learner(kind, (directory / f"{name}.snapshot").read_bytes())
        assert isinstance(learner, TorchLearner)
        expected = json.loads((directory / f"{name}.probes.json").read_text())
        got = [{str(k): v for k, v in learner.predict_one(r).proba.items()} for r in probes]
        worst = max(abs(g[k] - e[k]) for g, e in zip(got, expected, strict=True) for k in e)
        row = {"kind": kind, "restored_on": str(learner.device), "probes": len(probes),
               "max_abs_proba_difference": worst}
        report.append(row)
        print(json.dumps(row), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.torch_device", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("torch-device"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--restore", type=Path, help="restore the snapshots in this directory and compare")
    args = parser.parse_args()
    if args.restore is not None:
        restore(args.restore)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(run(args.out, args.batch_size), indent=1))


if __name__ == "__main__":
    main()
