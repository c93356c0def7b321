"""Development certificates and SuperNode keys for a TLS + authenticated Flower federation.

What a deployment needs (Flower 1.41):

- ``ca.crt``: a certificate authority the SuperNodes trust (``--root-certificates``);
- ``server.pem`` / ``server.key``: the SuperLink's TLS certificate, signed by the CA, valid for
  the host names and IP addresses the SuperNodes dial (``--ssl-certfile/--ssl-keyfile``);
- per SuperNode an EC (P-384) key pair in OpenSSH format: the private key stays at the site
  (``--auth-supernode-private-key``), the public key is registered with the SuperLink
  (``flwr supernode register``) when it runs with ``--enable-supernode-auth``.

These are *development* credentials: the CA key is written next to the certificates. In a real
consortium the CA lives offline with the consortium's security officer and each site generates
its own key pair and sends only the public key (see docs/deployment.md).

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> files = make_dev_certificates(out, supernodes=["site-a"])
    >>> sorted(p.name for p in files.values())[:3]
    ['ca.crt', 'ca.key', 'server.key']
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medidd.atomic import atomic_write_bytes
from medidd.optional import optional_import

logger = logging.getLogger(__name__)

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def _crypto() -> tuple[Any, Any, Any, Any, Any]:
    x509 = optional_import("cryptography.x509", extra="fl")
    oid = optional_import("cryptography.x509.oid", extra="fl")
    hashes = optional_import("cryptography.hazmat.primitives.hashes", extra="fl")
    ser = optional_import("cryptography.hazmat.primitives.serialization", extra="fl")
    ec = optional_import("cryptography.hazmat.primitives.asymmetric.ec", extra="fl")
    return x509, oid, hashes, ser, ec


def _pem_key(key: Any, ser: Any) -> bytes:
    return bytes(
        key.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
        )
    )


def _san(hosts: Sequence[str], x509: Any) -> list[Any]:
    names: list[Any] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_supernode_keys(out: Path, name: str) -> tuple[Path, Path]:
    """Write ``{name}`` (OpenSSH EC P-384 private key) and ``{name}.pub`` into ``out``.

    Returns the (private, public) paths. The private key file is created with mode 0600.
    """
    _, _, _, ser, ec = _crypto()
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
    public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    out = Path(out)
    priv_path, pub_path = out / name, out / f"{name}.pub"
    atomic_write_bytes(priv_path, bytes(private))
    priv_path.chmod(0o600)
    atomic_write_bytes(pub_path, bytes(public) + f" medidd-{name}\n".encode())
    pub_path.chmod(0o644)
    return priv_path, pub_path


def make_dev_certificates(
    out: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    supernodes: Sequence[str] = (),
    days: int = 30,
) -> dict[str, Path]:
    """Create a CA, a SuperLink server certificate for ``hosts`` and SuperNode key pairs.

    Args:
        out: folder to write into (created).
        hosts: DNS names / IP addresses the server certificate is valid for.
        supernodes: one key pair per name (``out/supernode-keys/{name}`` and ``.pub``).
        days: validity of the certificates.

    Returns:
        A map from role (``ca_cert``, ``ca_key``, ``server_cert``, ``server_key``,
        ``{name}.private``, ``{name}.public``) to the file written.
    """
    x509, oid, hashes, ser, ec = _crypto()
    out = Path(out)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, "MediDD dev CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_name = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, hosts[0])])
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(server_name)
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(_san(hosts, x509)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = {
        "ca_cert": out / "ca.crt",
        "ca_key": out / "ca.key",
        "server_cert": out / "server.pem",
        "server_key": out / "server.key",
    }
    atomic_write_bytes(files["ca_cert"], ca_cert.public_bytes(ser.Encoding.PEM))
    atomic_write_bytes(files["ca_key"], _pem_key(ca_key, ser))
    atomic_write_bytes(files["server_cert"], server_cert.public_bytes(ser.Encoding.PEM))
    atomic_write_bytes(files["server_key"], _pem_key(server_key, ser))
    for role in ("ca_cert", "server_cert"):
        files[role].chmod(0o644)
    for name in supernodes:
        priv, pub = make_supernode_keys(out / "supernode-keys", name)
        files[f"{name}.private"] = priv
        files[f"{name}.public"] = pub
    logger.info("wrote dev CA, server certificate for %s and %d SuperNode key pairs to %s",
                ", ".join(hosts), len(supernodes), out)
    return files
