"""The wire contract between devices and the cloud: topics, payloads, signing. No I/O.

docs/protocol.md is its specification; the agent, the simulator and the bridge import this
package and nothing re-implements it.
"""

from typing import TYPE_CHECKING, Any

from . import jws
from .errors import DecodeError, ProtocolError, SignatureError, TopicError, UnsupportedVersion, ValidationError
from .jws import MAX_TOKEN_BYTES
from .keys import (
    check_public_key,
    generate_private_key,
    load_private_key,
    private_key_from_seed,
    public_key_b64,
    public_key_from_b64,
    public_key_raw,
    save_private_key,
)
from .messages import (
    MAX_FIELDS_PER_READING,
    MAX_FLAGS_PER_READING,
    MAX_NAME_LENGTH,
    MAX_READINGS_PER_BATCH,
    MAX_SEQ,
    MAX_TIMESTAMP,
    VERSION,
    Alert,
    Batch,
    ConfigDocument,
    ConfigReport,
    Health,
    Reading,
    ReadingOutcome,
    ReadingProblem,
    ReadingRejection,
    Receipt,
    Rejection,
    Retry,
    Status,
    Unread,
    decode_alert,
    decode_batch,
    decode_config_document,
    decode_config_report,
    decode_health,
    decode_receipt,
    decode_status,
    encode,
    payload_indexes,
    peek_seq,
)
from .settings import DeviceSettings, parse_settings
from .signing import CLOUD_KID, decode_verified_batch, open_batch, open_config, seal_batch, seal_config, verify_batch
from .topics import Kind, Topics, validate_device_id
from .validation import FIELD_RANGES, NAME_RE, RESERVED_FIELD_NAMES, check_reading

if TYPE_CHECKING:
    from .firmware import (
        FirmwareStatus,
        FirmwareTarget,
        Manifest,
        check_installable,
        compare_versions,
        firmware_version,
        open_manifest,
        parse_version,
        seal_manifest,
    )

# Firmware manifests are imported on first use: the agent needs them only for OTA, and their
# dataclasses cost it about 0.7 MB of RSS.
_LAZY = {
    "FirmwareStatus",
    "FirmwareTarget",
    "Manifest",
    "check_installable",
    "compare_versions",
    "firmware_version",
    "open_manifest",
    "parse_version",
    "seal_manifest",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import firmware

        return getattr(firmware, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CLOUD_KID",
    "FIELD_RANGES",
    "MAX_FIELDS_PER_READING",
    "MAX_FLAGS_PER_READING",
    "MAX_NAME_LENGTH",
    "MAX_READINGS_PER_BATCH",
    "MAX_SEQ",
    "MAX_TIMESTAMP",
    "MAX_TOKEN_BYTES",
    "NAME_RE",
    "RESERVED_FIELD_NAMES",
    "VERSION",
    "Alert",
    "Batch",
    "ConfigDocument",
    "ConfigReport",
    "DecodeError",
    "DeviceSettings",
    "FirmwareStatus",
    "FirmwareTarget",
    "Health",
    "Kind",
    "Manifest",
    "ProtocolError",
    "Reading",
    "ReadingOutcome",
    "ReadingProblem",
    "ReadingRejection",
    "Receipt",
    "Rejection",
    "Retry",
    "SignatureError",
    "Status",
    "TopicError",
    "Topics",
    "Unread",
    "UnsupportedVersion",
    "ValidationError",
    "check_installable",
    "check_public_key",
    "check_reading",
    "compare_versions",
    "decode_alert",
    "decode_batch",
    "decode_config_document",
    "decode_config_report",
    "decode_health",
    "decode_receipt",
    "decode_status",
    "decode_verified_batch",
    "encode",
    "firmware_version",
    "generate_private_key",
    "jws",
    "load_private_key",
    "open_batch",
    "open_config",
    "open_manifest",
    "parse_settings",
    "parse_version",
    "payload_indexes",
    "peek_seq",
    "private_key_from_seed",
    "public_key_b64",
    "public_key_from_b64",
    "public_key_raw",
    "save_private_key",
    "seal_batch",
    "seal_config",
    "seal_manifest",
    "validate_device_id",
    "verify_batch",
]
