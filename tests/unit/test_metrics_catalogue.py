"""docs/metrics.md lists exactly the catalogue, and metrics live only on the registry they are given."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from shared.monitoring.metrics import BATCH_SIZE_BUCKETS, Metrics, MetricSpec, catalogue, exported_names

ROOT = Path(__file__).resolve().parents[2]
METRICS_DOC = ROOT / "docs" / "metrics.md"

_ROW = re.compile(r"^\|\s*`(?P<name>[a-z_:][a-z0-9_:]*)`\s*\|(?P<kind>[^|]*)\|(?P<labels>[^|]*)\|(?P<help>[^|]*)\|\s*$")


def documented_metrics(markdown: str) -> dict[str, MetricSpec]:
    """The rows of every metrics table in ``markdown`` (``| `name` | type | `label`, ... | help |``)."""
    rows: dict[str, MetricSpec] = {}
    for line in markdown.splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        name = match["name"]
        if name in rows:
            raise ValueError(f"{name} is listed twice")
        labels = tuple(re.findall(r"`([^`]+)`", match["labels"]))
        rows[name] = MetricSpec(name=name, kind=match["kind"].strip(), labels=labels, help=match["help"].strip())
    return rows


def _global_streamlearn_names() -> list[str]:
    return sorted(name for name in REGISTRY._names_to_collectors if name.startswith("streamlearn"))


def test_the_table_parser_reads_rows_and_refuses_duplicates() -> None:
    table = (
        "| name | type | labels | help |\n|---|---|---|---|\n"
        "| `streamlearn_x_total` | counter | `model`, `outcome` | Things done. |\n"
        "| `streamlearn_y` | gauge | - | A level. |\n"
    )
    assert documented_metrics(table) == {
        "streamlearn_x_total": MetricSpec("streamlearn_x_total", "counter", ("model", "outcome"), "Things done."),
        "streamlearn_y": MetricSpec("streamlearn_y", "gauge", (), "A level."),
    }
    with pytest.raises(ValueError, match="twice"):
        documented_metrics(table + "| `streamlearn_y` | gauge | - | Again. |\n")


def test_the_doc_lists_exactly_the_catalogue() -> None:
    documented = documented_metrics(METRICS_DOC.read_text(encoding="utf-8"))
    declared = {spec.name: spec for spec in catalogue()}
    assert sorted(set(declared) - set(documented)) == [], "in the code but not in docs/metrics.md"
    assert sorted(set(documented) - set(declared)) == [], "in docs/metrics.md but not in the code"
    for name, spec in declared.items():
        assert documented[name] == spec, name


def test_the_catalogue_reads_names_types_and_labels_off_the_code() -> None:
    specs = {spec.name: spec for spec in catalogue()}
    assert specs["streamlearn_events_total"] == MetricSpec(
        "streamlearn_events_total", "counter", ("outcome",), Metrics(CollectorRegistry()).events._documentation
    )
    assert specs["streamlearn_model_metric"].labels == ("model", "metric", "window")
    assert specs["streamlearn_processing_seconds"].kind == "histogram"
    assert all(name.startswith("streamlearn_") for name in specs)
    assert all(spec.name.endswith("_total") for spec in specs.values() if spec.kind == "counter")
    assert {"streamlearn_batch_size_bucket", "streamlearn_batch_size_sum", "streamlearn_batch_size_count"} <= (
        exported_names()
    )
    assert "streamlearn_batch_size" not in exported_names()


def test_two_metrics_on_fresh_registries_are_independent() -> None:
    first_registry, second_registry = CollectorRegistry(), CollectorRegistry()
    first, second = Metrics(first_registry), Metrics(second_registry)
    first.events.labels("valid").inc(3)
    first.batch_size.observe(BATCH_SIZE_BUCKETS[2])
    second.events.labels("valid").inc()

    def value(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value(first_registry, "streamlearn_events_total", {"outcome": "valid"}) == 3
    assert value(second_registry, "streamlearn_events_total", {"outcome": "valid"}) == 1
    assert value(first_registry, "streamlearn_batch_size_count", {}) == 1
    assert value(second_registry, "streamlearn_batch_size_count", {}) == 0
    assert _global_streamlearn_names() == []


@pytest.mark.parametrize("package_name", ["shared", "services"])
def test_importing_the_code_puts_no_metric_on_the_global_registry(package_name: str) -> None:
    package = importlib.import_module(package_name)
    for module in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
        importlib.import_module(module.name)
    assert _global_streamlearn_names() == []
