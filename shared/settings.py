"""Settings: frozen pydantic models read once at start-up from a YAML file plus ``STREAMLEARN_`` variables.

Environment variables override the file; nested fields use ``__`` (``STREAMLEARN_KAFKA__BOOTSTRAP_SERVERS``).
Secrets are ``SecretStr`` and print as ``**********`` in every dump and log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from shared.learners.base import Task


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TopicSettings(_Frozen):
    """Topic names (all configurable)."""

    events: str = "events"
    labels: str = "labels"
    predictions: str = "predictions"
    shadow_predictions: str = "predictions.shadow"
    dead_letters: str = "events.dlq"


class KafkaSettings(_Frozen):
    """How the worker talks to Kafka."""

    bootstrap_servers: str = "127.0.0.1:9092"
    #: the client library: ``auto`` (the default: librdkafka through confluent-kafka when it imports, else
    #: kafka-python), ``confluent`` (librdkafka: far less CPU per record and lower latency) or ``kafka-python``
    #: (pure Python; docs/architecture.md, "Kafka transports")
    client: Literal["auto", "kafka-python", "confluent"] = "auto"
    group_id: str = "streamlearn"
    client_id: str = "streamlearn-worker"
    topics: TopicSettings = TopicSettings()
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = Field(500, ge=1, le=100_000)
    poll_timeout_ms: int = Field(100, ge=1, le=60_000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    session_timeout_ms: int = Field(10_000, ge=1_000)
    #: static group membership (KIP-345): stable and unique per worker instance (a pod's name, say). A worker
    #: restarted under the same id within ``session_timeout_ms`` gets its partitions back without a rebalance of the
    #: group; one that stops keeps its partitions, unread, until the session times out (a static member does not
    #: leave the group when it closes). None: dynamic membership (docs/operations.md, "Restarts without a rebalance")
    group_instance_id: str | None = Field(None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    #: kafka-python only: how long building a client waits for its first broker connection before it gives up
    #: (librdkafka keeps retrying in the background; the start-up check reports an unreachable broker either way)
    bootstrap_timeout_ms: int = Field(30_000, ge=1_000)
    #: how long the broker holds a fetch when no data is there (data arriving answers it at once); small, so that
    #: an idle consumer notices new records quickly (docs/operations.md, "Latency")
    fetch_max_wait_ms: int = Field(5, ge=0, le=10_000)
    #: how long the producer waits to fill a batch: at most this much latency at low rates; at high rates batches
    #: fill while earlier requests are in flight anyway
    linger_ms: int = Field(1, ge=0, le=10_000)
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    #: predictions, dead letters and consumer offsets in one Kafka transaction per commit (worker.commit_*)
    exactly_once: bool = True
    transactional_id_prefix: str = "streamlearn"
    #: stable and unique per worker instance (a pod name, say), so a restarted worker fences its old self
    transactional_id: str | None = None
    #: reconnect to a broker that went away at most this long apart (kafka-python's default is 30 s)
    reconnect_backoff_max_ms: int = Field(1_000, ge=50, le=60_000)
    #: the broker aborts a transaction left open this long (a worker that died and did not come back)
    transaction_timeout_ms: int = Field(60_000, ge=1_000)
    #: how long one transactional step (offsets, commit, init) may wait before the worker gives the
    #: transaction up, builds a new producer and rewinds to the committed offsets (exactly-once mode)
    transaction_op_timeout_ms: int = Field(30_000, ge=1_000)
    #: the latency/throughput knob of the poll loop: a poll that found fewer than 64 records waits up to this long
    #: for more, so that per-batch costs (Redis round trips, metric exports) are shared by more records at moderate
    #: rates; every record then waits up to this long (0: a poll hands over what is there at once; librdkafka only)
    batch_wait_ms: int = Field(0, ge=0, le=1_000)
    #: TLS (``security_protocol`` SSL or SASL_SSL): the PEM bundle of the CA(s) that signed the brokers'
    #: certificates (None: the system's trust store)
    ssl_cafile: Path | None = None
    #: a client certificate (PEM) and its private key, for brokers that require one (``ssl.client.auth=required``)
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: the password of an encrypted ``ssl_keyfile``
    ssl_key_password: SecretStr | None = None
    #: check that the broker's certificate names the host in ``bootstrap_servers`` (turn off only for tests)
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password is not None
        ):
            raise ValueError(f"kafka: security_protocol {self.security_protocol} needs sasl_mechanism, "
                             "sasl_username and sasl_password")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("kafka: ssl_certfile and ssl_keyfile go together")
        if self.group_instance_id in (".", ".."):
            raise ValueError("kafka: group_instance_id cannot be '.' or '..'")
        return self


class RedisSettings(_Frozen):
    """Where the worker keeps its state."""

    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    namespace: str = "streamlearn"
    #: an ACL user and its password (``AUTH``), kept out of the URL so the password can come from a secret
    #: (``STREAMLEARN_REDIS__PASSWORD``); a user or password in the URL works too, these override it
    username: str | None = None
    password: SecretStr | None = None
    #: TLS (a ``rediss://`` URL): the PEM bundle of the CA that signed the server's certificate (None: the system's)
    ssl_ca_certs: Path | None = None
    #: a client certificate and key (PEM), for a server with ``tls-auth-clients yes``
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: check that the server's certificate names the host in the URL
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _tls_needs_rediss(self) -> RedisSettings:
        tls_files = (self.ssl_ca_certs, self.ssl_certfile, self.ssl_keyfile)
        if any(f is not None for f in tls_files) and not self.url.get_secret_value().startswith("rediss://"):
            raise ValueError("redis: ssl_ca_certs, ssl_certfile and ssl_keyfile need a rediss:// URL")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("redis: ssl_certfile and ssl_keyfile go together")
        return self


class MetricsSettings(_Frozen):
    """The HTTP endpoint for /metrics, /healthz and /ready."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    rolling_window: int = Field(1000, ge=10, le=1_000_000)
    #: the model-quality gauges are refreshed at most this often (0: after every batch); a scrape sees values at
    #: most this old, and a poll of a few records does not pay for recomputing every score
    export_interval_s: float = Field(1.0, ge=0.0, le=60.0)
    enabled: bool = True
    #: on shutdown, keep /metrics up until one scrape that began after the final values were set (or this many
    #: seconds): the counters a group-wide ratio sums then include everything this worker counted (0: do not wait;
    #: nothing is waited for when the endpoint was never scraped). Set it a little above the scrape interval
    final_scrape_wait_s: float = Field(0.0, ge=0.0, le=300.0)


