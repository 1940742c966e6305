"""Errors raised by the wire contract; nothing else escapes its decoders.

    ProtocolError                 root: every failure to decode, verify or validate a message
    ├── TopicError                a topic or device id that is not of the contract's form
    ├── DecodeError               bytes that are not a well-formed message of the expected kind
    │   └── UnsupportedVersion    well-formed, but of a version this code does not speak
    ├── SignatureError            the signature does not verify with the key given
    └── ValidationError           well-formed and signed, but a value breaks a rule (range, skew)

Each carries ``reason``: a short stable code (``bad_json``, ``bad_signature``, ...) used as the
dead-letter reason and the Prometheus label, so every rejection is counted under one name.
None of them is retryable: the same bytes fail the same way.
"""

from __future__ import annotations

__all__ = [
    "DecodeError",
    "ProtocolError",
    "SignatureError",
    "TopicError",
    "UnsupportedVersion",
    "ValidationError",
]


class ProtocolError(Exception):
    """Root of the contract's errors. ``reason`` is a stable machine-readable code."""

    reason: str = "protocol_error"
    retryable = False

    def __init__(self, message: str, *, reason: str | None = None, device_id: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.device_id = device_id


class TopicError(ProtocolError):
    reason = "bad_topic"


class DecodeError(ProtocolError):
    reason = "malformed"


class UnsupportedVersion(DecodeError):
    reason = "unsupported_version"


class SignatureError(ProtocolError):
    reason = "bad_signature"


class ValidationError(ProtocolError):
    reason = "invalid"
