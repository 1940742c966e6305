"""Errors of the PKI, one rooted tree:

    PkiError                  root: the CA directory cannot be used as asked (message says how to fix it)
    ├── PkiNotInitialised     no CA in the directory yet: run `iotctl pki init`
    ├── PkiExists             `init` would overwrite an existing CA (pass --force to replace it)
    └── CertificateNotFound   `rotate` names a certificate that was never issued

None of them is retryable: each needs an operator's decision.
"""

from __future__ import annotations

__all__ = ["CertificateNotFound", "PkiError", "PkiExists", "PkiNotInitialised"]


class PkiError(Exception):
    retryable = False


class PkiNotInitialised(PkiError):
    pass


class PkiExists(PkiError):
    pass


class CertificateNotFound(PkiError):
    pass