class LimitSettings(_Frozen):
    """Bounds on what an event may be."""

    max_payload_bytes: int = Field(64 * 1024, ge=64)
    max_features: int = Field(512, ge=1)
    max_id_length: int = Field(256, ge=1)
    max_string_length: int = Field(1024, ge=1)
    #: stop the worker when more than this share of the last ``dead_letter_window`` records is invalid
    #: (``null``: no ratio limit); the events topic and the labels topic are counted apart, each with these limits
    dead_letter_max_ratio: float | None = Field(0.5, gt=0.0, le=1.0)
    dead_letter_window: int = Field(1000, ge=10, le=1_000_000)
    #: stop the worker after more than this many invalid records in a row (``null``: no limit)
    dead_letter_max_consecutive: int | None = Field(None, ge=1)
    #: the largest absolute value of a numeric feature (and of a regression label); beyond it: ``value_out_of_range``
    max_abs_value: float = Field(1e15, gt=0.0, lt=float("inf"))
    #: an event or label ``ts`` further than this in the future is refused (``ts_out_of_window``; ``null``: no bound)
    ts_max_future_s: float | None = Field(86_400.0, ge=0.0)
    #: ... or older than this (``null``, the default: no bound, so historical streams can be replayed)
    ts_max_age_s: float | None = Field(None, ge=0.0)
    #: accept events whose ``features`` object is empty (otherwise ``no_features``)
    allow_empty_features: bool = False


class PiiSettings(_Frozen):
    """Features whose values are masked before anything else sees them."""

    drop: tuple[str, ...] = ()
    hash: tuple[str, ...] = ()
    #: mask e-mail addresses and long digit runs (card, phone numbers) found inside string values
    scrub_strings: bool = True
    #: the secret of the keyed hash (HMAC-SHA256) of the ``hash`` features; required when ``hash`` names any, at
    #: least 32 bytes, never the checkpoint key (``STREAMLEARN_CLEANING__PII__HASH_KEY``; docs/security.md)
    hash_key: SecretStr | None = None
    #: the copy of a dead-lettered event: ``keep`` the original bytes, or ``drop_fields``: the event with the
    #: ``drop`` features removed and the ``hash`` features hashed (a record that is not such an event: no value)
    dead_letters: Literal["keep", "drop_fields"] = "keep"


class CleaningSettings(_Frozen):
    """What the clean step does to valid events."""

    #: replace a missing (null) value of these features by a constant before featurization
    defaults: dict[str, float | str | bool] = Field(default_factory=dict)
    pii: PiiSettings = PiiSettings()


