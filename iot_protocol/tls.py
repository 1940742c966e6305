"""Transport security of the contract: how a device (or a cloud service) opens TLS to the platform,
and one clear line for each way that fails. The agent, the simulator and the bridge use these; the
only I/O here is reading the certificate files named.

The rules: TLS 1.2 or newer; the server certificate must chain to the trusted CA and name the host
connected to. A device trusts exactly the CA pinned at enrollment (``ca_file``), not the operating
system's store; with no pinned CA (a broker with a public certificate) the system store is used.
Client certificates (mTLS) are optional and come from the operator's PKI.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_context", "describe_tls_error", "is_tls_error"]


def client_context(
    ca_file: str | Path | None = None, *, cert_file: str | Path | None = None, key_file: str | Path | None = None
) -> ssl.SSLContext:
    """A client SSLContext: TLS 1.2+, hostname checked, trusting only ``ca_file`` when given.

    Raises:
        ValueError: a file is missing or is not PEM (the message names it).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca_file is not None:
            ctx.load_verify_locations(cafile=str(ca_file))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the CA certificate {ca_file}: {exc}") from None
    if cert_file is not None:
        try:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the client certificate {cert_file} / key {key_file}: {exc}") from None
    return ctx


def is_tls_error(exc: BaseException) -> bool:
    """True for a failure of the TLS layer (as opposed to a refused or unreachable connection)."""
    return isinstance(exc, ssl.SSLError | ssl.CertificateError)


def describe_tls_error(exc: BaseException, host: str, port: int, ca_file: str | Path | None = None) -> str:
    """One line saying why TLS to ``host:port`` failed and what to do about it."""
    where = f"TLS to {host}:{port} failed"
    trusted = f"the trusted CA {ca_file}" if ca_file is not None else "the system's trusted CAs"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        msg = exc.verify_message or str(exc)
        if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            return (
                f"{where}: the server's certificate has expired (renew it: `iotctl pki rotate`; "
                "if it is new, check this machine's clock)"
            )
        if code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
            return f"{where}: the server's certificate is not valid yet (check this machine's clock)"
        if code in (18, 19, 20, 21, 2):  # self-signed / unknown issuer
            return (
                f"{where}: the server's certificate is not signed by {trusted} (wrong CA: this is "
                "not the cloud this device enrolled with, or its CA changed: enroll again)"
            )
        if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return (
                f"{where}: the server's certificate is not valid for the name {host!r} (connect with a "
                "name the certificate lists, or issue it with that name: `iotctl pki issue --dns/--ip`)"
            )
        return f"{where}: certificate verification failed: {msg}"
    if isinstance(exc, ssl.CertificateError):
        return f"{where}: {exc}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
            return (
                f"{where}: the server requires a client certificate (mTLS): set tls_client_cert and "
                "tls_client_key to one issued by its CA (`iotctl pki issue --client`)"
            )
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
            return f"{where}: the server refused our client certificate (not issued by its CA?)"
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
            return f"{where}: the server does not speak TLS on this port (the plain MQTT port? use mqtt:// or 8883)"
        if "UNSUPPORTED_PROTOCOL" in reason or "VERSION" in reason:
            return f"{where}: no common TLS version (this platform requires TLS 1.2 or newer)"
        return f"{where}: {exc.reason or exc}"
    return f"{where}: {exc}"
