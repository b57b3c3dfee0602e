"""Throw-away TLS material for lab etcd servers, made with the ``openssl`` CLI.

One private CA signs a server certificate (valid for ``127.0.0.1`` and ``localhost``, the
only names a lab server is reached by) and a client certificate.  Everything lives in a
directory the caller owns and deletes; nothing here is fit for production use.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Two days rather than one so a cert made just before midnight, or on a machine whose clock
# drifts a little during a long run, is still valid at the end of the run.
VALID_DAYS = 2

# EC P-256: generated instantly (RSA keygen is slow on small CI boxes) and understood by
# Go's crypto/tls (etcd), OpenSSL (Python's ssl) and every client we use.
_NEWKEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

_SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
"""

_CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
"""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files made by :func:`make_tls`."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    """Run one openssl command; on failure raise with openssl's own message."""
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _issue(directory: Path, name: str, *, cn: str, ext: str, ca_cert: Path, ca_key: Path) -> None:
    """Make ``<name>.key``/``<name>.pem`` in ``directory``, signed by the CA."""
    key, csr, cert = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(ext)
    _openssl("req", *_NEWKEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
    key.chmod(0o600)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        # A random serial avoids the CA ".srl" file and keeps serials unique.
        "-set_serial", str(secrets.randbits(63)), "-days", str(VALID_DAYS),
        "-extfile", str(ext_file), "-out", str(cert),
    )  # fmt: skip
    csr.unlink()
    ext_file.unlink()


def make_tls(dir: Path) -> TlsFiles:
    """Create a CA plus server and client certificates in ``dir``; return their paths."""
    dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = dir / "ca.pem", dir / "ca.key"
    _openssl(
        "req", "-x509", *_NEWKEY, "-keyout", str(ca_key), "-out", str(ca_cert),
        "-days", str(VALID_DAYS), "-subj", "/CN=calico-lab-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    ca_key.chmod(0o600)
    _issue(dir, "server", cn="localhost", ext=_SERVER_EXT, ca_cert=ca_cert, ca_key=ca_key)
    _issue(dir, "client", cn="calico-lab-client", ext=_CLIENT_EXT, ca_cert=ca_cert, ca_key=ca_key)
    return TlsFiles(
        ca_file=ca_cert,
        server_cert=dir / "server.pem",
        server_key=dir / "server.key",
        client_cert=dir / "client.pem",
        client_key=dir / "client.key",
    )
