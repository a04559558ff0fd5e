"""A private certificate authority for one local platform: the CA and the leaf certificates its
internal gRPC endpoints (SeaweedFS's master, volume and filer) require of each other (mutual
TLS), so a process on the same host without them cannot speak to those ports."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 3650


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_local_pki(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    """Write ``ca.crt`` and a ``server`` and ``client`` key pair signed by it under ``directory``
    (all 0600, like everything in a Pylon home; reused when already there). Returns the paths by name."""
    paths = {n: directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}
    if all(p.exists() for p in paths.values()):
        return {k.replace(".", "_"): v for k, v in paths.items()}
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("pylon-local-ca")).issuer_name(_name("pylon-local-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(f"pylon-{role}")).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write_private(paths[f"{role}.key"], _key_pem(key))
        _write_private(paths[f"{role}.crt"], cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["ca.crt"], ca.public_bytes(serialization.Encoding.PEM))
    return {k.replace(".", "_"): v for k, v in paths.items()}
