"""Every PromQL query the live dashboard runs, defined once.

The page fetches this catalogue as JSON (``GET /api/queries``) and runs each query through the dashboard's
Prometheus proxy; the browser test runs the same expressions against Prometheus directly and compares. Every
query aggregates over workers (``sum by``, ``max by``, ``avg by``), so one worker or many read the same way;
the workers table is the exception: one row per scraped ``instance``.

``kind`` says how a query is evaluated: ``range`` (``/api/v1/query_range`` over the page's time range, drawn
as a chart) or ``instant`` (``/api/v1/query`` at the end of that range, shown as numbers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: the quality metrics a worker can export (``streamlearn_model_metric{metric=...}``)
QUALITY_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "mae", "rmse", "r2")
#: the metrics where lower is better
LOWER_IS_BETTER = frozenset({"log_loss", "mae", "rmse"})
#: latency percentiles shown
LATENCY_QUANTILES = (0.5, 0.95, 0.99)
#: the metrics that are exact ratios of the group-wide counters (docs/metrics.md, "Group-wide quality"):
#: metric -> (the counter summed in the numerator, whether the ratio's square root is taken)
COUNTED_METRICS: dict[str, tuple[str, bool]] = {
    "accuracy": ("streamlearn_predictions_correct_total", False),
    "mae": ("streamlearn_prediction_absolute_error_total", False),
    "rmse": ("streamlearn_prediction_squared_error_total", True),
}
SCORED_COUNTER = "streamlearn_predictions_scored_total"


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL expression, how to evaluate it, and how the page shows its series."""

    id: str
    expr: str
    kind: Literal["range", "instant"]
    #: the label whose value names a series (``""``: one unnamed series)
    legend: str = ""
    #: a fixed name for the series when ``legend`` is empty
    name: str = ""
    #: value shown = value * scale (seconds shown as milliseconds: 1000)
    scale: float = 1.0
    unit: str = ""
    decimals: int = 3


