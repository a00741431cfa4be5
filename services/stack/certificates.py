"""A throw-away certificate authority for TLS tests and local secure servers (the ``cryptography`` package).

``make_local_pki(directory)`` writes a CA, a server certificate for ``localhost`` and ``127.0.0.1`` (both in the
subject alternative names, so hostname checks pass on loopback) and a client certificate, all PEM with
unencrypted PKCS#8 keys, valid for a day. Production certificates come from your own CA (docs/deploy.md).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class LocalPki:
    """Paths of the PEM files ``make_local_pki`` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    #: the server's key followed by its certificate (Kafka's ``ssl.keystore.type=PEM`` file)
    server_keystore: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "streamlearn test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey, *,
    ca: bool, usage: x509.ObjectIdentifier | None = None, hosts: tuple[str, ...] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_local_pki(directory: Path, *, hosts: tuple[str, ...] = LOOPBACK_NAMES, ca_name: str = "test CA") -> LocalPki:
    """Write a fresh CA, a server and a client certificate under ``directory`` (created); their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(ca_name, ca_key, _name(ca_name), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue("server", server_key, ca_cert.subject, ca_key, ca=False,
                         usage=None, hosts=hosts)  # no EKU: Kafka's broker also uses it as a client
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("client", client_key, ca_cert.subject, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pki = LocalPki(
        ca_cert=directory / "ca.pem", server_cert=directory / "server.pem", server_key=directory / "server.key",
        server_keystore=directory / "server-keystore.pem", client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    pem = serialization.Encoding.PEM
    pki.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    pki.server_cert.write_bytes(server_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    pki.client_cert.write_bytes(client_cert.public_bytes(pem))
    for path, key in ((pki.server_key, server_key), (pki.client_key, client_key)):
        path.write_bytes(_key_pem(key))
        path.chmod(0o600)
    pki.server_keystore.write_bytes(_key_pem(server_key) + server_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    pki.server_keystore.chmod(0o600)
    return pki