class PreprocessingSettings(_Frozen):
    """River online preprocessing put in front of every River model."""

    scale_numbers: bool = True
    one_hot_categories: bool = True
    #: impute missing numeric values with their running mean (River ``StatImputer``)
    impute_missing: bool = True


class ModelSettings(_Frozen):
    """One model of the stream. ``kind`` picks the learner family; ``estimator`` the River class."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: str = "river"
    estimator: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    task: Task | None = None


class ChampionSettings(_Frozen):
    """Which model's predictions go to the predictions topic."""

    #: always this model (no automatic switching)
    pinned: str | None = None
    #: the rolling metric that ranks models; for error metrics (mae, rmse, log_loss) lower is better
    metric: Literal["accuracy", "f1", "roc_auc", "log_loss", "mae", "rmse", "r2"] = "accuracy"
    #: a challenger must beat the champion by this much (absolute) to take over
    margin: float = Field(0.02, ge=0.0)
    #: labels scored since the last switch before another switch may happen
    min_labels: int = Field(500, ge=1)
    #: ``group``: one champion for the consumer group, ranked on group-wide rolling scores kept in Redis and the
    #: same on every worker; ``worker``: each worker ranks the scores it saw itself (the behaviour before group scope)
    scope: Literal["group", "worker"] = "group"
    #: in ``group`` scope, how often (seconds) a worker adds its scores to Redis and reads the champion back (also
    #: whenever a tenth of metrics.rolling_window labels is pending): the workers agree on the champion within this
    #: interval (0: after every batch)
    refresh_s: float = Field(0.5, ge=0.0, le=60.0)


class CheckpointSettings(_Frozen):
    """Model snapshots with the offsets they reflect, saved to Redis."""

    enabled: bool = True
    every_events: int = Field(5_000, ge=1)
    every_seconds: float = Field(10.0, ge=0.0)
    max_backoff_s: float = Field(30.0, ge=1.0)
    #: at most this fraction of the worker's time goes to periodic checkpoints: one that took t seconds defers the
    #: next until t / max_time_fraction seconds after its start (cheap models keep every_events/every_seconds;
    #: a large forest is checkpointed less often, so a crash replays more, learning only)
    max_time_fraction: float = Field(0.02, gt=0.0, le=1.0)
    #: periodic checkpoints of River models are pickled and written by a forked child process (copy-on-write), so
    #: the poll loop does not wait for them (Linux only); torch models and forced checkpoints are saved in the loop
    background: bool = True
    #: ... but only once the last checkpoint took at least this long (snapshot and Redis write, in milliseconds), or
    #: would at that cost scaled by the events processed since it was measured (a fresh start's first: estimated from
    #: the model-memory walk): a fork stalls the loop for a few milliseconds of its own, longer than a small model's
    #: whole checkpoint; 0 sends every periodic one to a child
    background_min_ms: float = Field(20.0, ge=0.0)
    #: Redis holds no checkpoint although Kafka has committed offsets: start fresh models from the committed
    #: offsets, or rebuild them by learning again (without publishing) from the earliest retained offsets
    on_state_lost: Literal["fresh", "rebuild"] = "fresh"


class DataDriftSettings(_Frozen):
    """Per-feature, label and prediction drift between a reference window and the recent window."""

    enabled: bool = True
    reference_size: int = Field(default=1000, ge=2)
    recent_size: int = Field(default=1000, ge=2)
    bins: int = Field(default=10, ge=2, le=100)
    #: at most this many feature names are tracked (the first seen); bounds memory and label cardinality
    max_features: int = Field(default=100, ge=1, le=10_000)
    #: export the gauges of the ``top_k`` features with the highest PSI
    top_k: int = Field(default=10, ge=1, le=1000)
    #: replace the reference by the recent window every this many values (None: keep the first reference)
    refresh_every: int | None = Field(default=None, ge=2)


class DriftSettings(_Frozen):
    """Concept drift on each model's error stream, the reaction to it, and data drift (see docs/drift.md)."""

    enabled: bool = True
    detector: Literal["adwin", "page_hinkley", "hddm_a", "ddm", "kswin"] = "adwin"
    #: detector parameters, over the defaults of shared/monitoring/drift.py
    params: dict[str, Any] = Field(default_factory=dict)
    #: only a rise in error is a drift
    rise_only: bool = True
    #: none; reset the drifted model; or make the best challenger champion when the champion drifts
    reaction: Literal["none", "reset", "promote"] = "none"
    #: scores and gauges are recomputed at most this often
    export_interval_s: float = Field(default=5.0, ge=0.0)
    data: DataDriftSettings = DataDriftSettings()


