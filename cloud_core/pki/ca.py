"""The CA directory: create the CA once, issue server and client certificates, re-issue them.

Layout of a PKI directory (what ``kubectl create secret generic --from-file=<dir>/issued/<name>/``
takes as it is: the keys a cert-manager Secret has)::

    ca.crt                     the CA certificate (public: devices and servers get it)
    ca.key                     the CA's private key, mode 0600: keep the directory offline
    issued/<name>/tls.crt      a certificate signed by the CA
    issued/<name>/tls.key      its private key, mode 0600
    issued/<name>/ca.crt       a copy of the CA certificate
    issued/<name>/request.json what was asked for (kind, names, days): ``rotate`` issues the same again

Keys are ECDSA P-256 (small, fast handshakes on a Raspberry Pi, supported by Mosquitto and OpenSSL).
Server certificates carry the names clients connect to as subjectAltName (DNS names and IP addresses);
client certificates carry the device id as common name (Mosquitto can take it as the user name).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CertificateNotFound, PkiError, PkiExists, PkiNotInitialised

__all__ = ["CertificateAuthority", "Issued", "cert_summary", "write_private"]

Kind = Literal["server", "client"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CLOCK_SKEW = dt.timedelta(minutes=5)  # valid from a little before now: devices' clocks drift


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte (never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Issued:
    """One issued certificate and where its files are."""

    name: str
    kind: Kind
    directory: Path
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: dt.datetime

    @property
    def cert_path(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key_path(self) -> Path:
        return self.directory / "tls.key"

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.crt"


def cert_summary(path: Path) -> str:
    """One line about the certificate at ``path``: subject, names, validity."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    subject = cert.subject.rfc4514_string()
    until = cert.not_valid_after_utc.isoformat(timespec="seconds")
    return f"{subject}" + (f" [{', '.join(names)}]" if names else "") + f", valid until {until}"


class CertificateAuthority:
    """The CA in ``directory``; build it with :meth:`init` (new) or :meth:`load` (existing)."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.directory = directory
        self._key = key
        self.cert = cert

    # ---- the CA itself ---------------------------------------------------------------------------
    @classmethod
    def init(
        cls, directory: Path | str, *, common_name: str = "edu-platform CA", days: int = 3650, force: bool = False
    ) -> CertificateAuthority:
        """Create a new CA in ``directory``.

        Raises:
            PkiExists: a CA is already there and ``force`` is false (replacing it breaks every
                certificate it issued and every device that pinned it).
        """
        d = Path(directory).expanduser()
        if (d / "ca.key").exists() and not force:
            raise PkiExists(
                f"{d} already holds a CA ({d / 'ca.crt'}); replacing it invalidates every certificate it "
                "issued and every device that pinned it: pass --force to do it anyway"
            )
        if days < 1:
            raise PkiError(f"days must be >= 1, got {days}")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        if force and (d / "issued").exists():
            shutil.rmtree(d / "issued")  # certificates of the old CA are worthless now
        write_private(d / "ca.key", _key_pem(key))
        (d / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(d, key, cert)

    @classmethod
    def load(cls, directory: Path | str) -> CertificateAuthority:
        """The CA in ``directory``.

        Raises:
            PkiNotInitialised: there is none.
            PkiError: its files are unreadable or damaged.
        """
        d = Path(directory).expanduser()
        if not (d / "ca.key").exists() or not (d / "ca.crt").exists():
            raise PkiNotInitialised(f"no CA in {d}: run `iotctl pki init --dir {d}` first")
        try:
            key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError(f"the CA in {d} cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{d / 'ca.key'} is not an ECDSA key")
        return cls(d, key, cert)

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.crt"

    # ---- issuing ---------------------------------------------------------------------------------
    def issue(
        self,
        name: str,
        *,
        kind: Kind = "server",
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        days: int = 397,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        """Issue (or replace) the certificate ``name`` with a new key.

        Args:
            name: file-system name of the certificate (``mqtt``, ``api``, a device id).
            kind: ``server`` (TLS server: SANs required, defaulting to ``name`` as a DNS name) or
                ``client`` (mTLS: common name = ``name``, e.g. the device id).
            dns_names: DNS names the server is reached by.
            ip_addresses: IP addresses the server is reached by.
            days: validity from now (397: what browsers accept for a server certificate).
            not_before: explicit start of validity (tests make expired certificates with it).
            not_after: explicit end of validity.

        Raises:
            PkiError: a bad name, address or validity.
        """
        if not _NAME.fullmatch(name):
            raise PkiError(f"certificate name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if kind not in ("server", "client"):
            raise PkiError(f"kind must be server or client, not {kind!r}")
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for raw in ip_addresses:
            try:
                ips.append(ipaddress.ip_address(raw))
            except ValueError:
                raise PkiError(f"{raw!r} is not an IP address") from None
        dns = list(dict.fromkeys(dns_names))
        if kind == "server" and not dns and not ips:
            dns = [name]
        now = _now()
        start = not_before or now - _CLOCK_SKEW
        end = not_after or now + dt.timedelta(days=days)
        if end <= start:
            raise PkiError("the certificate would expire before it becomes valid")
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ip) for ip in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        out = self.directory / "issued" / name
        out.mkdir(parents=True, exist_ok=True)
        write_private(out / "tls.key", _key_pem(key))
        (out / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        shutil.copyfile(self.ca_path, out / "ca.crt")
        request = {"kind": kind, "dns_names": dns, "ip_addresses": [str(ip) for ip in ips], "days": days}
        (out / "request.json").write_text(json.dumps(request, indent=2) + "\n")
        return Issued(name, kind, out, tuple(dns), tuple(str(ip) for ip in ips), end)

    def rotate(self, name: str, *, days: int | None = None) -> Issued:
        """Issue ``name`` again as it was first asked for, with a new key and a fresh validity.

        Raises:
            CertificateNotFound: ``name`` was never issued by this CA.
        """
        request_path = self.directory / "issued" / name / "request.json"
        try:
            req = json.loads(request_path.read_text())
        except FileNotFoundError:
            known = ", ".join(i.name for i in self.issued()) or "none"
            raise CertificateNotFound(
                f"no certificate {name!r} in {self.directory} (issued: {known}): use `iotctl pki issue`"
            ) from None
        return self.issue(
            name,
            kind=req["kind"],
            dns_names=req["dns_names"],
            ip_addresses=req["ip_addresses"],
            days=days if days is not None else int(req["days"]),
        )

    def issued(self) -> list[Issued]:
        """Every certificate issued into this directory."""
        out = []
        for req_path in sorted((self.directory / "issued").glob("*/request.json")):
            req = json.loads(req_path.read_text())
            cert = x509.load_pem_x509_certificate((req_path.parent / "tls.crt").read_bytes())
            out.append(
                Issued(
                    req_path.parent.name,
                    req["kind"],
                    req_path.parent,
                    tuple(req["dns_names"]),
                    tuple(req["ip_addresses"]),
                    cert.not_valid_after_utc,
                )
            )
        return out
