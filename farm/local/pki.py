"""Mutual TLS for SeaweedFS's gRPC ports (the embedded S3 store of the local stack).

JWT signing closes weed's HTTP ports (filer, volume), but its gRPC ports (each part's port +
10000) answer anyone: ``weed shell`` with no credentials lists every object's name and size
through the filer, and can write entries. SeaweedFS closes them with mutual TLS: every part
presents a certificate signed by one CA and accepts only peers that do (``security.toml``'s
``[grpc]`` sections, here through ``WEED_GRPC_*`` environment variables). The CA's key signs the
one certificate the parts share and is then thrown away: nothing else can be signed later.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

# Every part of weed that serves or calls gRPC (``weed scaffold -config=security``).
PARTS = ("master", "volume", "filer", "s3", "admin", "worker", "mq", "msg_broker", "msg_agent")


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def grpc_tls_env(folder: Path, host: str = "127.0.0.1", days: int = 3650) -> dict[str, str]:
    """Write a CA certificate and the parts' certificate and key to ``folder`` (0600, made
    once and reused); returns the environment that makes weed require them on gRPC."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_path, cert_path, key_path = folder / "ca.crt", folder / "weed.crt", folder / "weed.key"
    if not (ca_path.exists() and cert_path.exists() and key_path.exists()):
        ca, cert, key = _issue(host, days)
        _write(ca_path, ca)
        _write(cert_path, cert)
        _write(key_path, key)
    env = {"WEED_GRPC_CA": str(ca_path)}
    for part in (*PARTS, "client"):
        env[f"WEED_GRPC_{part.upper()}_CERT"] = str(cert_path)
        env[f"WEED_GRPC_{part.upper()}_KEY"] = str(key_path)
    return env


def _issue(host: str, days: int) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, leaf certificate, leaf key) as PEM; the CA key is not kept."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "farm seaweedfs CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    if host != "127.0.0.1":
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "farm-seaweedfs")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        ca.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def main() -> None:
    """``python -m farm.local.pki DIR``: write the CA and certificate, print the WEED_GRPC_*
    variables that point at them (for a SeaweedFS run outside the local stack)."""
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m farm.local.pki DIR")
    for name, value in grpc_tls_env(Path(sys.argv[1])).items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