class DedupSettings(_Frozen):
    """Events whose id was already seen within ``window_s`` are neither predicted nor learned (state in Redis)."""

    enabled: bool = True
    #: counted from an id's first sighting; a repeat does not extend it
    window_s: float = Field(3600.0, gt=0)
    #: ids kept at most (oldest dropped first): bounds Redis memory
    max_entries: int = Field(1_000_000, ge=1)


class EntitySettings(_Frozen):
    """Rolling aggregates per entity (the event's ``key``) added to the features (state in Redis).

    Features: ``<prefix>count``, ``<prefix>count_total``, ``<prefix>seconds_since_last`` and, per field in
    ``fields``, ``<prefix><field>_mean`` / ``_min`` / ``_max`` over the last ``last_n`` events and/or those of
    the last ``last_seconds`` seconds, as of before the event (docs/state.md).
    """

    enabled: bool = False
    fields: tuple[str, ...] = ()
    last_n: int | None = Field(None, ge=1)
    last_seconds: float | None = Field(None, gt=0)
    #: entities kept at most (least recently updated evicted first)
    max_entities: int = Field(100_000, ge=1)
    #: events kept per entity (default ``2 * last_n``, or 1000 for a time window alone)
    max_history: int | None = Field(None, ge=1)
    prefix: str = Field("entity_", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _window_set(self) -> EntitySettings:
        if self.enabled and self.last_n is None and self.last_seconds is None:
            raise ValueError("entities: set last_n, last_seconds or both")
        if self.max_history is not None and self.max_history < (self.last_n or 1):
            raise ValueError("entities: max_history must be at least last_n")
        return self


class LabelSettings(_Frozen):
    """The delayed-label join: predictions of unlabelled events wait in Redis for a label on the labels topic."""

    enabled: bool = True
    #: how long a prediction waits for its label; a label after that is counted late
    ttl_s: float = Field(3600.0, gt=0)
    #: predictions waiting at most (oldest evicted first; their labels then count as late)
    max_entries: int = Field(100_000, ge=1)
    #: how long a label that arrives before its event is held
    early_label_ttl_s: float = Field(30.0, gt=0)
    #: labels held at most (default ``max_entries``)
    max_held: int | None = Field(None, ge=1)
    #: joined records kept for duplicate detection and for records read again after a crash or a rebalance
    #: (default ``ttl_s``)
    joined_marker_ttl_s: float | None = Field(None, gt=0)
    #: how long a "prediction was made" marker tells a late label from an orphan (default ``4 * ttl_s``)
    late_marker_ttl_s: float | None = Field(None, gt=0)
    #: joined records kept at most (default ``max_entries``)
    max_joined: int | None = Field(None, ge=1)
    #: "prediction was made" markers kept at most (default ``4 * max_entries``)
    max_seen: int | None = Field(None, ge=1)


class WorkerSettings(_Frozen):
    """The worker's own knobs."""

    seed: int = 42
    commit_interval_s: float = Field(1.0, ge=0.0)
    commit_every_events: int = Field(10_000, ge=1)
    drain_timeout_s: float = Field(30.0, ge=0.0)
    #: at start, check that Kafka (and Redis, when a feature needs it) answer within ``connect_timeout_s``, and exit
    #: with one line naming the address when they do not (false: start anyway and wait for them, as in an outage)
    startup_checks: bool = True
    connect_timeout_s: float = Field(10.0, gt=0.0, le=300.0)
    #: how the records of this worker's partitions are interleaved before the steps: ``time``, merged by record
    #: timestamp (each partition's in offset order), so that one model reading several partitions learns the
    #: stream in the order it was produced, also while catching up on a backlog; ``arrival``, as polled (a
    #: consumer returns thousands of one partition's records before the next's)
    partition_order: Literal["time", "arrival"] = "time"
    #: ``time``: how long a partition the broker holds more records of may hold up the others' records before
    #: they go on without it (it is never waited for when it has nothing more to read)
    order_wait_ms: int = Field(200, ge=0, le=60_000)


class SyncSettings(_Frozen):
    """How the consumer group's workers share what their models learn (docs/architecture.md, "One model per group").

    ``scope: group``: each worker keeps one model set for all its partitions, and at every sync (which is always a
    checkpoint) it publishes what it learned since the last one and merges what the other workers published.
    ``scope: partition``: one model set per input partition, never merged (per-tenant or keyed models).
    """

    scope: Literal["group", "partition"] = "group"
    #: sync (and checkpoint) after this many events processed by this worker (the checkpoint duty-cycle bound,
    #: ``checkpoint.max_time_fraction``, spaces a slow model's syncs further, and a fast stream's: a sync's cost is
    #: at most that fraction of the loop) ...
    every_events: int = Field(100, ge=1)
    #: ... or this many seconds, whichever comes first
    every_s: float = Field(5.0, gt=0.0)
    #: until the group's model has learned this many labelled examples (all workers together), sync sooner: after
    #: as many examples learned as the model held at the last sync, at least 50 (a young model learns fastest,
    #: and a worker's first examples are worth most to the others). 0: every_events from the start
    warmup_examples: int = Field(5_000, ge=0)
    #: between syncs, look this often for what the other workers published and learn their examples at once
    #: (replay-mode models; the others merge at the next sync): one Redis read when there is nothing new. 0: only
    #: at syncs
    pull_every_s: float = Field(0.1, ge=0.0)
    #: the group's Redis stream of published deltas keeps at most about this many entries (bounded memory); a
    #: restore from a checkpoint older than the oldest kept entry loses the deltas trimmed since (counted)
    max_deltas: int = Field(10_000, ge=10)
    #: models that cannot merge (forests) vote with the other workers' models as of their last sync; a member's
    #: published model is dropped when it has not synced for this long
    view_ttl_s: float = Field(300.0, gt=0.0)
    #: and at most this many other members' models vote (bounded memory and prediction time)
    max_views: int = Field(16, ge=0)
    #: how models combine across workers (docs/models.md, "Merging across workers"): ``auto``, per kind the design
    #: the benchmark chose; ``replay``, every model learns the labelled examples the other workers learned since
    #: their last sync; ``native``, sufficient statistics add, parameters average (FedAvg), the rest vote
    merge: Literal["auto", "replay", "native"] = "auto"
    #: replay: at most this many examples per model wait for the next sync (bounded memory); beyond, an example is
    #: learned locally only, and counted (``streamlearn_sync_replay_dropped_total``)
    replay_max_examples: int = Field(20_000, ge=1)


class Settings(BaseSettings):
    """The whole configuration of a worker."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMLEARN_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    metrics: MetricsSettings = MetricsSettings()
    limits: LimitSettings = LimitSettings()
    cleaning: CleaningSettings = CleaningSettings()
    preprocessing: PreprocessingSettings = PreprocessingSettings()
    models: tuple[ModelSettings, ...] = (
        ModelSettings(name="logreg", estimator="river.linear_model.LogisticRegression"),
    )
    worker: WorkerSettings = WorkerSettings()
    champion: ChampionSettings = ChampionSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    drift: DriftSettings = DriftSettings()
    dedup: DedupSettings = DedupSettings()
    entities: EntitySettings = EntitySettings()
    labels: LabelSettings = LabelSettings()
    sync: SyncSettings = SyncSettings()
    #: signs model checkpoints (and verifies them); required: at least 32 bytes, never a placeholder
    #: (``python -c "import secrets; print(secrets.token_urlsafe(48))"``, docs/security.md)
    hmac_key: SecretStr | None = None
    #: more keys that verify checkpoints but never sign, for a rotation without losing a model
    #: (a comma-separated list in ``STREAMLEARN_HMAC_VERIFY_KEYS``; docs/security.md)
    hmac_verify_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    @field_validator("hmac_verify_keys", mode="before")
    @classmethod
    def _split_verify_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("models")
    @classmethod
    def _unique_model_names(cls, models: tuple[ModelSettings, ...]) -> tuple[ModelSettings, ...]:
        if not models:
            raise ValueError("at least one model is required")
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique, repeated: {', '.join(duplicates)}")
        return models

    @model_validator(mode="after")
    def _pinned_champion_exists(self) -> Settings:
        pinned = self.champion.pinned
        if pinned is not None and pinned not in {m.name for m in self.models}:
            raise ValueError(f"champion.pinned names {pinned!r}, which is not one of the models")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the YAML file passed as init arguments.
        return env_settings, init_settings

    def masked_dump(self) -> dict[str, Any]:
        """A JSON-ready dump with every secret masked."""
        return self.model_dump(mode="json")


class SettingsError(Exception):
    """The configuration is invalid; the message names each offending field."""


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any) and the environment into validated, frozen :class:`Settings`."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SettingsError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SettingsError(f"config file {path} must hold a mapping at the top level")
        data.update(loaded)
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        source = f" in {path}" if path else ""
        raise SettingsError(f"invalid configuration{source}: {problems}") from exc
