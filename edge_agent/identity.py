"""The device's identity directory and enrollment.

``enroll(api_url, token, dir)`` generates the Ed25519 key pair on the device, sends only the
public key with the one-time token to ``POST {api}/v1/enroll``, and stores what comes back:

- ``device_key.pem``   the private key (PKCS#8 PEM, mode 0600; never sent, never logged)
- ``credentials.json`` device_id, mqtt_url, mqtt_username, mqtt_password, client_id,
                       topic_prefix, key_version (mode 0600)
- ``cloud_public_key`` the cloud's config-signing public key (unpadded base64url)
- ``ca.crt``           the CA of the broker's TLS certificate, when the cloud sent one (``mqtt_ca_pem``):
                       pinned, the agent then trusts only it for mqtts://

Enrolling over ``https://`` verifies the API with ``ca_file`` when given (the operator's CA, shipped
with the device image), else with the system's trusted CAs.
- ``release_public_key`` the key firmware release manifests are signed with (unpadded base64url;
                       distinct from the config key; read by edge_agent/ota.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EnrollmentError, IdentityError

if TYPE_CHECKING:
    from iot_protocol.keys import SigningKey

__all__ = ["CREDENTIALS_FILE", "Identity", "enroll", "load_identity", "write_identity"]

KEY_FILE = "device_key.pem"
CREDENTIALS_FILE = "credentials.json"
CLOUD_KEY_FILE = "cloud_public_key"
CA_FILE = "ca.crt"
_FIELDS = (
    "device_id",
    "mqtt_url",
    "mqtt_username",
    "mqtt_password",
    "client_id",
    "topic_prefix",
    "key_version",
)


@dataclass(frozen=True)
class Identity:
    """What the device needs to talk to the cloud. Secrets are kept out of ``repr``."""

    device_id: str
    mqtt_url: str
    mqtt_username: str | None
    mqtt_password: str | None = field(repr=False)
    client_id: str
    topic_prefix: str
    cloud_public_key: bytes
    key_version: int
    key: SigningKey = field(repr=False)
    ca_file: Path | None = None  # the pinned CA of the broker's certificate (ca.crt), if the cloud sent one


def write_identity(directory: Path | str, key: SigningKey, info: dict[str, Any]) -> Identity:
    """Store ``key`` and the enrollment response ``info`` in ``directory`` (files 0600); return it loaded."""
    from iot_protocol.keys import save_private_key, write_private_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    missing = [k for k in (*_FIELDS, "cloud_public_key") if k not in info or info[k] in (None, "")]
    missing = [k for k in missing if k not in ("mqtt_username", "mqtt_password", "client_id", "key_version")]
    if missing:
        raise IdentityError(f"enrollment response lacks {', '.join(missing)}")
    creds = {k: info.get(k) for k in _FIELDS}
    creds["client_id"] = creds["client_id"] or creds["device_id"]
    creds["key_version"] = int(creds["key_version"] or 1)
    # Each file is replaced atomically, the credentials last: a running agent watching the directory
    # takes up the new identity when the credentials change (edge_agent.agent), by then complete.
    save_private_key(key, d / KEY_FILE)
    write_private_file(d / CLOUD_KEY_FILE, (str(info["cloud_public_key"]) + "\n").encode())
    ca_pem = info.get("mqtt_ca_pem")
    if ca_pem:
        if "BEGIN CERTIFICATE" not in str(ca_pem):
            raise IdentityError("enrollment response's mqtt_ca_pem is not a PEM certificate")
        write_private_file(d / CA_FILE, str(ca_pem).encode())
    else:
        (d / CA_FILE).unlink(missing_ok=True)  # re-enrolled with a cloud that uses a public CA
    if info.get("release_public_key"):
        write_private_file(d / "release_public_key", (str(info["release_public_key"]) + "\n").encode())
    write_private_file(d / CREDENTIALS_FILE, json.dumps(creds, indent=2).encode())
    return load_identity(d)


def load_identity(directory: Path | str) -> Identity:
    """Read the identity directory. Raises IdentityError naming the missing or bad file."""
    from iot_protocol.keys import load_signing_key, public_key_from_b64

    d = Path(directory)
    try:
        creds = json.loads((d / CREDENTIALS_FILE).read_text())
        cloud_key = public_key_from_b64((d / CLOUD_KEY_FILE).read_text().strip())
        key = load_signing_key(d / KEY_FILE)
    except FileNotFoundError as exc:
        raise IdentityError(
            f"identity file {exc.filename} is missing: run `iotctl agent enroll --api URL --token T --dir {d}`"
        ) from None
    except PermissionError as exc:
        raise IdentityError(f"cannot read identity file {exc.filename}: permission denied") from None
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"identity in {d} is damaged ({type(exc).__name__}); enroll again") from None
    try:
        return Identity(
            device_id=creds["device_id"],
            mqtt_url=creds["mqtt_url"],
            mqtt_username=creds.get("mqtt_username"),
            mqtt_password=creds.get("mqtt_password"),
            client_id=creds.get("client_id") or creds["device_id"],
            topic_prefix=creds.get("topic_prefix") or "edu",
            cloud_public_key=cloud_key,
            key_version=int(creds.get("key_version") or 1),
            key=key,
            ca_file=(d / CA_FILE) if (d / CA_FILE).exists() else None,
        )
    except KeyError as exc:
        raise IdentityError(f"{d / CREDENTIALS_FILE} lacks {exc.args[0]!r}; enroll again") from None


def enroll(
    api_url: str, token: str, directory: Path | str, *, timeout_s: float = 30.0, ca_file: Path | str | None = None
) -> Identity:
    """Enroll this device with a one-time ``token``; see the module docstring. ``ca_file`` verifies an
    ``https://`` API (default: the system's trusted CAs).

    Raises:
        EnrollmentError: the API refused (its ``detail``, one line: used or expired token) or is down.
        IdentityError: the response lacks a field.
    """
    import urllib.error  # enrollment only: urllib.request brings http.client and email (~1 MB)
    import urllib.parse
    import urllib.request

    from iot_protocol.keys import generate_private_key, public_key_b64

    key = generate_private_key()
    body = json.dumps({"token": token, "public_key": public_key_b64(key)}).encode()
    url = api_url.rstrip("/") + "/v1/enroll"
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    context = None
    if url.startswith("https://"):
        from iot_protocol.tls import client_context

        try:
            context = client_context(ca_file)
        except ValueError as exc:
            raise EnrollmentError(str(exc)) from None
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:
            info = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = _detail(exc.read())
        raise EnrollmentError(f"enrollment refused by {url} (HTTP {exc.code}): {detail}", status=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        from iot_protocol.tls import describe_tls_error, is_tls_error

        if isinstance(reason, BaseException) and is_tls_error(reason):
            parts = urllib.parse.urlsplit(url)
            raise EnrollmentError(
                describe_tls_error(reason, parts.hostname or "", parts.port or 443, ca_file)
            ) from None
        raise EnrollmentError(f"cannot reach the enrollment API at {url}: {reason}") from None
    except ValueError:
        raise EnrollmentError(f"the enrollment API at {url} did not answer JSON") from None
    if not isinstance(info, dict):
        raise EnrollmentError(f"the enrollment API at {url} answered an unexpected document")
    return write_identity(directory, key, info)


def _detail(raw: bytes) -> str:
    try:
        obj = json.loads(raw)
        detail = obj.get("detail", obj) if isinstance(obj, dict) else obj
    except ValueError:
        detail = raw.decode("utf-8", "replace")
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    return " ".join(detail.split())[:300] or "no detail given"
