"""A start-up check that the Kafka brokers accept the configured security, with one clear line when they do not.

Neither client library says why a TLS or SASL connection failed: kafka-python retries until its bootstrap
timeout and reports ``Unable to bootstrap``, librdkafka a ``Broker transport failure``. Before the worker builds
its clients, :func:`check_kafka_security` opens one connection to a bootstrap server itself, with the same
settings, and speaks just enough of the protocol to tell the cases apart:

- TLS: the handshake, with ``ssl_cafile``, ``ssl_certfile``/``ssl_keyfile`` and ``ssl_check_hostname``
  (an untrusted or misnamed broker certificate, a required client certificate, a listener that is not TLS);
- PLAINTEXT: an ``ApiVersions`` request, which a TLS listener answers by closing the connection;
- SASL PLAIN and SCRAM-SHA-256/512: ``SaslHandshake`` and ``SaslAuthenticate`` (a wrong user or password, a
  mechanism the listener does not enable). Other mechanisms are left to the client library.

A broker that cannot be reached at all, or does not answer within the timeout, is not judged here (the worker's
connection handling reports and retries that); only a broker that answered and refused raises
:class:`KafkaSecurityError`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
from typing import Literal

from shared.settings import KafkaSettings
from shared.startup import StartupError

METADATA, API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 3, 18, 17, 36
#: the first byte of a TLS record: an alert (21) or a handshake (22) where a Kafka frame's size should be
TLS_RECORD_TYPES = (21, 22)
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE = 33, 34
CLIENT_ID = b"streamlearn-preflight"
MAX_RESPONSE_BYTES = 1 << 20


class KafkaSecurityError(StartupError):
    """A broker refused the configured TLS or SASL settings; the message is one line: address, cause, what to check."""


class _Refused(Exception):
    """The broker answered, and refused; the message says why and what to check."""


class _Unreachable(Exception):
    """No TCP connection (left to the client library's own reporting)."""


def _addresses(bootstrap_servers: str) -> list[tuple[str, int]]:
    addresses = []
    for item in bootstrap_servers.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        addresses.append((host.strip("[]") or item, int(port) if port.isdigit() else 9092))
    return addresses


def tls_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The TLS context the settings describe (the same files and hostname check the clients get)."""
    context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        password = settings.ssl_key_password.get_secret_value() if settings.ssl_key_password else None
        context.load_cert_chain(str(settings.ssl_certfile), str(settings.ssl_keyfile), password)
    return context


class _Connection:
    """Length-prefixed Kafka requests (header v1) and responses (header v0) over one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.correlation = 0

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        self.correlation += 1
        header = struct.pack(">hhih", api_key, version, self.correlation, len(CLIENT_ID)) + CLIENT_ID
        payload = header + body
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)
        prefix = self._read(4)
        if prefix[0] in TLS_RECORD_TYPES:
            raise _Refused("the listener speaks TLS; check kafka.security_protocol (SSL or SASL_SSL) and "
                           "kafka.ssl_cafile")
        (size,) = struct.unpack(">i", prefix)
        if not 4 <= size <= MAX_RESPONSE_BYTES:
            raise _Refused(f"answered with a frame of {size} bytes, not Kafka's protocol; "
                           "check that the address is a Kafka listener of this security_protocol")
        response = self._read(size)
        (correlation,) = struct.unpack(">i", response[:4])
        if correlation != self.correlation:
            raise _Refused("answered out of turn; check that the address is a Kafka listener")
        return response[4:]

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionResetError("closed")
            data += chunk
        return data


def _string(value: str) -> bytes:
    encoded = value.encode()
    return struct.pack(">h", len(encoded)) + encoded


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


