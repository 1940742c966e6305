"""A small offline PKI for the platform's TLS: a CA kept in a directory (``iotctl pki init``), server
certificates for the broker and the API, optional per-device client certificates for mTLS
(``iotctl pki issue``), re-issue with a new key (``iotctl pki rotate``), and the embedded-mode TLS that
``iotctl up`` uses when it binds beyond loopback (:func:`embedded_tls`)."""

from .ca import CertificateAuthority, Issued, cert_summary
from .embedded import EmbeddedTls, UpTls, embedded_tls, needs_tls, up_tls
from .errors import CertificateNotFound, PkiError, PkiExists, PkiNotInitialised

__all__ = [
    "CertificateAuthority",
    "CertificateNotFound",
    "EmbeddedTls",
    "Issued",
    "PkiError",
    "PkiExists",
    "PkiNotInitialised",
    "UpTls",
    "cert_summary",
    "embedded_tls",
    "needs_tls",
    "up_tls",
]
