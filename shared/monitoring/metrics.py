"""Every metric streamlearn exports, declared once: name, type, labels and help.

A :class:`Metrics` is built on a registry that the caller passes in (a fresh one per worker, and per test),
never on prometheus_client's global registry. ``docs/metrics.md`` lists the same catalogue; a unit test
checks the two agree. Label values are bounded: model names, detector names, configured features,
partitions, and fixed outcome words. Never an event id or an entity key.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

#: outcome label values of ``streamlearn_events_total``
EVENT_OUTCOMES = ("valid", "invalid", "duplicate")
#: outcome label values of ``streamlearn_labels_total``
LABEL_OUTCOMES = ("joined", "held", "late", "orphan", "duplicate", "invalid", "misrouted")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One catalogue entry, as exported (counters carry their ``_total`` suffix here)."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


class Metrics:
    """The worker's metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        # --- the stream ---------------------------------------------------------------------------
        self.events = Counter(
            "streamlearn_events", "Input events by outcome: valid, invalid (dead-lettered), duplicate.",
            ["outcome"], registry=r)
        for outcome in EVENT_OUTCOMES:  # exported at 0 from the start, so rate() sees the first invalid event
            self.events.labels(outcome)
        self.dead_letters = Counter(
            "streamlearn_dead_letters", "Records sent to the dead-letter topic, by reason code.",
            ["reason"], registry=r)
        self.predictions = Counter(
            "streamlearn_predictions", "Predictions made, by model.", ["model"], registry=r)
        self.learned = Counter(
            "streamlearn_learned", "Labelled examples learned, by model.", ["model"], registry=r)
        self.labels = Counter(
            "streamlearn_labels", "Delayed labels by outcome: joined, held (arrived before the event), "
            "late (past the TTL), orphan (event never seen), duplicate, invalid.", ["outcome"], registry=r)
        # --- model quality ------------------------------------------------------------------------
        self.model_metric = Gauge(
            "streamlearn_model_metric", "Prequential quality of a model: metric over a window "
            "(cumulative or rolling).", ["model", "metric", "window"], registry=r)
        self.baseline_metric = Gauge(
            "streamlearn_baseline_metric", "The same quality metrics for the reference baselines "
            "(no_change, majority or mean) scored on the same labels.", ["baseline", "metric", "window"],
            registry=r)
        self.champion = Gauge(
            "streamlearn_champion", "1 for the model whose predictions go to the predictions topic.",
            ["model"], registry=r)
        self.champion_switches = Counter(
            "streamlearn_champion_switches", "Times this worker changed the champion (group scope: switches it "
            "decided, so the sum over the workers is the group's).", registry=r)
        # counts a ratio needs, summed over workers in PromQL (docs/metrics.md "Group-wide quality"); role is
        # champion (published to the predictions topic) or challenger (shadow predictions)
        self.scored = Counter(
            "streamlearn_predictions_scored", "Predictions scored against their label (labelled events whose "
            "prediction was published), by model and role (champion, challenger).", ["model", "role"], registry=r)
        self.correct = Counter(
            "streamlearn_predictions_correct", "Scored classifier predictions equal to their label, by model and "
            "role: accuracy = correct / scored.", ["model", "role"], registry=r)
        self.absolute_error = Counter(
            "streamlearn_prediction_absolute_error", "Sum of the absolute errors of scored regressor predictions, "
            "by model and role: MAE = absolute_error / scored.", ["model", "role"], registry=r)
        self.squared_error = Counter(
            "streamlearn_prediction_squared_error", "Sum of the squared errors of scored regressor predictions, "
            "by model and role: RMSE = sqrt(squared_error / scored).", ["model", "role"], registry=r)
        self.model_memory = Gauge(
            "streamlearn_model_memory_bytes", "Estimated memory held by a model (all partitions).",
            ["model"], registry=r)
        self.sequence_keys = Gauge(
            "streamlearn_sequence_state_keys", "Entities whose recent events a sequence model keeps.",
            ["model"], registry=r)
        # --- drift --------------------------------------------------------------------------------
        self.drift_detections = Counter(
            "streamlearn_drift_detections", "Concept drifts detected on a model's error stream.",
            ["model", "detector"], registry=r)
        self.last_drift = Gauge(
            "streamlearn_last_drift_timestamp_seconds", "Unix time of the last concept drift detected.",
            ["model", "detector"], registry=r)
        self.drift_reactions = Counter(
            "streamlearn_drift_reactions", "Reactions taken after a drift: reset, promote.",
            ["model", "reaction"], registry=r)
        self.feature_drift = Gauge(
            "streamlearn_feature_drift", "Data drift of a feature between the reference and the recent "
            "window, top-K features by PSI (statistic: psi, ks).", ["feature", "statistic"], registry=r)
        self.distribution_drift = Gauge(
            "streamlearn_distribution_drift", "Drift of the label or prediction distribution "
            "(distribution: label, prediction).", ["distribution", "statistic"], registry=r)
        # --- operations ---------------------------------------------------------------------------
        self.batch_size = Histogram(
            "streamlearn_batch_size", "Records per polled batch.", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.processing_seconds = Histogram(
            "streamlearn_processing_seconds", "Time to process one polled batch, poll to commit.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram(
            "streamlearn_end_to_end_latency_seconds", "From the event's Kafka timestamp to its prediction "
            "being sent.", buckets=LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge(
            "streamlearn_consumer_lag", "Records behind the end of the partition.",
            ["topic", "partition"], registry=r)
        self.paused_partitions = Gauge(
            "streamlearn_paused_partitions", "Partitions paused for backpressure.", registry=r)
        self.held_records = Gauge(
            "streamlearn_held_records", "Records polled and not processed yet (backpressure, time order; with "
            "librdkafka also those read for a paused partition and kept for its resume).", registry=r)
        self.deferred_outputs = Gauge(
            "streamlearn_deferred_outputs", "Outputs (predictions, dead letters) made while the last transaction "
            "commits, kept for the next one (exactly-once; at most 256 KiB, past that the loop waits for the commit).",
            registry=r)
        self.kept_records = Gauge(
            "streamlearn_kept_records", "Records a step keeps to add together, by step: score (labelled records "
            "not in the scoreboards yet), drift (features not in the data-drift windows yet); at most 256 plus one "
            "batch, added at the latest at the step's next export or the next commit.", ["step"], registry=r)
        self.producer_nudges = Counter(
            "streamlearn_producer_nudges", "Small polls (at most 2 records) at the head of the stream whose outputs "
            "were sent at once instead of after kafka.linger_ms (at-least-once).", registry=r)
        self.transaction_commit_seconds = Histogram(
            "streamlearn_transaction_commit_seconds", "Time an exactly-once commit takes, from adding the offsets to "
            "the transaction to the broker's answer to its commit: a prediction becomes readable up to "
            "worker.commit_interval_s plus this after it is made.", buckets=LATENCY_BUCKETS, registry=r)
        self.order_waits = Counter(
            "streamlearn_order_waits", "Times the time order held records back for a partition the broker holds "
            "more of, by outcome: delivered, gave_up (worker.order_wait_ms passed).", ["outcome"], registry=r)
        for outcome in ("delivered", "gave_up"):  # both series exist from the start (dashboards, alerts)
            self.order_waits.labels(outcome)
        self.order_wait_seconds = Counter(
            "streamlearn_order_wait_seconds", "Seconds records were held back for a lagging partition.", registry=r)
        self.checkpoints = Counter(
            "streamlearn_checkpoints", "Checkpoint attempts by outcome: ok, failed.", ["outcome"],
            registry=r)
        self.checkpoint_age = Gauge(
            "streamlearn_checkpoint_age_seconds", "Seconds since the last successful checkpoint.",
            registry=r)
        self.snapshots_rejected = Counter(
            "streamlearn_snapshots_rejected", "Snapshots refused on restore: unsigned, tampered, "
            "incompatible.", ["reason"], registry=r)
        self.transaction_rewinds = Counter(
            "streamlearn_transaction_rewinds", "Exactly-once transactions given up: a new producer fenced the old "
            "one and every assigned partition was restored from its checkpoint.", registry=r)
        self.state_lost = Counter(
            "streamlearn_state_lost", "Times Redis held no checkpoint although Kafka had committed offsets.",
            registry=r)
        self.syncs = Counter(
            "streamlearn_syncs", "Group-scope syncs (each one a checkpoint) by outcome: ok, failed.", ["outcome"],
            registry=r)
        self.sync_seconds = Histogram(
            "streamlearn_sync_seconds", "Time a group-scope sync spends on deltas, merges and views (the "
            "checkpoint's snapshot and Redis write not included).", buckets=LATENCY_BUCKETS, registry=r)
        self.sync_bytes = Counter(
            "streamlearn_sync_bytes", "Bytes of deltas and views a group-scope sync published or read.",
            ["direction"], registry=r)
        self.sync_pulls = Counter(
            "streamlearn_sync_pulls", "Reads of the other members' deltas between syncs (sync.pull_every_s) that "
            "found some.", registry=r)
        self.sync_pull_seconds = Histogram(
            "streamlearn_sync_pull_seconds", "Time a pull that found deltas spent reading and learning them.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.sync_deltas_lost = Counter(
            "streamlearn_sync_deltas_lost", "Deltas a restore could not read back because the group's delta stream "
            "was trimmed past its checkpoint (sync.max_deltas).", registry=r)
        self.sync_replay_dropped = Counter(
            "streamlearn_sync_replay_dropped", "Examples a model in replay mode learned but could not record for the "
            "group because its buffer was full (sync.replay_max_examples).", registry=r)
        self.join_entries = Gauge(
            "streamlearn_label_join_entries", "Predictions waiting for their label in the join buffer.",
            registry=r)
        self.join_held = Gauge(
            "streamlearn_label_join_held", "Labels held in the join buffer until their event comes (bounded by "
            "labels.max_held).", registry=r)
        self.join_evictions = Counter(
            "streamlearn_label_join_evictions", "Join entries dropped to keep the buffer within its bound.",
            registry=r)
        self.dedup_entries = Gauge(
            "streamlearn_dedup_entries", "Event ids in the dedup window.", registry=r)
        self.entity_keys = Gauge(
            "streamlearn_entity_keys", "Entities with per-entity aggregates.", registry=r)
        self.entity_evictions = Counter(
            "streamlearn_entity_evictions", "Entities dropped, least recently updated first, to keep the entity "
            "store within entities.max_entities.", registry=r)
        self.redis_up = Gauge(
            "streamlearn_redis_up", "1 when the last Redis operation succeeded.", registry=r)
        self.kafka_up = Gauge(
            "streamlearn_kafka_up", "1 when the last Kafka poll or send succeeded.", registry=r)
        self.ready = Gauge(
            "streamlearn_ready", "1 when the worker is assigned, restored and processing.", registry=r)
        self.info = Gauge(
            "streamlearn_build_info", "Versions of streamlearn and its libraries (value is always 1).",
            ["streamlearn", "river", "torch", "kafka_python"], registry=r)


def catalogue() -> list[MetricSpec]:
    """The exported catalogue, read off a fresh registry (so it cannot drift from the code)."""
    registry = CollectorRegistry()
    Metrics(registry)
    specs: list[MetricSpec] = []
    for family in registry.collect():
        kind = family.type
        name = family.name + ("_total" if kind == "counter" else "")
        labels: tuple[str, ...] = ()
        # prometheus_client keeps label names on the collector, not on an empty family.
        collector = registry._names_to_collectors.get(name) or registry._names_to_collectors.get(family.name)
        if collector is not None:
            labels = tuple(getattr(collector, "_labelnames", ()))
        specs.append(MetricSpec(name=name, kind=kind, labels=labels, help=family.documentation))
    return sorted(specs, key=lambda s: s.name)


def exported_names() -> set[str]:
    """Every series name a scrape can contain (with _bucket/_sum/_count and _created suffixes)."""
    names: set[str] = set()
    for spec in catalogue():
        if spec.kind == "histogram":
            names |= {f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
        else:
            names.add(spec.name)
    return names