def _authenticate(connection: _Connection, mechanism: str, message: bytes) -> bytes:
    """One SaslAuthenticate round; the server's bytes, or _Refused with the broker's own error message."""
    body = connection.request(SASL_AUTHENTICATE, 0, _bytes(message))
    (error,) = struct.unpack(">h", body[:2])
    (length,) = struct.unpack(">h", body[2:4])
    offset = 4 + max(length, 0)
    text = body[4:offset].decode(errors="replace") if length > 0 else ""
    if error != 0:
        raise _Refused(f"SASL {mechanism} authentication failed ({text or f'error {error}'}); "
                       "check kafka.sasl_username and kafka.sasl_password")
    (size,) = struct.unpack(">i", body[offset:offset + 4])
    return body[offset + 4:offset + 4 + max(size, 0)]


def _scram(connection: _Connection, mechanism: str, username: str, password: str, nonce: str | None = None) -> None:
    """RFC 5802 client side (no channel binding), as Kafka's SCRAM-SHA-256/512 expects (``nonce``: for tests)."""
    digest = "sha512" if mechanism.endswith("512") else "sha256"
    name = username.replace("=", "=3D").replace(",", "=2C")
    nonce = nonce or base64.b64encode(secrets.token_bytes(24)).decode()
    first_bare = f"n={name},r={nonce}"
    server_first = _authenticate(connection, mechanism, f"n,,{first_bare}".encode()).decode()
    fields = dict(part.split("=", 1) for part in server_first.split(",") if "=" in part)
    if not fields.get("r", "").startswith(nonce) or "s" not in fields or "i" not in fields:
        raise _Refused(f"SASL {mechanism}: the broker's first message is not SCRAM ({server_first[:80]!r})")
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    stored_key = hashlib.new(digest, client_key).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, digest).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    server_final = _authenticate(connection, mechanism, f"{without_proof},p={proof}".encode()).decode()
    expected = hmac.new(hmac.new(salted, b"Server Key", digest).digest(), auth_message, digest).digest()
    if server_final != "v=" + base64.b64encode(expected).decode():
        raise _Refused(f"SASL {mechanism}: the broker could not prove it knows the password "
                       f"({server_final[:80]!r}); check that kafka.bootstrap_servers names your cluster")


def _sasl(connection: _Connection, settings: KafkaSettings) -> None:
    mechanism = (settings.sasl_mechanism or "").upper()
    if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        return  # GSSAPI, OAUTHBEARER: the client library does the talking
    body = connection.request(SASL_HANDSHAKE, 1, _string(mechanism))
    (error,) = struct.unpack(">h", body[:2])
    if error == UNSUPPORTED_SASL_MECHANISM:
        (count,) = struct.unpack(">i", body[2:6])
        offered, offset = [], 6
        for _ in range(max(count, 0)):
            (length,) = struct.unpack(">h", body[offset:offset + 2])
            offered.append(body[offset + 2:offset + 2 + length].decode())
            offset += 2 + length
        raise _Refused(f"the listener does not enable SASL {mechanism} (it offers {', '.join(offered) or 'none'}); "
                       "check kafka.sasl_mechanism")
    if error == ILLEGAL_SASL_STATE:
        raise _Refused("the listener does not take SASL; check kafka.security_protocol (SSL or PLAINTEXT)")
    if error != 0:
        raise _Refused(f"SASL handshake refused (error {error}); check kafka.sasl_mechanism")
    username = settings.sasl_username or ""
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    if mechanism == "PLAIN":
        _authenticate(connection, mechanism, f"\0{username}\0{password}".encode())
    else:
        _scram(connection, mechanism, username, password)


