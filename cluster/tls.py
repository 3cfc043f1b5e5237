#!/usr/bin/env python3
"""Create the TLS files for one Dask cluster: a CA, and a certificate and key each
for the scheduler, the workers and the clients, all signed by that CA.

    python cluster/tls.py DIR [--host NAME ...] [--days N] [--force]

writes to DIR:

    ca.pem                        the CA certificate every party trusts
    scheduler.pem, scheduler-key.pem
    worker.pem, worker-key.pem
    client.pem, client-key.pem
    client.env                    `. DIR/client.env` points dask clients (and so
                                  `dscore score`) at the client files

Then `cluster/local.sh --tls DIR` starts a cluster that accepts only peers with a
certificate from this CA. The CA's own key is not kept: nothing can be signed
later, and rotating means running this again and restarting the cluster. Keys are
written readable by their owner only; ship worker.pem/worker-key.pem to worker
machines, client.pem/client-key.pem to users, ca.pem to everyone.

Dask does not check host names against certificates (the CA is the identity), but
the certificates still name localhost, 127.0.0.1 and every --host for tools that do.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shlex
import sys
from pathlib import Path

ROLES = ("scheduler", "worker", "client")


def _require_cryptography():
    try:
        import cryptography  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            "tls.py: error: the 'cryptography' package is missing: "
            "pip install cryptography (or conda install cryptography)"
        ) from e


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dscore cluster"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(hosts: list[str]):
    from cryptography import x509

    names = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_certificates(hosts: list[str], days: int) -> dict[str, bytes]:
    """Return {file name: PEM bytes} for the CA certificate and each role's pair.

    EC P-256 keys: as strong as RSA-3072 for TLS and fast to generate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    # Backdated a little so that a peer whose clock lags does not reject a fresh cert.
    not_before, not_after = (
        now - datetime.timedelta(minutes=5),
        now + datetime.timedelta(days=days),
    )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("dscore cluster CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
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
    files = {"ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM)}
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"dscore {role}"))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # Every party both accepts and opens connections (workers talk to each
            # other and to the scheduler; the scheduler calls workers back).
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(_alt_names(hosts), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        files[f"{role}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{role}-key.pem"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return files


def client_env(directory: Path) -> str:
    """Shell lines that give dask clients the client certificate through dask config."""
    d = directory.resolve()
    return (
        "# Source this file to connect dask clients (dscore score, Client(...)) to a\n"
        "# cluster started with these certificates.\n"
        f"export DASK_DISTRIBUTED__COMM__TLS__CA_FILE={shlex.quote(str(d / 'ca.pem'))}\n"
        f"export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT={shlex.quote(str(d / 'client.pem'))}\n"
        f"export DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY={shlex.quote(str(d / 'client-key.pem'))}\n"
        "export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True\n"
    )


def write(directory: Path, files: dict[str, bytes], force: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    existing = [name for name in files if (directory / name).exists()]
    if existing and not force:
        raise SystemExit(
            f"tls.py: error: {directory} already holds {', '.join(sorted(existing))}; "
            "pass --force to replace them (running clusters keep the old ones until restarted)"
        )
    for name, data in files.items():
        path = directory / name
        mode = 0o600 if name.endswith("-key.pem") else 0o644
        # Created with its final mode, so a key is never readable by others, not even briefly.
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tls.py",
        description="Create a CA and scheduler/worker/client certificates for a Dask cluster.",
        epilog="Use with: cluster/local.sh --tls DIR; clients: . DIR/client.env",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="where to write the files")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="host name or IP address to name in the certificates (repeatable); "
        "localhost and 127.0.0.1 are always named",
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error(f"--days must be >= 1, got {args.days}")
    _require_cryptography()

    files = make_certificates(args.host, args.days)
    files["client.env"] = client_env(args.directory).encode()
    write(args.directory, files, args.force)
    print(f"tls.py: wrote {', '.join(files)} to {args.directory}", file=sys.stderr)
    print(args.directory.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
