"""Throwaway TLS material for the local Kafka's SSL listener: a CA, a broker and a client certificate.

Everything is PEM, which both the broker (``ssl.keystore.type=PEM``) and kafka-python read,
so no keytool or JKS step is needed. The keys are unencrypted and live only in the cluster's
own directory: this is for tests and laptops, never for a plant's brokers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM files are: the CA certificate, and a key + certificate per party."""

    ca_cert: Path
    broker_keystore: Path
    client_cert: Path
    client_key: Path


def write_tls_files(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                    days: int = 2) -> TlsFiles:
    """Create a CA and broker/client certificates it signs, valid for ``hosts``, under ``directory``."""
    # cryptography is a test extra (pyproject [test]): only an SSL listener needs it, so import it here
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "judo-inspect test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def certificate(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool, sans=()) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(name(subject)).issuer_name(issuer_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def pem_cert(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("judo-inspect test CA", ca_key, name("judo-inspect test CA"), ca_key, ca=True)
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker = certificate("kafka broker", broker_key, ca.subject, ca_key, ca=False, sans=sans)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = certificate("judo-inspect client", client_key, ca.subject, ca_key, ca=False)

    files = TlsFiles(directory / "ca.pem", directory / "broker-keystore.pem", directory / "client.pem",
                     directory / "client-key.pem")
    files.ca_cert.write_bytes(pem_cert(ca))
    files.broker_keystore.write_bytes(pem_key(broker_key) + pem_cert(broker) + pem_cert(ca))
    files.client_cert.write_bytes(pem_cert(client))
    files.client_key.write_bytes(pem_key(client_key))
    for path in (files.broker_keystore, files.client_key):
        path.chmod(0o600)
    return files