def _tls_refusal(exc: ssl.SSLError, settings: KafkaSettings) -> str:
    reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "hostname" in str(reason).lower() or "ip address mismatch" in str(reason).lower():
            return (f"the broker's certificate does not name this host ({reason}); check kafka.bootstrap_servers "
                    "against the certificate's names (or kafka.ssl_check_hostname)")
        return (f"the broker's certificate is not trusted ({reason}); check that kafka.ssl_cafile "
                f"({settings.ssl_cafile or 'the system trust store'}) holds the CA that signed it")
    text = str(reason).upper()
    if "WRONG_VERSION_NUMBER" in text or "PACKET_LENGTH_TOO_LONG" in text or "RECORD_LAYER" in text:
        return ("the listener does not speak TLS; check kafka.security_protocol "
                "(PLAINTEXT or SASL_PLAINTEXT for this listener) and the port")
    if "CERTIFICATE_REQUIRED" in text or "HANDSHAKE_FAILURE" in text or "BAD_CERTIFICATE" in text:
        return (f"the TLS handshake was refused ({reason}); the listener may require a client certificate: check "
                "kafka.ssl_certfile and kafka.ssl_keyfile (signed by a CA the broker trusts)")
    return f"the TLS handshake failed ({reason}); check kafka.ssl_cafile, kafka.ssl_certfile and kafka.ssl_keyfile"


def _check_one(host: str, port: int, settings: KafkaSettings, timeout_s: float) -> None:
    protocol = settings.security_protocol
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise _Unreachable(str(exc)) from exc
    sock: socket.socket = raw
    stage: Literal["tls", "protocol", "sasl", "metadata"] = "protocol"
    try:
        if protocol in ("SSL", "SASL_SSL"):
            stage = "tls"
            try:
                sock = tls_context(settings).wrap_socket(raw, server_hostname=host)
            except ssl.SSLError as exc:
                raise _Refused(_tls_refusal(exc, settings)) from exc
            stage = "protocol"
        connection = _Connection(sock)
        connection.request(API_VERSIONS, 0, b"")
        stage = "sasl"
        if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
            _sasl(connection, settings)
        stage = "metadata"
        connection.request(METADATA, 1, struct.pack(">i", 0))  # the brokers, no topics
    except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
        if stage == "metadata" and protocol in ("PLAINTEXT", "SSL"):
            raise _Refused(f"the broker closed the connection on a metadata request; the listener may expect SASL: "
                           f"check kafka.security_protocol (SASL_{protocol}) and kafka.sasl_mechanism") from exc
        if stage == "tls":
            raise _Refused("the broker closed the connection during the TLS handshake; check kafka.ssl_certfile "
                           "and kafka.ssl_keyfile (a client certificate it trusts)") from exc
        if protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
            raise _Refused(f"the broker closed the connection on a {protocol} request; the listener may expect TLS: "
                           "check kafka.security_protocol (SSL or SASL_SSL) and kafka.bootstrap_servers") from exc
        raise _Refused("the broker closed the connection after the TLS handshake; check kafka.security_protocol "
                       "(SSL or SASL_SSL, as the listener expects) and the client certificate") from exc
    except ssl.SSLError as exc:
        raise _Refused(_tls_refusal(exc, settings)) from exc
    except TimeoutError as exc:  # a broker still starting, or overloaded: not a refusal; the clients retry
        raise _Unreachable(f"no answer within {timeout_s:.0f} s") from exc
    finally:
        sock.close()


def check_kafka_security(settings: KafkaSettings, *, timeout_s: float = 5.0) -> None:
    """Raise :class:`KafkaSecurityError` when the first bootstrap server that answers refuses these settings.

    Returns quietly when it accepts them, and when no bootstrap server can be reached at all.
    """
    for host, port in _addresses(settings.bootstrap_servers):
        try:
            _check_one(host, port, settings, timeout_s)
        except _Unreachable:
            continue
        except _Refused as exc:
            raise KafkaSecurityError(
                f"Kafka at {host}:{port} refused {settings.security_protocol}: {exc}"
            ) from None
        except OSError as exc:  # a file named by ssl_cafile/ssl_certfile/ssl_keyfile cannot be read
            raise KafkaSecurityError(
                f"Kafka at {host}:{port}: cannot set up {settings.security_protocol} ({exc}); "
                "check kafka.ssl_cafile, kafka.ssl_certfile and kafka.ssl_keyfile"
            ) from None
        return
