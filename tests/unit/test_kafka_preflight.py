"""The start-up check's own Kafka protocol pieces: SCRAM against RFC 7677's example, addresses, TLS wording."""

from __future__ import annotations

import struct

import pytest

from shared.kafka import preflight

# RFC 7677, section 3: user "user", password "pencil"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _authenticate_response(payload: bytes, error: int = 0, message: str | None = None) -> bytes:
    encoded = b"" if message is None else message.encode()
    text = struct.pack(">h", -1 if message is None else len(encoded)) + encoded
    return struct.pack(">h", error) + text + struct.pack(">i", len(payload)) + payload


class ScriptedBroker:
    """Answers SaslAuthenticate requests from a script and records what the client sent."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.sent: list[bytes] = []

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        assert api_key == preflight.SASL_AUTHENTICATE
        (size,) = struct.unpack(">i", body[:4])
        self.sent.append(body[4:4 + size])
        return self.answers.pop(0)


def test_scram_sha_256_matches_the_rfc_example() -> None:
    broker = ScriptedBroker([_authenticate_response(SERVER_FIRST.encode()),
                             _authenticate_response(SERVER_FINAL.encode())])
    preflight._scram(broker, "SCRAM-SHA-256", "user", "pencil", nonce=CLIENT_NONCE)  # type: ignore[arg-type]
    assert broker.sent == [f"n,,n=user,r={CLIENT_NONCE}".encode(), CLIENT_FINAL.encode()]


def test_a_server_that_does_not_know_the_password_is_not_believed() -> None:
    broker = ScriptedBroker([_authenticate_response(SERVER_FIRST.encode()),
                             _authenticate_response(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")])
    with pytest.raises(preflight._Refused, match="could not prove it knows the password"):
        preflight._scram(broker, "SCRAM-SHA-256", "user", "pencil", nonce=CLIENT_NONCE)  # type: ignore[arg-type]


def test_the_brokers_refusal_is_quoted_with_what_to_check() -> None:
    refusal = _authenticate_response(b"", error=58, message="Authentication failed: invalid credentials")
    broker = ScriptedBroker([_authenticate_response(SERVER_FIRST.encode()), refusal])
    with pytest.raises(preflight._Refused, match=r"\(Authentication failed: invalid credentials\); check kafka.sasl"):
        preflight._scram(broker, "SCRAM-SHA-256", "user", "wrong", nonce=CLIENT_NONCE)  # type: ignore[arg-type]


def test_a_server_nonce_that_does_not_extend_ours_is_refused() -> None:
    broker = ScriptedBroker([_authenticate_response(b"r=someone-else,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")])
    with pytest.raises(preflight._Refused, match="not SCRAM"):
        preflight._scram(broker, "SCRAM-SHA-512", "user", "pencil", nonce=CLIENT_NONCE)  # type: ignore[arg-type]


def test_bootstrap_addresses() -> None:
    assert preflight._addresses("a:9093, b:9094,[::1]:9095,c") == [
        ("a", 9093), ("b", 9094), ("::1", 9095), ("c", 9092)]
