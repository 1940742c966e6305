"""Sealing messages into signed JWS tokens and opening them again, with the contract's checks:
the token type, the signer (``kid``) against the topic's device, and the payload's device id."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import jws
from .errors import DecodeError, SignatureError
from .messages import (
    TYP_BATCH,
    TYP_CONFIG,
    Batch,
    ConfigDocument,
    decode_batch,
    decode_config_document,
    encode,
)

if TYPE_CHECKING:
    from .keys import SigningKey

__all__ = [
    "CLOUD_KID",
    "decode_verified_batch",
    "open_batch",
    "open_config",
    "seal_batch",
    "seal_config",
    "verify_batch",
]

CLOUD_KID = "cloud"


def seal_batch(batch: Batch, key: SigningKey) -> bytes:
    """The telemetry message for ``batch``: a compact JWS signed by the device, ``kid`` = device id."""
    return jws.sign(encode(batch), key, kid=batch.device_id, typ=TYP_BATCH)


def verify_batch(token: bytes, *, topic_device: str, public_key: bytes) -> jws.Jws:
    """The first half of :func:`open_batch`: check the envelope and the signer, and verify.

    Raises:
        DecodeError: too large, not a JWS, or the wrong ``typ``.
        SignatureError: ``kid`` names another device, or the signature does not verify with
            ``public_key`` (the key registered for ``topic_device``).
    """
    token_ = jws.decode(token)
    if token_.typ != TYP_BATCH:
        raise DecodeError(f"JWS typ must be {TYP_BATCH!r}, got {token_.typ!r}", reason="bad_envelope")
    if token_.kid != topic_device:
        raise SignatureError(
            f"signer {token_.kid!r} is not the topic's device {topic_device!r}", reason="device_mismatch"
        )
    jws.verify(token_, public_key)
    return token_


def decode_verified_batch(
    token: jws.Jws, *, topic_device: str, decode: Callable[[bytes], Batch] = decode_batch
) -> Batch:
    """The second half of :func:`open_batch`: decode the payload of a verified token.

    Raises:
        DecodeError: a batch-level rule is broken (a malformed reading is only set aside).
        SignatureError: the payload names another device (``device_mismatch``).
    """
    batch = decode(token.payload)
    if batch.device_id != topic_device:
        raise SignatureError(
            f"batch names device {batch.device_id!r}, topic names {topic_device!r}", reason="device_mismatch"
        )
    return batch


def open_batch(
    token: bytes, *, topic_device: str, public_key: bytes, decode: Callable[[bytes], Batch] = decode_batch
) -> Batch:
    """Verify ``token`` as ``topic_device``'s telemetry and decode it (with ``decode``: a decoder with
    decode_batch's outcome for every input, such as the bridge's faster one).

    Raises:
        DecodeError: not a JWS, wrong ``typ``, or a malformed batch.
        SignatureError: ``kid`` or the payload names another device, or the signature does not
            verify with ``public_key`` (the key registered for ``topic_device``).
    """
    verified = verify_batch(token, topic_device=topic_device, public_key=public_key)
    return decode_verified_batch(verified, topic_device=topic_device, decode=decode)


def seal_config(doc: ConfigDocument, key: SigningKey) -> bytes:
    """The retained desired-config message: a JWS signed by the cloud's config key."""
    return jws.sign(encode(doc), key, kid=CLOUD_KID, typ=TYP_CONFIG)


def open_config(token: bytes, *, device_id: str, cloud_public_key: bytes) -> ConfigDocument:
    """Verify a desired-config message with the cloud's key and check it is for ``device_id``."""
    token_ = jws.decode(token)
    if token_.typ != TYP_CONFIG:
        raise DecodeError(f"JWS typ must be {TYP_CONFIG!r}, got {token_.typ!r}", reason="bad_envelope")
    jws.verify(token_, cloud_public_key)
    doc = decode_config_document(token_.payload)
    if doc.device_id != device_id:
        raise SignatureError(f"config is for {doc.device_id!r}, not {device_id!r}", reason="device_mismatch")
    return doc
