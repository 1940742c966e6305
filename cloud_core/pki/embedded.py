"""TLS for ``iotctl up`` when it binds beyond loopback: its own small CA in ``<state_dir>/pki`` and one
server certificate for the broker's device listener and the API, covering the names devices use.

What ``iotctl up`` calls (iotctl/platform.py)::

    tls = up_tls(state_dir, bind_host=..., advertised_host=..., mqtts_port=...)   # None on loopback
    if tls is not None:
        MosquittoProcess(..., tls=tls.broker)                  # + a TLS listener on bind_host:mqtts_port
        uvicorn.Config(app, host=bind_host, ..., **tls.uvicorn)  # HTTPS
        CloudSettings(..., public_mqtt_url=tls.public_mqtt_url, mqtt_ca_file=tls.files.ca_file)

The cloud services inside the process keep using the plain listener on loopback.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from .ca import CertificateAuthority
from .errors import PkiNotInitialised

__all__ = ["SERVER_CERT_NAME", "EmbeddedTls", "UpTls", "embedded_tls", "needs_tls", "up_tls"]

SERVER_CERT_NAME = "embedded-server"
_RENEW_BEFORE = dt.timedelta(days=30)


def needs_tls(bind_host: str) -> bool:
    """True unless ``bind_host`` is a loopback address or ``localhost``: anything else is reachable from
    the network, and then passwords and telemetry must not cross it in clear text."""
    if bind_host in ("localhost", "localhost.localdomain"):
        return False
    try:
        return not ipaddress.ip_address(bind_host).is_loopback
    except ValueError:
        return True  # a host name: it resolves to something reachable


@dataclass(frozen=True, slots=True)
class EmbeddedTls:
    """Files of the embedded TLS: the CA devices pin, the server certificate and its key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def broker_listener(self, *, port: int, host: str = "0.0.0.0", require_certificate: bool = False) -> Any:
        """The Mosquitto TLS listener (``cloud_core.broker.mosquitto_process.BrokerTls``)."""
        from ..broker.mosquitto_process import BrokerTls

        return BrokerTls(
            port=port,
            host=host,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            require_certificate=require_certificate,
        )

    def uvicorn_kwargs(self) -> dict[str, str]:
        """``ssl_certfile`` / ``ssl_keyfile`` for ``uvicorn.Config``: the API over HTTPS."""
        return {"ssl_certfile": str(self.cert_file), "ssl_keyfile": str(self.key_file)}


def _local_names(extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) this machine is reached by: ``extra``, its host names, its addresses."""
    dns: list[str] = ["localhost"]
    ips: list[str] = ["127.0.0.1", "::1"]
    candidates = [*extra, socket.gethostname(), socket.getfqdn()]
    for name in candidates:
        if not name:
            continue
        try:
            ips.append(str(ipaddress.ip_address(name)))
            continue
        except ValueError:
            dns.append(name)
        try:
            for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP):
                ips.append(str(ipaddress.ip_address(str(info[4][0]).split("%")[0])))
        except (OSError, ValueError):
            pass
    return list(dict.fromkeys(dns)), [ip for ip in dict.fromkeys(ips) if ip not in ("0.0.0.0", "::")]


def embedded_tls(state_dir: Path, hosts: Sequence[str] = ()) -> EmbeddedTls:
    """The embedded CA (created on first use in ``<state_dir>/pki``) and a server certificate valid for
    ``hosts`` and this machine's names. The certificate is issued again when a name is missing from it
    or it expires within 30 days; the CA stays, so enrolled devices keep trusting the broker."""
    pki = Path(state_dir) / "pki"
    try:
        ca = CertificateAuthority.load(pki)
    except PkiNotInitialised:
        ca = CertificateAuthority.init(pki, common_name=f"edu-platform embedded CA ({socket.gethostname()})")
    dns, ips = _local_names(hosts)
    out = pki / "issued" / SERVER_CERT_NAME
    try:
        req = json.loads((out / "request.json").read_text())
        cert = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
        fresh = (
            set(dns) <= set(req["dns_names"])
            and set(ips) <= set(req["ip_addresses"])
            and cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > _RENEW_BEFORE
            and (out / "ca.crt").read_bytes() == ca.ca_path.read_bytes()
        )
    except (OSError, ValueError, KeyError):
        fresh = False
    if not fresh:
        ca.issue(SERVER_CERT_NAME, kind="server", dns_names=dns, ip_addresses=ips)
    return EmbeddedTls(ca_file=ca.ca_path, cert_file=out / "tls.crt", key_file=out / "tls.key")


@dataclass(frozen=True, slots=True)
class UpTls:
    """What ``iotctl up`` needs to serve devices over TLS (from :func:`up_tls`).

    Attributes:
        files: the CA, certificate and key.
        broker: the Mosquitto TLS listener (``MosquittoProcess(tls=...)``).
        uvicorn: keyword arguments for ``uvicorn.Config`` (HTTPS).
        public_mqtt_url: the broker URL devices are told at enrollment (``mqtts://host:port``).
        api_scheme: ``https``.
    """

    files: EmbeddedTls
    broker: Any
    uvicorn: dict[str, str]
    public_mqtt_url: str
    api_scheme: str = "https"


def up_tls(state_dir: Path, *, bind_host: str, advertised_host: str, mqtts_port: int) -> UpTls | None:
    """TLS for ``iotctl up`` binding to ``bind_host``: None on loopback (plain is fine there), else the
    embedded CA, a server certificate naming ``advertised_host``, the broker's TLS listener on
    ``mqtts_port`` and the API's HTTPS settings."""
    if not needs_tls(bind_host):
        return None
    files = embedded_tls(state_dir, [advertised_host])
    host = f"[{advertised_host}]" if ":" in advertised_host else advertised_host
    return UpTls(
        files=files,
        broker=files.broker_listener(port=mqtts_port, host=bind_host),
        uvicorn=files.uvicorn_kwargs(),
        public_mqtt_url=f"mqtts://{host}:{mqtts_port}",
    )