@dataclass(frozen=True, slots=True)
class Panel:
    """A box on the page: a title, a short description, and its queries."""

    id: str
    title: str
    description: str
    queries: tuple[Query, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DashboardSpec:
    """The whole page: its panels and how often and how far back it reads."""

    metric: str
    rate_window: str
    refresh_s: float
    panels: tuple[Panel, ...]
    #: the time window of the rolling quality figures when ``metric`` is counted (``COUNTED_METRICS``)
    quality_window: str = "1m"

    def queries(self) -> list[Query]:
        """Every query of every panel, in page order."""
        return [query for panel in self.panels for query in panel.queries]

    def as_json(self) -> dict[str, Any]:
        """What ``GET /api/queries`` serves."""
        return {
            "metric": self.metric, "rate_window": self.rate_window, "refresh_s": self.refresh_s,
            "quality_window": self.quality_window, "group_wide": self.metric in COUNTED_METRICS,
            "lower_is_better": self.metric in LOWER_IS_BETTER,
            "panels": [asdict(panel) for panel in self.panels],
        }


def group_ratio(metric: str, *, by: str = "model", role: str = "", window: str = "") -> str:
    """PromQL of a counted ``metric`` over the whole group: the counters summed over workers, then divided.

    ``by``: the label kept (``""``: one series); ``role``: only the predictions of that role (``champion``:
    those published); ``window``: over the last ``window`` (``increase``), else since the workers started.
    """
    numerator, root = COUNTED_METRICS[metric]
    aggregation = f"sum by ({by}) " if by else "sum"
    selector = f'{{role="{role}"}}' if role else ""

    def summed(counter: str) -> str:
        series = f"{counter}{selector}"
        return f"{aggregation}({f'increase({series}[{window}])' if window else series})"

    ratio = f"{summed(numerator)} / {summed(SCORED_COUNTER)}"
    return f"sqrt({ratio})" if root else ratio


def _quality_queries(m: str, quality_window: str) -> tuple[Query, Query, Query]:
    """The rolling and cumulative score per model, and the champion's score (the summary tile)."""
    if m in COUNTED_METRICS:
        return (
            Query("rolling", group_ratio(m, window=quality_window), "range", legend="model"),
            Query("cumulative", group_ratio(m), "range", legend="model"),
            Query("champion_metric", group_ratio(m, by="", role="champion", window=quality_window), "instant",
                  name=f"published {m}", decimals=3),
        )
    return (
        Query("rolling", f'avg by (model) (streamlearn_model_metric{{metric="{m}",window="rolling"}})',
              "range", legend="model"),
        Query("cumulative", f'avg by (model) (streamlearn_model_metric{{metric="{m}",window="cumulative"}})',
              "range", legend="model"),
        Query("champion_metric", f'avg(streamlearn_model_metric{{metric="{m}",window="rolling"}} '
                                 "* on (instance, model) (streamlearn_champion == 1))",
              "instant", name=f"champion {m}", decimals=3),
    )


def build_spec(
    metric: str = "accuracy", rate_window: str = "30s", refresh_s: float = 2.0, quality_window: str = "1m",
) -> DashboardSpec:
    """The dashboard's queries for a quality ``metric``, a ``rate()`` window and the rolling quality window.

    Both windows are PromQL durations; ``quality_window`` applies to the counted metrics only (the others are
    the workers' own rolling gauges, averaged).
    """
    if metric not in QUALITY_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(QUALITY_METRICS)}")
    m, w = metric, rate_window
    rolling, cumulative, champion_metric = _quality_queries(m, quality_window)
    if m in COUNTED_METRICS:
        how = (f"the whole group's {m} per model from the summed counters (rolling: the last {quality_window}, "
               "solid; cumulative: since the workers started, dashed)")
    else:
        how = (f"prequential {m} per model, the workers' own scores averaged (rolling: solid, cumulative: "
               "dashed)")
    quality = Panel(
        "quality", f"{m.replace('_', ' ')}: models against the baselines",
        f"{how[0].upper()}{how[1:]}, the no-change and majority baselines (grey, the workers' rolling scores "
        "averaged), drift detections (red marks) and the champion (the band along the top).",
        (
            rolling,
            cumulative,
            Query("baselines", f'avg by (baseline) (streamlearn_baseline_metric{{metric="{m}",window="rolling",'
                               'baseline=~"no_change|majority"})', "range", legend="baseline"),
            Query("champion", "max by (model) (streamlearn_champion)", "range", legend="model", decimals=0),
            Query("drift_times", "max by (model) (streamlearn_last_drift_timestamp_seconds)", "range",
                  legend="model", decimals=0),
            Query("drift_count", "sum(streamlearn_drift_detections_total)", "instant", name="drifts", decimals=0),
        ),
    )
    drift = Panel(
        "data_drift", "features that moved most",
        "Population stability index (PSI) of each feature's recent window against its reference window, highest "
        "first; above 0.2 is usually read as a real shift. Below: the label and prediction distributions.",
        (
            Query("feature_psi", 'topk(8, max by (feature) (streamlearn_feature_drift{statistic="psi"}))',
                  "instant", legend="feature"),
            Query("distribution_psi", 'max by (distribution) (streamlearn_distribution_drift{statistic="psi"})',
                  "instant", legend="distribution"),
        ),
    )
    throughput = Panel(
        "events", "events per second by outcome",
        f"rate(streamlearn_events_total[{w}]) summed over workers: valid, invalid (dead-lettered), duplicate.",
        (Query("events_rate", f"sum by (outcome) (rate(streamlearn_events_total[{w}]))", "range",
               legend="outcome", unit="/s", decimals=1),),
    )
    latency = Panel(
        "latency", "end-to-end latency",
        "From the event's Kafka timestamp to its prediction being sent: percentiles of the histogram over "
        f"{w}, all workers together.",
        tuple(
            Query(f"latency_p{round(q * 100)}",
                  f"histogram_quantile({q}, sum by (le) (rate(streamlearn_end_to_end_latency_seconds_bucket[{w}])))",
                  "range", name=f"p{round(q * 100)}", scale=1000.0, unit="ms", decimals=1)
            for q in LATENCY_QUANTILES
        ),
    )
    lag = Panel(
        "lag", "consumer lag",
        "Records behind the end of each input topic, summed over partitions and workers.",
        (Query("lag", "sum by (topic) (streamlearn_consumer_lag)", "range", legend="topic", decimals=0),),
    )
    labels = Panel(
        "labels", "label join outcomes",
        f"rate(streamlearn_labels_total[{w}]): delayed labels joined to their prediction, held for their event, "
        "late, orphan, duplicate, invalid or misrouted.",
        (Query("labels_rate", f"sum by (outcome) (rate(streamlearn_labels_total[{w}]))", "range",
               legend="outcome", unit="/s", decimals=1),),
    )
    dead_letters = Panel(
        "dead_letters", "dead letters by reason",
        "Records sent to the dead-letter topic since the workers started, by reason, summed over workers. Totals "
        "rather than rates: a reason's series starts with its first record, which a rate() cannot see.",
        (Query("dead_letters_total", "sum by (reason) (streamlearn_dead_letters_total)", "range", legend="reason",
               decimals=0),),
    )
    workers = Panel(
        "workers", "workers",
        "One row per scraped worker: Prometheus reaches it, it is ready (assigned, restored, processing), its last "
        "Kafka and Redis operations succeeded, and the seconds since its last checkpoint.",
        (
            Query("scraped", 'up{job="streamlearn"}', "instant", legend="instance", decimals=0),
            Query("ready", "streamlearn_ready", "instant", legend="instance", decimals=0),
            Query("kafka_up", "streamlearn_kafka_up", "instant", legend="instance", decimals=0),
            Query("redis_up", "streamlearn_redis_up", "instant", legend="instance", decimals=0),
            Query("checkpoint_age", "streamlearn_checkpoint_age_seconds", "instant", legend="instance",
                  unit="s", decimals=0),
        ),
    )
    summary = Panel(
        "summary", "now", "The headline numbers at the end of the time range.",
        (
            Query("throughput", f'sum(rate(streamlearn_events_total{{outcome="valid"}}[{w}]))', "instant",
                  name="events/s", unit="/s", decimals=0),
            Query("processed", 'sum(streamlearn_events_total{outcome="valid"})', "instant", name="events",
                  decimals=0),
            champion_metric,
            Query("p95", "histogram_quantile(0.95, sum by (le) "
                         f"(rate(streamlearn_end_to_end_latency_seconds_bucket[{w}])))",
                  "instant", name="p95 latency", scale=1000.0, unit="ms", decimals=1),
            Query("total_lag", "sum(streamlearn_consumer_lag)", "instant", name="lag", decimals=0),
            Query("workers_ready", "sum(streamlearn_ready)", "instant", name="ready", decimals=0),
        ),
    )
    return DashboardSpec(
        metric=metric, rate_window=rate_window, refresh_s=refresh_s, quality_window=quality_window,
        panels=(summary, quality, drift, throughput, latency, lag, labels, dead_letters, workers),
    )
