"""TLS and SASL settings reach both Kafka clients and the Redis client with the names each library expects."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.kafka.clients import security_options
from shared.kafka.confluent import common_config
from shared.settings import KafkaSettings, RedisSettings, load_settings
from shared.state.connection import redis_options

SCRAM_TLS = {
    "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "alice",
    "sasl_password": "alice-secret", "ssl_cafile": "/certs/ca.pem", "ssl_certfile": "/certs/client.pem",
    "ssl_keyfile": "/certs/client.key", "ssl_key_password": "key-secret", "ssl_check_hostname": False,
}


def test_kafka_python_options() -> None:
    options = security_options(KafkaSettings(**SCRAM_TLS))
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == \
        ("SCRAM-SHA-512", "alice", "alice-secret")
    assert (options["ssl_cafile"], options["ssl_certfile"], options["ssl_keyfile"]) == \
        ("/certs/ca.pem", "/certs/client.pem", "/certs/client.key")
    assert options["ssl_password"] == "key-secret"
    assert options["ssl_check_hostname"] is False


def test_librdkafka_options() -> None:
    config = common_config(KafkaSettings(**SCRAM_TLS))
    assert config["security.protocol"] == "SASL_SSL"
    assert (config["sasl.mechanism"], config["sasl.username"], config["sasl.password"]) == \
        ("SCRAM-SHA-512", "alice", "alice-secret")
    assert (config["ssl.ca.location"], config["ssl.certificate.location"], config["ssl.key.location"]) == \
        ("/certs/ca.pem", "/certs/client.pem", "/certs/client.key")
    assert config["ssl.key.password"] == "key-secret"
    assert config["ssl.endpoint.identification.algorithm"] == "none"
    assert common_config(KafkaSettings(security_protocol="SSL"))["ssl.endpoint.identification.algorithm"] == "https"


def test_plaintext_gets_no_tls_options() -> None:
    settings = KafkaSettings(ssl_cafile=Path("/certs/ca.pem"))
    assert not any(k.startswith("ssl") for k in security_options(settings))
    assert not any(k.startswith("ssl") for k in common_config(settings))


def test_sasl_needs_a_mechanism_and_credentials() -> None:
    with pytest.raises(ValueError, match="needs sasl_mechanism, sasl_username and sasl_password"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="alice")


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="ssl_certfile and ssl_keyfile go together"):
        KafkaSettings(security_protocol="SSL", ssl_certfile=Path("/certs/client.pem"))
    with pytest.raises(ValueError, match="ssl_certfile and ssl_keyfile go together"):
        RedisSettings(url="rediss://127.0.0.1:6380/0", ssl_keyfile=Path("/certs/client.key"))


def test_redis_tls_options() -> None:
    settings = RedisSettings(url="rediss://127.0.0.1:6380/0", username="worker", password="redis-secret",
                             ssl_ca_certs=Path("/certs/ca.pem"))
    options = redis_options(settings)
    assert options == {"username": "worker", "password": "redis-secret", "ssl_cert_reqs": "required",
                       "ssl_check_hostname": True, "ssl_ca_certs": "/certs/ca.pem"}
    assert redis_options(RedisSettings()) == {}


def test_redis_tls_files_need_a_rediss_url() -> None:
    with pytest.raises(ValueError, match="need a rediss:// URL"):
        RedisSettings(url="redis://127.0.0.1:6379/0", ssl_ca_certs=Path("/certs/ca.pem"))


def test_secrets_are_masked_in_the_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLEARN_REDIS__PASSWORD", "redis-secret")
    dump = str(load_settings(None, kafka=SCRAM_TLS).masked_dump())
    assert "alice-secret" not in dump and "key-secret" not in dump and "redis-secret" not in dump
